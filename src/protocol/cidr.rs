//! IP networks in CIDR notation (`10.0.0.0/8`, `::1/128`, or a bare address for one host), and
//! whether an address lies in one. Pure: parsing and comparison only. An IPv4-mapped IPv6 address
//! (how a dual-stack socket reports an IPv4 peer) matches the IPv4 networks of its IPv4 address.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One network: an address whose bits past `prefix_len` are zero, and the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

/// A string that is not a network.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or network (expected e.g. 10.0.0.0/8 or ::1/128)")]
    Syntax(String),
    #[error("{value:?}: prefix length {prefix_len} exceeds {max} for this address family")]
    PrefixTooLong {
        value: String,
        prefix_len: u32,
        max: u32,
    },
    #[error("{0:?} has bits set past its prefix length (did you mean the network address?)")]
    HostBits(String),
}

impl Cidr {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u128::from(u32::from(ip)), 32, self.prefix_len) == u128::from(u32::from(net))
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(ip), 128, self.prefix_len) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// `value` with only its first `prefix_len` of `bits` bits kept.
fn masked(value: u128, bits: u32, prefix_len: u8) -> u128 {
    let keep = u32::from(prefix_len).min(bits);
    if keep == 0 {
        return 0;
    }
    let full = if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    value & full & !((1u128 << (bits - keep)) - 1)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let max: u32 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len: u32 = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| syntax())?
            }
            Some(_) => return Err(syntax()),
        };
        if prefix_len > max {
            return Err(CidrError::PrefixTooLong {
                value: s.to_string(),
                prefix_len,
                max,
            });
        }
        let prefix_len = prefix_len as u8;
        let bits = match addr {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        if masked(bits, max, prefix_len) != bits {
            return Err(CidrError::HostBits(s.to_string()));
        }
        Ok(Cidr { addr, prefix_len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses() {
        let lo = cidr("127.0.0.0/8");
        assert!(lo.contains("127.0.0.1".parse().unwrap()));
        assert!(lo.contains("127.255.0.2".parse().unwrap()));
        assert!(!lo.contains("128.0.0.1".parse().unwrap()));
        assert!(lo.contains("::ffff:127.0.0.9".parse().unwrap()));
        assert!(!lo.contains("::1".parse().unwrap()));
        let one = cidr("10.1.2.3");
        assert!(one.contains("10.1.2.3".parse().unwrap()));
        assert!(!one.contains("10.1.2.4".parse().unwrap()));
        let all = cidr("0.0.0.0/0");
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
        let v6 = cidr("2001:db8::/32");
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(cidr("::1/128").contains("::1".parse().unwrap()));
        assert!(cidr("::/0").contains("fe80::1".parse().unwrap()));
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn bad_networks_are_named() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
            "10.0.0.0/8/8",
            "host/8",
        ] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(CidrError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong { .. })
        ));
        assert!(matches!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong { .. })
        ));
        assert_eq!(
            "10.0.0.1/8".parse::<Cidr>(),
            Err(CidrError::HostBits("10.0.0.1/8".into()))
        );
    }
}

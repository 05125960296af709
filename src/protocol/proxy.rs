//! The PROXY protocol header (HAProxy's, versions 1 and 2): what a proxy writes before a TCP
//! connection's own bytes to name the connection's real source and destination.
//!
//! `decode_proxy_header` detects the version from the first bytes and parses one header;
//! `encode_proxy_header` writes one. Pure: no I/O, no clock, no state. "Need more bytes" is a
//! normal answer of the decoder; bytes after the header are not looked at (they are the
//! connection's own). Only TCP over IPv4/IPv6 carries addresses; every other family, v1's
//! `UNKNOWN` and v2's `LOCAL` command decode as [`ProxyHeader::Local`] (keep the connection's
//! own address).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// A v2 header's fixed part: signature, version/command, family/transport, length.
pub const V2_FIXED_LEN: usize = 16;
/// Longest v1 header, CRLF included (the specification's bound).
pub const V1_MAX_LEN: usize = 107;
/// The bound a receiver puts on one header (v2 with its TLVs), in bytes.
pub const DEFAULT_MAX_PROXY_HEADER_BYTES: usize = 2048;

const V1_PREFIX: &[u8] = b"PROXY ";

/// Which version of the protocol a header is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyVersion {
    /// Text: `PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n`.
    V1,
    /// Binary, with the 12-byte signature.
    V2,
}

/// What one header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyHeader {
    /// The connection came from `source` to `destination` (TCP over IPv4 or IPv6).
    Proxy {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// No address to take: v2 `LOCAL` (health checks), v1 `UNKNOWN`, or a v2 family or
    /// transport other than TCP over IPv4/IPv6. The connection's own address stands.
    Local,
}

/// What the decoder found at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyDecoded {
    /// The buffer is a valid prefix of a header; read at least this many more bytes.
    NeedMore(usize),
    /// A whole header, its version, and how many bytes of the buffer it used.
    Header(ProxyHeader, ProxyVersion, usize),
}

/// Bytes that can never become a valid header. The connection that sent them must be closed.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("not a PROXY protocol header (neither the v1 text nor the v2 signature)")]
    NotProxy,
    #[error("PROXY v1 header without CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 header: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v2 header with version {0} (expected 2)")]
    V2Version(u8),
    #[error("PROXY v2 header with command {0:#x} (expected LOCAL 0x0 or PROXY 0x1)")]
    V2Command(u8),
    #[error("PROXY v2 header with address family/transport byte {0:#04x}")]
    V2Family(u8),
    #[error("PROXY v2 header of {len} address bytes is too short for its family (needs {needs})")]
    V2AddressTooShort { len: usize, needs: usize },
    #[error("PROXY v2 header of {len} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge { len: usize, max_bytes: usize },
}

impl ProxyError {
    /// The reason counted for it: `oversized` or `malformed`.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::V1TooLong | ProxyError::TooLarge { .. } => "oversized",
            _ => "malformed",
        }
    }
}

/// Decodes the header at the start of `buf`. A v2 header longer than `max_bytes` (raised to
/// the longest v1 header if smaller) is an error.
pub fn decode_proxy_header(buf: &[u8], max_bytes: usize) -> Result<ProxyDecoded, ProxyError> {
    let max_bytes = max_bytes.max(V1_MAX_LEN);
    let sig = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig] == V2_SIGNATURE[..sig] && !buf.is_empty() {
        return decode_v2(buf, max_bytes);
    }
    let pre = buf.len().min(V1_PREFIX.len());
    if buf[..pre] == V1_PREFIX[..pre] && !buf.is_empty() {
        return decode_v1(buf);
    }
    if buf.is_empty() {
        return Ok(ProxyDecoded::NeedMore(1));
    }
    Err(ProxyError::NotProxy)
}

fn decode_v1(buf: &[u8]) -> Result<ProxyDecoded, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if window.len() >= V1_MAX_LEN {
            return Err(ProxyError::V1TooLong);
        }
        if window.contains(&b'\n') {
            return Err(ProxyError::V1Malformed("line feed without carriage return"));
        }
        return Ok(ProxyDecoded::NeedMore(1));
    };
    let used = end + 2;
    if window[..end].contains(&b'\n') {
        return Err(ProxyError::V1Malformed("line feed without carriage return"));
    }
    let line = std::str::from_utf8(&window[V1_PREFIX.len()..end])
        .map_err(|_| ProxyError::V1Malformed("not ASCII"))?;
    let mut fields = line.split(' ');
    let header = match fields.next() {
        Some("UNKNOWN") => ProxyHeader::Local,
        Some(proto @ ("TCP4" | "TCP6")) => {
            let v6 = proto == "TCP6";
            let src = v1_ip(fields.next(), v6)?;
            let dst = v1_ip(fields.next(), v6)?;
            let sport = v1_port(fields.next())?;
            let dport = v1_port(fields.next())?;
            if fields.next().is_some() {
                return Err(ProxyError::V1Malformed("fields after the destination port"));
            }
            ProxyHeader::Proxy {
                source: SocketAddr::new(src, sport),
                destination: SocketAddr::new(dst, dport),
            }
        }
        _ => {
            return Err(ProxyError::V1Malformed(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    Ok(ProxyDecoded::Header(header, ProxyVersion::V1, used))
}

fn v1_ip(field: Option<&str>, v6: bool) -> Result<IpAddr, ProxyError> {
    let field = field.ok_or(ProxyError::V1Malformed("missing address"))?;
    if v6 {
        field
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| ProxyError::V1Malformed("bad IPv6 address"))
    } else {
        field
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| ProxyError::V1Malformed("bad IPv4 address"))
    }
}

fn v1_port(field: Option<&str>) -> Result<u16, ProxyError> {
    let field = field.ok_or(ProxyError::V1Malformed("missing port"))?;
    let digits_only = !field.is_empty() && field.bytes().all(|b| b.is_ascii_digit());
    let canonical = field == "0" || !field.starts_with('0');
    if !digits_only || !canonical || field.len() > 5 {
        return Err(ProxyError::V1Malformed("bad port"));
    }
    field
        .parse()
        .map_err(|_| ProxyError::V1Malformed("port out of range"))
}

fn decode_v2(buf: &[u8], max_bytes: usize) -> Result<ProxyDecoded, ProxyError> {
    if buf.len() < V2_FIXED_LEN {
        if let Some(&ver_cmd) = buf.get(12) {
            v2_ver_cmd(ver_cmd)?;
        }
        return Ok(ProxyDecoded::NeedMore(V2_FIXED_LEN - buf.len()));
    }
    let local = v2_ver_cmd(buf[12])?;
    let fam = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = V2_FIXED_LEN + len;
    if total > max_bytes {
        return Err(ProxyError::TooLarge {
            len: total,
            max_bytes,
        });
    }
    let (family, transport) = (fam >> 4, fam & 0x0F);
    if family > 3 || transport > 2 {
        return Err(ProxyError::V2Family(fam));
    }
    let needs = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if len < needs {
        return Err(ProxyError::V2AddressTooShort { len, needs });
    }
    if buf.len() < total {
        return Ok(ProxyDecoded::NeedMore(total - buf.len()));
    }
    let a = &buf[V2_FIXED_LEN..total];
    let header = match (local, family, transport) {
        (false, 1, 1) => {
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
            ProxyHeader::Proxy {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([a[8], a[9]])),
                destination: SocketAddr::new(ip(4), u16::from_be_bytes([a[10], a[11]])),
            }
        }
        (false, 2, 1) => {
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            ProxyHeader::Proxy {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([a[32], a[33]])),
                destination: SocketAddr::new(ip(16), u16::from_be_bytes([a[34], a[35]])),
            }
        }
        _ => ProxyHeader::Local,
    };
    Ok(ProxyDecoded::Header(header, ProxyVersion::V2, total))
}

/// The version/command byte: true for LOCAL, false for PROXY.
fn v2_ver_cmd(byte: u8) -> Result<bool, ProxyError> {
    if byte >> 4 != 2 {
        return Err(ProxyError::V2Version(byte >> 4));
    }
    match byte & 0x0F {
        0 => Ok(true),
        1 => Ok(false),
        other => Err(ProxyError::V2Command(other)),
    }
}

/// The header's bytes. Endpoints of different families are both written as IPv6 (an IPv4
/// address as IPv4-mapped).
pub fn encode_proxy_header(version: ProxyVersion, header: &ProxyHeader) -> Vec<u8> {
    let endpoints = match *header {
        ProxyHeader::Proxy {
            source,
            destination,
        } => Some(same_family(source, destination)),
        ProxyHeader::Local => None,
    };
    match version {
        ProxyVersion::V1 => match endpoints {
            None => b"PROXY UNKNOWN\r\n".to_vec(),
            Some((s, d)) => {
                let proto = if s.is_ipv4() { "TCP4" } else { "TCP6" };
                format!(
                    "PROXY {proto} {} {} {} {}\r\n",
                    s.ip(),
                    d.ip(),
                    s.port(),
                    d.port()
                )
                .into_bytes()
            }
        },
        ProxyVersion::V2 => {
            let mut out = Vec::with_capacity(V2_FIXED_LEN + 36);
            out.extend_from_slice(&V2_SIGNATURE);
            match endpoints {
                None => out.extend_from_slice(&[0x20, 0x00, 0, 0]),
                Some((s, d)) => {
                    match (s.ip(), d.ip()) {
                        (IpAddr::V4(si), IpAddr::V4(di)) => {
                            out.extend_from_slice(&[0x21, 0x11, 0, 12]);
                            out.extend_from_slice(&si.octets());
                            out.extend_from_slice(&di.octets());
                        }
                        (si, di) => {
                            out.extend_from_slice(&[0x21, 0x21, 0, 36]);
                            out.extend_from_slice(&v6(si).octets());
                            out.extend_from_slice(&v6(di).octets());
                        }
                    }
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
            }
            out
        }
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn same_family(s: SocketAddr, d: SocketAddr) -> (SocketAddr, SocketAddr) {
    if s.is_ipv4() == d.is_ipv4() {
        return (s, d);
    }
    (
        SocketAddr::new(IpAddr::V6(v6(s.ip())), s.port()),
        SocketAddr::new(IpAddr::V6(v6(d.ip())), d.port()),
    )
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;

//! Admission of tunnel connections before authentication: one of `max_concurrent_handshakes`
//! and one of `max_handshakes_per_ip` for the source address, held together while the handshake
//! runs, so one address cannot take every handshake slot and starve the other agents. A
//! reusable count per source IP (`IpCounts`) with a guard that gives its unit back on drop.
//!
//! Must not: read from or write to a connection; decide anything after the handshake.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

use super::*;

/// Units held per key (a source IP, a host); a key at zero has no entry.
pub(super) type Counts<K> = Rc<RefCell<HashMap<K, usize>>>;

/// Counts per source IP (IPv4-mapped IPv6 counted as IPv4, see [`source_ip`]).
pub(super) type IpCounts = Counts<IpAddr>;

/// The key a source address is counted under.
pub(super) fn source_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// One unit counted against a key; given back when dropped.
pub(super) struct Slot<K: Eq + Hash + Copy> {
    table: Counts<K>,
    key: K,
}

/// A unit counted against a source IP.
pub(super) type IpSlot = Slot<IpAddr>;

impl<K: Eq + Hash + Copy> Slot<K> {
    /// Takes one unit for `key` while it holds fewer than `max`.
    pub(super) fn take(table: &Counts<K>, key: K, max: usize) -> Option<Self> {
        let mut counts = table.borrow_mut();
        let n = counts.entry(key).or_insert(0);
        if *n >= max {
            if *n == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(Self {
            table: table.clone(),
            key,
        })
    }
}

impl Slot<IpAddr> {
    /// Takes one unit for the source address `ip` while it holds fewer than `max`.
    pub(super) fn for_ip(table: &IpCounts, ip: IpAddr, max: usize) -> Option<Self> {
        Self::take(table, source_ip(ip), max)
    }
}

impl<K: Eq + Hash + Copy> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = self.table.borrow_mut();
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// A handshake's admission: both its global permit and its source's; released on drop.
pub(super) struct Admission {
    _global: tokio::sync::OwnedSemaphorePermit,
    _source: IpSlot,
}

impl Control {
    /// Admits a new tunnel connection from `peer` or says why not (counted and logged, rate
    /// limited); the caller closes a refused connection.
    pub(super) fn admit(&self, peer: SocketAddr) -> Option<Admission> {
        let max_per_ip = self.config.tunnel_listener.max_handshakes_per_ip;
        let Some(source) = IpSlot::for_ip(&self.handshakes_per_ip, peer.ip(), max_per_ip) else {
            self.stats.handshake(HandshakeOutcome::OverloadedPerIp);
            crate::log_limited!(warn!(%peer, max_per_ip,
                "tunnel connection refused: its address already has max_handshakes_per_ip handshakes in progress"));
            return None;
        };
        let Ok(global) = self.handshakes.clone().try_acquire_owned() else {
            self.stats.handshake(HandshakeOutcome::Overloaded);
            debug!(%peer, "too many handshakes in progress; closing tunnel connection");
            return None;
        };
        Some(Admission {
            _global: global,
            _source: source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_counted_up_to_its_bound_and_forgotten_at_zero() {
        let table = IpCounts::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let a = IpSlot::for_ip(&table, ip, 2).unwrap();
        let b = IpSlot::for_ip(&table, mapped, 2).unwrap();
        assert!(IpSlot::for_ip(&table, ip, 2).is_none());
        assert!(IpSlot::for_ip(&table, "10.0.0.2".parse().unwrap(), 2).is_some());
        drop(a);
        let c = IpSlot::for_ip(&table, ip, 2).unwrap();
        drop((b, c));
        assert!(table.borrow().is_empty());
    }
}

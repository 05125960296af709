//! Bounds on what peers make the control path keep once they are authenticated: host
//! identities per cluster (`clusters[].max_hosts`) and per source IP
//! (`tunnel_listener.max_hosts_per_ip`), aside connections per host
//! (`clusters[].max_aside_connections_per_agent`) and per source IP
//! (`tunnel_listener.max_aside_connections_per_ip`). A connection beyond one is answered status 0
//! and counted as `over_limit`; nothing else is affected.
//!
//! Must not: change the registry (the caller rolls a refused registration back) or write to a
//! connection.

use std::collections::HashMap;
use std::net::IpAddr;

use super::admission::{source_ip, Counts, IpSlot, Slot};
use super::*;
use crate::control::registry::Registered;

/// Which bound a registered connection is over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum PeerLimit {
    #[error("the cluster already has max_hosts ({0}) hosts")]
    Hosts(usize),
    #[error("its address already registered max_hosts_per_ip ({0}) hosts")]
    HostsPerIp(usize),
    #[error("the agent already holds max_aside_connections_per_agent ({0}) aside connections in this cluster")]
    AsidesPerAgent(usize),
    #[error("its address already holds max_aside_connections_per_ip ({0}) aside connections")]
    AsidesPerIp(usize),
}

/// The source IP each host was created from, and how many hosts each IP created.
#[derive(Debug, Default)]
pub(super) struct HostSources {
    by_host: HashMap<HostId, IpAddr>,
    per_ip: HashMap<IpAddr, usize>,
}

impl HostSources {
    /// Counts `host` against `ip` unless `ip` already created `max` hosts.
    fn admit(&mut self, host: HostId, ip: IpAddr, max: usize) -> bool {
        let n = self.per_ip.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
            return false;
        }
        *n += 1;
        self.by_host.insert(host, ip);
        true
    }

    /// `host` left the registry.
    pub(super) fn forget(&mut self, host: HostId) {
        let Some(ip) = self.by_host.remove(&host) else {
            return;
        };
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

/// What an aside connection holds while it is up: one of its host's and one of its address's.
pub(super) struct AsideSlots {
    _host: Slot<HostId>,
    _ip: IpSlot,
}

/// The tables [`Control::within_peer_limits`] keeps.
#[derive(Default)]
pub(super) struct PeerTables {
    pub(super) host_sources: RefCell<HostSources>,
    asides_per_host: Counts<HostId>,
    asides_per_ip: Counts<IpAddr>,
}

impl Control {
    /// Checks a connection just registered in `cluster` from `ip` against the per-peer bounds;
    /// an aside connection gets the slots it holds while it is up. On an error nothing is kept:
    /// the caller unregisters the connection.
    pub(super) fn within_peer_limits(
        &self,
        reg: &Registered,
        role: Role,
        cluster: &str,
        ip: IpAddr,
    ) -> Result<Option<AsideSlots>, PeerLimit> {
        let ip = source_ip(ip);
        let tl = &self.config.tunnel_listener;
        let (max_hosts, max_asides) = self
            .registry
            .borrow()
            .cluster(cluster)
            .map_or((usize::MAX, usize::MAX), |c| {
                (c.max_hosts, c.max_aside_connections_per_agent)
            });
        let aside = match role {
            Role::Aside => {
                let t = &self.peer_tables;
                let host = Slot::take(&t.asides_per_host, reg.host_id, max_asides)
                    .ok_or(PeerLimit::AsidesPerAgent(max_asides))?;
                let per_ip = IpSlot::take(&t.asides_per_ip, ip, tl.max_aside_connections_per_ip)
                    .ok_or(PeerLimit::AsidesPerIp(tl.max_aside_connections_per_ip))?;
                Some(AsideSlots {
                    _host: host,
                    _ip: per_ip,
                })
            }
            Role::Data => None,
        };
        if reg.new_host {
            // The new host is already counted here.
            if self.registry.borrow().host_count(cluster) > max_hosts {
                return Err(PeerLimit::Hosts(max_hosts));
            }
            let admitted = self.peer_tables.host_sources.borrow_mut().admit(
                reg.host_id,
                ip,
                tl.max_hosts_per_ip,
            );
            if !admitted {
                return Err(PeerLimit::HostsPerIp(tl.max_hosts_per_ip));
            }
        }
        Ok(aside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_sources_count_per_address_and_forget() {
        let mut s = HostSources::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(s.admit(1, a, 2));
        assert!(s.admit(2, a, 2));
        assert!(!s.admit(3, a, 2));
        assert!(s.admit(4, "10.0.0.2".parse().unwrap(), 2));
        s.forget(1);
        s.forget(1);
        assert!(s.admit(5, a, 2));
        for h in [2, 4, 5] {
            s.forget(h);
        }
        assert!(s.by_host.is_empty() && s.per_ip.is_empty());
    }
}

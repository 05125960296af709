//! What the workers get from the registry: the whole snapshot (at start and after a reload) or
//! only the host slots changed since the last publication; and the stable host key balancers
//! hash on.

use super::*;

impl Registry {
    /// A new snapshot of everything, with the next version number. It supersedes every pending
    /// change.
    pub fn snapshot(&mut self) -> Snapshot {
        self.version += 1;
        self.urgent.iter_mut().for_each(|u| *u = false);
        for c in self.clusters.values_mut() {
            c.dirty.clear();
        }
        Snapshot {
            version: self.version,
            clusters: self
                .clusters
                .values()
                .map(|c| {
                    let hosts = (0..c.slots.len())
                        .filter_map(|s| HostSlot::try_from(s).ok())
                        .map(|s| c.snapshot_host(s))
                        .collect();
                    (
                        c.name.clone(),
                        Arc::new(ClusterSnapshot {
                            name: c.name.clone(),
                            lb_type: c.config.lb_type,
                            pool_wait_ms: c.config.pool_wait_ms,
                            session_idle_timeout_ms: c.config.session_idle_timeout_ms,
                            max_sessions: c.config.max_sessions,
                            sessions: c.sessions.clone(),
                            hosts,
                        }),
                    )
                })
                .collect(),
        }
    }

    /// The host slots changed since the last publication (`None`: nothing changed), with the
    /// next version number. Costs the changed slots, not the hosts.
    pub fn take_changes(&mut self) -> Option<Changes> {
        let mut clusters = Vec::new();
        for c in self.clusters.values_mut() {
            if c.dirty.is_empty() {
                continue;
            }
            let mut slots: Vec<HostSlot> = c.dirty.drain().collect();
            slots.sort_unstable();
            let hosts = slots.into_iter().map(|s| (s, c.snapshot_host(s))).collect();
            clusters.push((c.name.clone(), ClusterChanges { hosts }));
        }
        if clusters.is_empty() {
            return None;
        }
        self.version += 1;
        Some(Changes {
            version: self.version,
            wake: self
                .urgent
                .iter_mut()
                .enumerate()
                .filter_map(|(w, u)| std::mem::take(u).then_some(w))
                .collect(),
            clusters,
        })
    }
}

/// FNV-1a over host name and agent id: stable across processes and restarts.
pub fn host_key(identity: &HostIdentity) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in identity
        .host_name
        .bytes()
        .chain(std::iter::once(0))
        .chain(identity.agent_id.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

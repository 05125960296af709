//! Building the snapshot the workers get from the registry, and the stable host key balancers
//! hash on.

use super::*;

impl Registry {
    /// A new snapshot of everything, with the next version number.
    pub fn snapshot(&mut self) -> Snapshot {
        self.version += 1;
        Snapshot {
            version: self.version,
            published_at: Some(std::time::Instant::now()),
            clusters: self
                .clusters
                .values()
                .map(|c| {
                    let hosts = c
                        .hosts
                        .iter()
                        .map(|(id, h)| SnapshotHost {
                            id: *id,
                            key: host_key(&h.identity),
                            weight: h.effective_weight(),
                            host_name: Arc::from(h.identity.host_name.as_str()),
                        })
                        .collect();
                    (
                        c.name.clone(),
                        ClusterSnapshot {
                            name: c.name.clone(),
                            lb_type: c.config.lb_type,
                            pool_wait_ms: c.config.pool_wait_ms,
                            session_idle_timeout_ms: c.config.session_idle_timeout_ms,
                            max_sessions: c.config.max_sessions,
                            sessions: c.sessions.clone(),
                            hosts,
                        },
                    )
                })
                .collect(),
        }
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

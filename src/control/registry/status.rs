//! The registry as the admin endpoint and tests see it: hosts and clusters with their
//! connections per worker (never credentials).

use super::*;

/// A host as the admin and tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    pub id: HostId,
    pub host_name: String,
    pub agent_id: String,
    pub weight: u32,
    pub legacy: bool,
    pub data_connections: usize,
    pub aside_connections: usize,
    pub idle_connections: usize,
    pub idle_per_worker: Vec<u32>,
    /// Data connections leased to a session, per worker that leased them.
    pub active_per_worker: Vec<u32>,
    /// Sessions each live data connection has carried (oldest connection first; more than one
    /// only with framed sessions).
    pub sessions_per_data_connection: Vec<u64>,
    /// Its latest change (its join, a weight, a drain) is published to the workers, which take
    /// it before their next lease; false for at most one publication interval (4 ms) under a
    /// storm of changes.
    pub published: bool,
}

/// A cluster as the admin sees it: its settings (never its credentials) and its hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterStatus {
    pub name: String,
    pub lb_type: crate::config::LbType,
    pub credential_policy: crate::config::CredentialPolicy,
    pub pool_wait_ms: u64,
    pub hosts: Vec<HostStatus>,
}

impl Registry {
    /// The hosts of a cluster, for status queries.
    pub fn hosts(&self, cluster: &str) -> Vec<HostStatus> {
        let Some(state) = self.clusters.get(cluster) else {
            return Vec::new();
        };
        self.host_statuses(state)
    }

    fn host_statuses(&self, state: &ClusterState) -> Vec<HostStatus> {
        state
            .hosts
            .iter()
            .map(|(id, h)| {
                let count = |role| {
                    h.conns
                        .iter()
                        .filter(|c| self.conns.get(c).is_some_and(|r| r.role == role))
                        .count()
                };
                HostStatus {
                    published: !state.dirty.contains(&h.slot),
                    id: *id,
                    host_name: h.identity.host_name.clone(),
                    agent_id: h.identity.agent_id.clone(),
                    weight: h.effective_weight(),
                    legacy: h.identity.legacy,
                    data_connections: count(Role::Data),
                    aside_connections: count(Role::Aside),
                    idle_connections: h.idle_per_worker.iter().map(|n| *n as usize).sum(),
                    idle_per_worker: h.idle_per_worker.clone(),
                    active_per_worker: {
                        let mut per = vec![0u32; self.workers];
                        for w in h
                            .conns
                            .iter()
                            .filter_map(|c| self.conns.get(c).and_then(|r| r.active_on))
                        {
                            if let Some(n) = per.get_mut(w) {
                                *n += 1;
                            }
                        }
                        per
                    },
                    sessions_per_data_connection: {
                        let mut ids: Vec<ConnId> = h.conns.iter().copied().collect();
                        ids.sort_unstable();
                        ids.iter()
                            .filter_map(|c| self.conns.get(c))
                            .filter(|r| r.role == Role::Data)
                            .map(|r| r.sessions)
                            .collect()
                    },
                }
            })
            .collect()
    }

    /// Every cluster with its hosts, ordered by name, for the admin endpoint.
    pub fn clusters(&self) -> Vec<ClusterStatus> {
        self.clusters
            .values()
            .map(|c| ClusterStatus {
                name: c.name.to_string(),
                lb_type: c.config.lb_type,
                credential_policy: c.config.credential_policy,
                pool_wait_ms: c.config.pool_wait_ms,
                hosts: self.host_statuses(c),
            })
            .collect()
    }

    /// Hosts of a cluster that may be asked for a data connection (pool request): weight > 0,
    /// ringtun agents. Allocates nothing.
    pub fn requestable_hosts(&self, cluster: &str) -> impl Iterator<Item = HostId> + Clone + '_ {
        self.clusters
            .get(cluster)
            .into_iter()
            .flat_map(|c| c.hosts.iter())
            .filter(|(_, h)| h.effective_weight() > 0 && !h.identity.legacy)
            .map(|(id, _)| *id)
    }

    /// How many hosts `cluster` has (0 if there is no such cluster).
    pub fn host_count(&self, cluster: &str) -> usize {
        self.clusters.get(cluster).map_or(0, |c| c.hosts.len())
    }

    /// Names of all clusters.
    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters.keys().map(|k| k.to_string()).collect()
    }
}

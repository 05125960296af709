//! The registry: clusters, their hosts, and every handshaken tunnel connection. Owned by the
//! control path alone; workers learn about it only through snapshots, published changes and
//! hand-offs.
//!
//! Every operation costs what it touches, not the fleet: a host is found by its identity's hash
//! (`hosts.rs`), by id through `host_cluster`, and each cluster keeps the host slots that changed
//! since the last publication (`publish.rs`), which sends only those.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::ClusterConfig;
use crate::plane::snapshot::{ClusterSnapshot, ConnId, HostId, HostSlot, Snapshot, SnapshotHost};
use crate::plane::update::{Changes, ClusterChanges};
use crate::protocol::Role;

mod conns;
mod hosts;
mod placement;
mod publish;
mod status;

pub use publish::host_key;
pub use status::{ClusterStatus, HostStatus};

/// Who a connection says it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    pub host_name: String,
    /// ringtun agents send one; legacy MOSN agents are identified by source IP.
    pub agent_id: String,
    pub legacy: bool,
}

/// Why a connection was not registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("no such cluster")]
    NoCluster,
    #[error("the agent already holds max_data_connections_per_agent ({0}) data connections in this cluster")]
    AgentLimit(u32),
    #[error("the cluster already holds max_data_connections ({0}) data connections")]
    ClusterLimit(u32),
}

/// What `register` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub conn_id: ConnId,
    pub host_id: HostId,
    /// The snapshot must be republished (new host or weight change).
    pub snapshot_changed: bool,
    /// This connection created its host (the agent's first connection to this cluster).
    pub new_host: bool,
}

#[derive(Debug)]
struct HostRecord {
    identity: HostIdentity,
    /// `host_key(&identity)`, computed once.
    key: u64,
    /// The host name as workers see it (shared by every publication).
    name: Arc<str>,
    /// Its index in the cluster's host list.
    slot: HostSlot,
    weight: u32,
    /// Drained by the server's admin: never picked (published with weight 0).
    drained: bool,
    /// Set by the server's admin; wins over the weight the agent announces.
    weight_override: Option<u32>,
    /// Data connections registered for this host.
    data_conns: u32,
    conns: BTreeSet<ConnId>,
    idle_per_worker: Vec<u32>,
}

impl HostRecord {
    /// The weight the balancer uses.
    fn effective_weight(&self) -> u32 {
        if self.drained {
            0
        } else {
            self.weight_override.unwrap_or(self.weight)
        }
    }
}

#[derive(Debug)]
struct ClusterState {
    config: ClusterConfig,
    name: Arc<str>,
    hosts: BTreeMap<HostId, HostRecord>,
    /// Data connections registered in this cluster.
    data_conns: u32,
    /// Frontend sessions now, over all workers (they count it; `max_sessions` bounds it).
    sessions: Arc<std::sync::atomic::AtomicU64>,
    /// Host id per slot (0: vacant), and the vacant slots to reuse.
    slots: Vec<HostId>,
    free_slots: Vec<HostSlot>,
    /// Host by `host_key`; identities whose key is taken by another go to `collisions`.
    by_key: HashMap<u64, HostId>,
    collisions: Vec<HostId>,
    /// Slots changed since the last publication.
    dirty: HashSet<HostSlot>,
}

impl ClusterState {
    fn new(config: &ClusterConfig) -> ClusterState {
        ClusterState {
            config: config.clone(),
            name: Arc::from(config.name.as_str()),
            hosts: BTreeMap::new(),
            data_conns: 0,
            sessions: Default::default(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_key: HashMap::new(),
            collisions: Vec::new(),
            dirty: HashSet::new(),
        }
    }
}

#[derive(Debug)]
struct ConnRecord {
    cluster: Arc<str>,
    host: HostId,
    role: Role,
    /// Named by a graceful close or a drain: never lease it again.
    closing: bool,
    /// Worker holding it while idle.
    idle_on: Option<usize>,
    /// Worker running its session, once leased.
    active_on: Option<usize>,
    /// Sessions leased on it so far (more than one only with framed sessions).
    sessions: u64,
    /// The agent's address of this connection (a MOSN graceful close names it).
    peer: SocketAddr,
}

/// Clusters → hosts → connections.
#[derive(Debug)]
pub struct Registry {
    clusters: BTreeMap<Arc<str>, ClusterState>,
    /// The cluster of every host.
    host_cluster: HashMap<HostId, Arc<str>>,
    conns: HashMap<ConnId, ConnRecord>,
    workers: usize,
    next_conn_id: ConnId,
    next_host_id: HostId,
    version: u64,
    /// Per worker: since the last publication, a host with idle connections there changed
    /// weight or was drained (the worker must be told at once, not only before its next lease).
    urgent: Vec<bool>,
}

impl Registry {
    pub fn new(clusters: &[ClusterConfig], workers: usize) -> Self {
        Self {
            clusters: clusters
                .iter()
                .map(|c| {
                    let state = ClusterState::new(c);
                    (state.name.clone(), state)
                })
                .collect(),
            host_cluster: HashMap::new(),
            conns: HashMap::new(),
            workers: workers.max(1),
            next_conn_id: 1,
            next_host_id: 1,
            version: 0,
            urgent: vec![false; workers.max(1)],
        }
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.get(name).map(|c| &c.config)
    }

    /// Records a connection that completed its handshake.
    pub fn register(
        &mut self,
        cluster: &str,
        identity: HostIdentity,
        weight: u32,
        role: Role,
        peer: SocketAddr,
    ) -> Result<Registered, RegisterError> {
        let state = self
            .clusters
            .get_mut(cluster)
            .ok_or(RegisterError::NoCluster)?;
        if role == Role::Data && state.data_conns >= state.config.max_data_connections {
            return Err(RegisterError::ClusterLimit(
                state.config.max_data_connections,
            ));
        }
        let existing = state.find(&identity);
        let new_host = existing.is_none();
        let per_agent = state.config.max_data_connections_per_agent;
        let conns_now = existing
            .and_then(|id| state.hosts.get(&id))
            .map_or(0, |h| h.data_conns);
        if role == Role::Data && conns_now >= per_agent {
            return Err(RegisterError::AgentLimit(per_agent));
        }
        let mut snapshot_changed = false;
        let host_id = match existing {
            Some(id) => id,
            None => {
                let id = self.next_host_id;
                self.next_host_id += 1;
                state.insert_host(id, identity, weight, self.workers);
                self.host_cluster.insert(id, state.name.clone());
                snapshot_changed = true;
                id
            }
        };
        let Some(host) = state.hosts.get_mut(&host_id) else {
            return Err(RegisterError::NoCluster);
        };
        if role == Role::Data {
            host.data_conns += 1;
            state.data_conns += 1;
        }
        let before = host.effective_weight();
        host.weight = weight;
        let after = host.effective_weight();
        let eligibility_changed = (before > 0) != (after > 0);
        if after != before {
            snapshot_changed = true;
        }
        let conn_id = self.next_conn_id;
        self.next_conn_id += 1;
        host.conns.insert(conn_id);
        let slot = host.slot;
        if snapshot_changed {
            state.dirty.insert(slot);
            if !new_host && eligibility_changed {
                mark_urgent(&mut self.urgent, &host.idle_per_worker);
            }
        }
        self.conns.insert(
            conn_id,
            ConnRecord {
                cluster: state.name.clone(),
                host: host_id,
                role,
                closing: false,
                idle_on: None,
                active_on: None,
                sessions: 0,
                peer,
            },
        );
        Ok(Registered {
            conn_id,
            host_id,
            snapshot_changed,
            new_host,
        })
    }

    /// A reloaded configuration: clusters not in `clusters` leave (their idle connections are
    /// returned for closing, with the worker holding each, and their host ids so their aside
    /// connections can be closed; sessions in flight finish); new ones are added; kept ones take
    /// the new settings and keep their hosts.
    pub fn replace_clusters(
        &mut self,
        clusters: &[ClusterConfig],
    ) -> (Vec<(usize, ConnId)>, Vec<HostId>) {
        let gone: Vec<Arc<str>> = self
            .clusters
            .keys()
            .filter(|k| !clusters.iter().any(|c| c.name.as_str() == &***k))
            .cloned()
            .collect();
        let mut close = Vec::new();
        let mut hosts = Vec::new();
        for name in gone {
            let Some(state) = self.clusters.remove(&name) else {
                continue;
            };
            for (host_id, host) in state.hosts {
                hosts.push(host_id);
                self.host_cluster.remove(&host_id);
                for id in host.conns {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.closing = true;
                        if let Some(w) = c.idle_on.take() {
                            close.push((w, id));
                        }
                    }
                }
            }
        }
        for c in clusters {
            match self.clusters.get_mut(c.name.as_str()) {
                Some(state) => state.config = c.clone(),
                None => {
                    let state = ClusterState::new(c);
                    self.clusters.insert(state.name.clone(), state);
                }
            }
        }
        (close, hosts)
    }

    /// The host a connection belongs to.
    pub fn host_of(&self, conn_id: ConnId) -> Option<HostId> {
        self.conns.get(&conn_id).map(|c| c.host)
    }

    /// The weight the agent announces now (weight update); true when the effective weight
    /// changed (republish).
    pub fn set_weight(&mut self, host_id: HostId, weight: u32) -> bool {
        self.update_host(host_id, |h| h.weight = weight)
    }

    /// The server admin's weight for a host, winning over the agent's; `None` gives the agent's
    /// back. True when the effective weight changed.
    pub fn override_weight(&mut self, host_id: HostId, weight: Option<u32>) -> bool {
        self.update_host(host_id, |h| h.weight_override = weight)
    }

    fn update_host(&mut self, host_id: HostId, f: impl FnOnce(&mut HostRecord)) -> bool {
        let Some(state) = self
            .host_cluster
            .get(&host_id)
            .and_then(|c| self.clusters.get_mut(c))
        else {
            return false;
        };
        let Some(h) = state.hosts.get_mut(&host_id) else {
            return false;
        };
        let before = h.effective_weight();
        f(h);
        let after = h.effective_weight();
        let changed = before != after;
        if changed {
            state.dirty.insert(h.slot);
            if (before > 0) != (after > 0) {
                mark_urgent(&mut self.urgent, &h.idle_per_worker);
            }
        }
        changed
    }

    /// Finds a host by cluster and host name (admin).
    pub fn find_host(&self, cluster: &str, host_name: &str) -> Vec<HostId> {
        self.clusters
            .get(cluster)
            .map(|c| {
                c.hosts
                    .iter()
                    .filter(|(_, h)| h.identity.host_name == host_name)
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Admin drain of a host: it is never picked again (its idle connections are returned for
    /// closing); sessions in flight finish. True when the host exists.
    pub fn drain_host(&mut self, host_id: HostId) -> Option<Vec<(usize, ConnId)>> {
        let state = self
            .host_cluster
            .get(&host_id)
            .and_then(|c| self.clusters.get_mut(c))?;
        let host = state.hosts.get_mut(&host_id)?;
        if !host.drained {
            host.drained = true;
            state.dirty.insert(host.slot);
            mark_urgent(&mut self.urgent, &host.idle_per_worker);
        }
        let ids: Vec<ConnId> = host.conns.iter().copied().collect();
        Some(self.graceful_close(host_id, &ids))
    }
}

/// The workers holding idle connections of a host must be woken when it becomes pickable or
/// stops being so (weight to or from 0, a drain): frontends waiting for a host look again, and
/// none is leased there meanwhile. A change between two positive weights wakes nobody: every
/// worker applies pending changes before it leases, so no lease sees the old weight.
fn mark_urgent(urgent: &mut [bool], idle_per_worker: &[u32]) {
    for (u, n) in urgent.iter_mut().zip(idle_per_worker) {
        *u |= *n > 0;
    }
}

#[cfg(test)]
mod tests;

//! The registry: clusters, their hosts, and every handshaken tunnel connection. Owned by the
//! control path alone; workers learn about it only through snapshots and hand-offs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::ClusterConfig;
use crate::plane::snapshot::{ClusterSnapshot, ConnId, HostId, Snapshot, SnapshotHost};
use crate::protocol::Role;

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

#[derive(Debug)]
struct HostRecord {
    identity: HostIdentity,
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
    #[allow(dead_code)]
    peer: SocketAddr,
}

/// Clusters → hosts → connections.
#[derive(Debug)]
pub struct Registry {
    clusters: BTreeMap<Arc<str>, ClusterState>,
    conns: HashMap<ConnId, ConnRecord>,
    workers: usize,
    next_conn_id: ConnId,
    next_host_id: HostId,
    version: u64,
}

impl Registry {
    pub fn new(clusters: &[ClusterConfig], workers: usize) -> Self {
        Self {
            clusters: clusters
                .iter()
                .map(|c| {
                    let name: Arc<str> = Arc::from(c.name.as_str());
                    (
                        name.clone(),
                        ClusterState {
                            config: c.clone(),
                            name,
                            hosts: BTreeMap::new(),
                            data_conns: 0,
                            sessions: Default::default(),
                        },
                    )
                })
                .collect(),
            conns: HashMap::new(),
            workers: workers.max(1),
            next_conn_id: 1,
            next_host_id: 1,
            version: 0,
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
        let existing = state
            .hosts
            .iter()
            .find(|(_, h)| h.identity == identity)
            .map(|(id, _)| *id);
        let mut snapshot_changed = false;
        let new_host = existing.is_none();
        let host_id = match existing {
            Some(id) => id,
            None => {
                let id = self.next_host_id;
                self.next_host_id += 1;
                state.hosts.insert(
                    id,
                    HostRecord {
                        identity,
                        weight,
                        drained: false,
                        weight_override: None,
                        data_conns: 0,
                        conns: BTreeSet::new(),
                        idle_per_worker: vec![0; self.workers],
                    },
                );
                snapshot_changed = true;
                id
            }
        };
        let Some(host) = state.hosts.get_mut(&host_id) else {
            return Err(RegisterError::NoCluster);
        };
        if role == Role::Data && host.data_conns >= state.config.max_data_connections_per_agent {
            if host.conns.is_empty() {
                state.hosts.remove(&host_id);
            }
            return Err(RegisterError::AgentLimit(
                state.config.max_data_connections_per_agent,
            ));
        }
        if role == Role::Data {
            host.data_conns += 1;
            state.data_conns += 1;
        }
        let before = host.effective_weight();
        host.weight = weight;
        if host.effective_weight() != before {
            snapshot_changed = true;
        }
        let conn_id = self.next_conn_id;
        self.next_conn_id += 1;
        host.conns.insert(conn_id);
        self.conns.insert(
            conn_id,
            ConnRecord {
                cluster: state.name.clone(),
                host: host_id,
                role,
                closing: false,
                idle_on: None,
                active_on: None,
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

    /// Chooses the worker for an idle data connection: the one with the fewest idle connections
    /// of that host, and records it there.
    pub fn assign_worker(&mut self, conn_id: ConnId) -> Option<usize> {
        self.assign_worker_preferring(conn_id, None)
    }

    /// As [`Registry::assign_worker`], but to `preferred` when given (a worker whose frontends
    /// wait for a connection of this cluster).
    pub fn assign_worker_preferring(
        &mut self,
        conn_id: ConnId,
        preferred: Option<usize>,
    ) -> Option<usize> {
        let conn = self.conns.get_mut(&conn_id)?;
        let host = self
            .clusters
            .get_mut(&conn.cluster)?
            .hosts
            .get_mut(&conn.host)?;
        let fewest = host
            .idle_per_worker
            .iter()
            .enumerate()
            .min_by_key(|(_, n)| **n)
            .map(|(w, _)| w)?;
        let worker = preferred
            .filter(|w| *w < host.idle_per_worker.len())
            .unwrap_or(fewest);
        host.idle_per_worker[worker] += 1;
        conn.idle_on = Some(worker);
        Some(worker)
    }

    /// The host and worker to take an idle connection from for a starving `worker`: the worker
    /// holding the most idle connections of any host of the cluster.
    pub fn donor_for(&self, cluster: &str, worker: usize) -> Option<(HostId, usize)> {
        let state = self.clusters.get(cluster)?;
        state
            .hosts
            .iter()
            .flat_map(|(id, h)| {
                h.idle_per_worker
                    .iter()
                    .enumerate()
                    .filter(move |(w, n)| *w != worker && **n > 0)
                    .map(move |(w, n)| (*n, *id, w))
            })
            .max_by_key(|(n, _, _)| *n)
            .map(|(_, id, w)| (id, w))
    }

    /// An idle connection moved to another worker.
    pub fn reassign(&mut self, conn_id: ConnId, to: usize) {
        self.leave_idle(conn_id);
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let Some(host) = self
            .clusters
            .get_mut(&conn.cluster)
            .and_then(|c| c.hosts.get_mut(&conn.host))
        else {
            return;
        };
        if let Some(n) = host.idle_per_worker.get_mut(to) {
            *n += 1;
            conn.idle_on = Some(to);
        }
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
                    let name: Arc<str> = Arc::from(c.name.as_str());
                    self.clusters.insert(
                        name.clone(),
                        ClusterState {
                            config: c.clone(),
                            name,
                            hosts: BTreeMap::new(),
                            data_conns: 0,
                            sessions: Default::default(),
                        },
                    );
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
        let Some(h) = self
            .clusters
            .values_mut()
            .find_map(|c| c.hosts.get_mut(&host_id))
        else {
            return false;
        };
        let before = h.effective_weight();
        f(h);
        before != h.effective_weight()
    }

    /// Graceful close asked by `host_id`'s own aside connection: of `ids`, those that are this
    /// host's data connections are never leased again. Returns the idle ones to close now, with
    /// the worker holding each; leased ones end with their session. Ids of other hosts are
    /// ignored (a host may only close its own connections).
    pub fn graceful_close(&mut self, host_id: HostId, ids: &[ConnId]) -> Vec<(usize, ConnId)> {
        let mut close = Vec::new();
        for id in ids {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            if c.host != host_id || c.role != Role::Data {
                continue;
            }
            c.closing = true;
            if let Some(w) = c.idle_on {
                close.push((w, *id));
            }
        }
        close
    }

    /// Whether a graceful close named this connection (it must not be leased).
    pub fn is_closing(&self, conn_id: ConnId) -> bool {
        self.conns.get(&conn_id).is_some_and(|c| c.closing)
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
        let host = self
            .clusters
            .values_mut()
            .find_map(|c| c.hosts.get_mut(&host_id))?;
        host.drained = true;
        let ids: Vec<ConnId> = host.conns.iter().copied().collect();
        Some(self.graceful_close(host_id, &ids))
    }

    /// An idle data connection was taken by a session.
    pub fn conn_leased(&mut self, conn_id: ConnId) {
        let worker = self.conns.get(&conn_id).and_then(|c| c.idle_on);
        self.leave_idle(conn_id);
        if let Some(conn) = self.conns.get_mut(&conn_id) {
            conn.active_on = worker;
        }
    }

    fn leave_idle(&mut self, conn_id: ConnId) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let Some(worker) = conn.idle_on.take() else {
            return;
        };
        if let Some(host) = self
            .clusters
            .get_mut(&conn.cluster)
            .and_then(|c| c.hosts.get_mut(&conn.host))
        {
            if let Some(n) = host.idle_per_worker.get_mut(worker) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// A connection closed. Returns true when its host had no connection left and was removed
    /// (the snapshot must be republished).
    pub fn conn_closed(&mut self, conn_id: ConnId) -> bool {
        self.leave_idle(conn_id);
        let Some(conn) = self.conns.remove(&conn_id) else {
            return false;
        };
        let Some(cluster) = self.clusters.get_mut(&conn.cluster) else {
            return false;
        };
        if conn.role == Role::Data {
            cluster.data_conns = cluster.data_conns.saturating_sub(1);
        }
        let Some(host) = cluster.hosts.get_mut(&conn.host) else {
            return false;
        };
        host.conns.remove(&conn_id);
        if conn.role == Role::Data {
            host.data_conns = host.data_conns.saturating_sub(1);
        }
        if host.conns.is_empty() {
            cluster.hosts.remove(&conn.host);
            return true;
        }
        false
    }

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

    /// Names of all clusters.
    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters.keys().map(|k| k.to_string()).collect()
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let cluster: ClusterConfig = serde_json::from_str(r#"{"name":"c"}"#).unwrap();
        Registry::new(&[cluster], 2)
    }

    fn id(name: &str) -> HostIdentity {
        HostIdentity {
            host_name: name.into(),
            agent_id: format!("{name}-id"),
            legacy: false,
        }
    }

    const PEER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        1,
    ));

    #[test]
    fn host_lives_while_it_has_connections() {
        let mut r = registry();
        let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
        assert!(a.snapshot_changed);
        let b = r.register("c", id("a"), 1, Role::Aside, PEER).unwrap();
        assert!(!b.snapshot_changed);
        assert_eq!(a.host_id, b.host_id);
        assert!(!r.conn_closed(a.conn_id));
        assert_eq!(r.hosts("c").len(), 1);
        assert!(r.conn_closed(b.conn_id));
        assert!(r.hosts("c").is_empty());
    }

    #[test]
    fn only_a_hosts_first_connection_is_new_host() {
        let mut r = registry();
        let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
        assert!(a.new_host);
        let b = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
        assert!(!b.new_host);
        assert!(!r.conn_closed(a.conn_id));
        assert!(r.conn_closed(b.conn_id));
        // Every connection gone: the next one creates the host again.
        let c = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
        assert!(c.new_host);
    }

    #[test]
    fn unknown_cluster_registers_nothing() {
        assert_eq!(
            registry().register("nope", id("a"), 1, Role::Data, PEER),
            Err(RegisterError::NoCluster)
        );
    }

    #[test]
    fn idle_connections_spread_over_workers() {
        let mut r = registry();
        let mut workers = Vec::new();
        for _ in 0..4 {
            let reg = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
            workers.push(r.assign_worker(reg.conn_id).unwrap());
        }
        workers.sort();
        assert_eq!(workers, vec![0, 0, 1, 1]);
        assert_eq!(r.hosts("c")[0].idle_connections, 4);
    }

    #[test]
    fn donor_is_the_fullest_other_worker() {
        let mut r = registry();
        let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
        assert_eq!(r.assign_worker(a.conn_id), Some(0));
        assert_eq!(r.donor_for("c", 1), Some((a.host_id, 0)));
        assert_eq!(r.donor_for("c", 0), None);
        r.reassign(a.conn_id, 1);
        assert_eq!(r.hosts("c")[0].idle_per_worker, vec![0, 1]);
        assert_eq!(r.donor_for("c", 0), Some((a.host_id, 1)));
    }

    #[test]
    fn leased_connections_count_as_active_on_their_worker() {
        let mut r = registry();
        let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
        let b = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
        assert_eq!(r.assign_worker(a.conn_id), Some(0));
        assert_eq!(r.assign_worker(b.conn_id), Some(1));
        r.conn_leased(b.conn_id);
        let h = &r.clusters()[0].hosts[0];
        assert_eq!(h.idle_per_worker, vec![1, 0]);
        assert_eq!(h.active_per_worker, vec![0, 1]);
        r.conn_closed(b.conn_id);
        assert_eq!(r.clusters()[0].hosts[0].active_per_worker, vec![0, 0]);
    }

    #[test]
    fn graceful_close_names_only_the_hosts_own_idle_data_connections() {
        let mut r = registry();
        let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
        let a2 = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
        let b = r.register("c", id("b"), 1, Role::Data, PEER).unwrap();
        r.assign_worker(a.conn_id);
        r.assign_worker(a2.conn_id);
        r.assign_worker(b.conn_id);
        r.conn_leased(a2.conn_id);
        let close = r.graceful_close(a.host_id, &[a.conn_id, a2.conn_id, b.conn_id]);
        assert_eq!(
            close.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
            vec![a.conn_id]
        );
        assert!(r.is_closing(a2.conn_id));
        assert!(!r.is_closing(b.conn_id));
    }

    #[test]
    fn admin_weight_wins_until_cleared_and_drain_publishes_zero() {
        let mut r = registry();
        let a = r.register("c", id("a"), 4, Role::Data, PEER).unwrap();
        assert!(r.override_weight(a.host_id, Some(9)));
        // A re-dial announcing the agent's weight does not undo the admin's.
        assert!(
            !r.register("c", id("a"), 4, Role::Data, PEER)
                .unwrap()
                .snapshot_changed
        );
        assert_eq!(r.snapshot().clusters["c"].hosts[0].weight, 9);
        assert!(!r.set_weight(a.host_id, 5));
        assert!(r.override_weight(a.host_id, None));
        assert_eq!(r.snapshot().clusters["c"].hosts[0].weight, 5);
        r.drain_host(a.host_id).unwrap();
        assert_eq!(r.snapshot().clusters["c"].hosts[0].weight, 0);
    }

    #[test]
    fn reload_keeps_unchanged_clusters_and_empties_removed_ones() {
        let mut r = registry();
        let a = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
        r.assign_worker(a.conn_id);
        let d: ClusterConfig = serde_json::from_str(r#"{"name":"d"}"#).unwrap();
        let c: ClusterConfig = serde_json::from_str(r#"{"name":"c","pool_wait_ms":7}"#).unwrap();
        let (close, hosts) = r.replace_clusters(&[c.clone(), d.clone()]);
        assert!(close.is_empty() && hosts.is_empty());
        assert_eq!(r.cluster("c").unwrap().pool_wait_ms, 7);
        assert_eq!(r.hosts("c").len(), 1);
        let (close, hosts) = r.replace_clusters(&[d]);
        assert_eq!(close, vec![(0, a.conn_id)]);
        assert_eq!(hosts, vec![a.host_id]);
        assert!(r.cluster("c").is_none());
        assert!(!r.conn_closed(a.conn_id));
    }

    #[test]
    fn data_connection_limits_per_agent_and_per_cluster() {
        let cluster: ClusterConfig = serde_json::from_str(
            r#"{"name":"c","max_data_connections_per_agent":2,"max_data_connections":3}"#,
        )
        .unwrap();
        let mut r = Registry::new(&[cluster], 1);
        r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
        let a2 = r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
        assert_eq!(
            r.register("c", id("a"), 1, Role::Data, PEER),
            Err(RegisterError::AgentLimit(2))
        );
        // Aside connections are not data connections.
        r.register("c", id("a"), 1, Role::Aside, PEER).unwrap();
        r.register("c", id("b"), 1, Role::Data, PEER).unwrap();
        assert_eq!(
            r.register("c", id("b"), 1, Role::Data, PEER),
            Err(RegisterError::ClusterLimit(3))
        );
        // A host refused its first connection is not left behind.
        assert_eq!(
            r.register("c", id("z"), 1, Role::Data, PEER),
            Err(RegisterError::ClusterLimit(3))
        );
        assert_eq!(r.hosts("c").len(), 2);
        r.conn_closed(a2.conn_id);
        r.register("c", id("b"), 1, Role::Data, PEER).unwrap();
    }

    #[test]
    fn weight_change_republishes() {
        let mut r = registry();
        r.register("c", id("a"), 1, Role::Data, PEER).unwrap();
        let again = r.register("c", id("a"), 5, Role::Data, PEER).unwrap();
        assert!(again.snapshot_changed);
        assert_eq!(r.snapshot().clusters["c"].hosts[0].weight, 5);
    }
}

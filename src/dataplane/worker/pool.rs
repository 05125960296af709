//! A worker's idle data connections per host: leasing (the balancer's pick, newest first; a
//! legacy host's oldest first), donation to a starving worker (oldest first), closing on the
//! control path's word, and the heartbeat sweep that pings idle connections and retires dead
//! ones.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use tracing::{debug, warn};

use super::Worker;
use crate::balancer::{Balancer, HostSpec, HostState};
use crate::dataplane::idle::{IdleConn, IdleError};
use crate::plane::counters::{bump, ClusterCounters};
use crate::plane::snapshot::{ClusterSnapshot, HostId, SnapshotHost};
use crate::plane::{HandedConn, WorkerEvent};

/// A cluster as this worker sees it: the snapshot, its balancer and its counters.
pub(super) struct LocalCluster {
    pub(super) snap: ClusterSnapshot,
    /// `snap.hosts` as the balancer sees them (same slots).
    pub(super) specs: Vec<HostSpec>,
    pub(super) balancer: Balancer,
    pub(super) stats: Arc<ClusterCounters>,
}

/// One host's idle connections here (oldest first) and its sessions in flight here.
#[derive(Default)]
pub(super) struct HostPool {
    pub(super) idle: VecDeque<IdleConn>,
    pub(super) active: u32,
}

/// What the worker knows: its clusters and its pools.
#[derive(Default)]
pub(super) struct State {
    pub(super) clusters: HashMap<Arc<str>, LocalCluster>,
    pub(super) pools: HashMap<HostId, HostPool>,
}

/// The balancer's view of this worker's pools.
pub(super) struct PoolView<'a> {
    pub(super) hosts: &'a [SnapshotHost],
    pub(super) pools: &'a HashMap<HostId, HostPool>,
    /// Only connections whose agent announced at least this extension version count (0: all).
    pub(super) min_version: u32,
}

impl HostPool {
    /// The index of the idle connection to lease next among those of `min_version` or more:
    /// the newest, or a legacy host's oldest (see `try_lease`).
    fn next_index(&self, min_version: u32) -> Option<usize> {
        if min_version == 0 {
            let oldest = self.idle.front().is_some_and(|c| c.legacy);
            return match self.idle.len() {
                0 => None,
                n if !oldest => Some(n - 1),
                _ => Some(0),
            };
        }
        self.idle
            .iter()
            .rposition(|c| c.peer_extension_version >= min_version)
    }
}

impl HostState for PoolView<'_> {
    fn is_available(&self, index: usize) -> bool {
        self.hosts
            .get(index)
            .and_then(|h| self.pools.get(&h.id))
            .is_some_and(|p| p.next_index(self.min_version).is_some())
    }

    fn active_sessions(&self, index: usize) -> u32 {
        self.hosts
            .get(index)
            .and_then(|h| self.pools.get(&h.id))
            .map_or(0, |p| p.active)
    }
}

impl Worker {
    /// Takes an idle connection of the host the balancer picks, skipping dead ones; only
    /// connections whose agent announced `min_version` or more (a UDP flow needs 2).
    pub(super) fn try_lease(
        &self,
        cluster: &str,
        client_ip: IpAddr,
        min_version: u32,
    ) -> Option<IdleConn> {
        let mut dead = Vec::new();
        let leased = {
            let mut state = self.state.borrow_mut();
            let State { clusters, pools } = &mut *state;
            let local = clusters.get_mut(cluster)?;
            loop {
                let view = PoolView {
                    hosts: &local.snap.hosts,
                    pools,
                    min_version,
                };
                let Some(i) = local.balancer.pick(client_ip, &view) else {
                    break None;
                };
                let Some(pool) = local.snap.hosts.get(i).and_then(|h| pools.get_mut(&h.id)) else {
                    break None;
                };
                // Newest first: connections nobody needs stay at the front and age, so an
                // agent can let its extra ones go once idle (a rotating pool never would).
                // A legacy (MOSN) host's oldest first: the longest settled after its response,
                // and MOSN has no extra connections to let go.
                let next = pool
                    .next_index(min_version)
                    .and_then(|at| pool.idle.remove(at));
                let Some(mut conn) = next else {
                    break None;
                };
                match conn.poll(self.max_frame_payload_bytes) {
                    Ok(()) => {
                        pool.active += 1;
                        break Some(conn);
                    }
                    Err(e) => dead.push((conn, e)),
                }
            }
        };
        for (c, e) in dead {
            self.retire(c, &e);
        }
        leased
    }

    /// Gives an idle connection to another worker whose frontends are starving.
    pub(super) fn donate(&self, cluster: &Arc<str>, host_id: HostId, to: usize) {
        let conn = {
            let mut state = self.state.borrow_mut();
            let State { clusters, pools } = &mut *state;
            let hosts_of_cluster = clusters.get(cluster).map(|c| &c.snap.hosts);
            let candidates = std::iter::once(host_id)
                .chain(hosts_of_cluster.into_iter().flatten().map(|h| h.id));
            let mut found = None;
            for id in candidates {
                // The oldest: it was the least likely to be leased here.
                if let Some(c) = pools.get_mut(&id).and_then(|p| p.idle.pop_front()) {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let Some(conn) = conn else {
            self.events.now(WorkerEvent::DonateFailed {
                to,
                cluster: cluster.clone(),
            });
            return;
        };
        let handed = HandedConn {
            conn_id: conn.conn_id,
            host_id: conn.host_id,
            cluster: cluster.clone(),
            stream: conn.stream,
            legacy: conn.legacy,
            peer_extension_version: conn.peer_extension_version,
            pending: conn.pending,
            outstanding_pings: conn.outstanding_pings,
            tls: conn.tls,
        };
        self.events.now(WorkerEvent::Donated { to, conn: handed });
    }

    pub(super) fn retire(&self, conn: IdleConn, why: &IdleError) {
        debug!(worker = self.index, conn = conn.conn_id, reason = %why, "idle data connection closed");
        if matches!(why, IdleError::HeartbeatMissed(_)) {
            bump(&self.counters.heartbeat_closes_total);
            warn!(conn = conn.conn_id, reason = %why, "closing data connection: agent stopped answering heartbeats");
        } else {
            bump(&self.counters.idle_closes_total);
        }
        conn.shutdown();
        self.events.now(WorkerEvent::Closed {
            conn_id: conn.conn_id,
        });
    }

    pub(super) fn close_idle(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        // A stopping agent names all of its connections (thousands): one pass over each pool
        // with a set lookup, not a scan of `ids` per idle connection and a shift per removal.
        let ids: std::collections::HashSet<u64> = ids.iter().copied().collect();
        let mut removed = Vec::new();
        {
            let mut state = self.state.borrow_mut();
            for pool in state.pools.values_mut() {
                if !pool.idle.iter().any(|c| ids.contains(&c.conn_id)) {
                    continue;
                }
                let mut kept = std::collections::VecDeque::with_capacity(pool.idle.len());
                for c in pool.idle.drain(..) {
                    if ids.contains(&c.conn_id) {
                        removed.push(c);
                    } else {
                        kept.push_back(c);
                    }
                }
                pool.idle = kept;
            }
        }
        // The others may be leased here: closed when their session ends.
        let mut leased = self.leased.borrow_mut();
        for id in &ids {
            if let Some(closing) = leased.get_mut(id) {
                *closing = true;
            }
        }
        drop(leased);
        for c in removed {
            self.retire(c, &IdleError::Closed);
        }
    }

    pub(super) fn close_all_idle(&self) {
        let mut state = self.state.borrow_mut();
        for pool in state.pools.values_mut() {
            for c in pool.idle.drain(..) {
                c.shutdown();
            }
        }
    }

    pub(super) async fn heartbeat_loop(self: Rc<Self>) {
        let mut tick = crate::rt::time::interval(self.heartbeat_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            // Connections handed without a wake-up get their first ping in this sweep.
            self.catch_up();
            let mut dead = Vec::new();
            {
                let mut state = self.state.borrow_mut();
                for pool in state.pools.values_mut() {
                    let mut i = 0;
                    while i < pool.idle.len() {
                        let conn = &mut pool.idle[i];
                        let result = conn.poll(self.max_frame_payload_bytes).and_then(|()| {
                            conn.heartbeat(self.heartbeat_max_missed, self.legacy_idle_timeout)
                        });
                        match result {
                            Ok(()) => i += 1,
                            Err(e) => {
                                if let Some(c) = pool.idle.remove(i) {
                                    dead.push((c, e));
                                }
                            }
                        }
                    }
                }
                state
                    .pools
                    .retain(|_, p| !p.idle.is_empty() || p.active > 0);
            }
            for (c, e) in dead {
                self.retire(c, &e);
            }
        }
    }
}

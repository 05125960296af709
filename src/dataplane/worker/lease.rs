//! Waiting for a connection: a frontend with no idle connection here waits up to
//! `pool_wait_ms`, the control path is told (once, then every `REASK_MS` while waiting) so it can
//! move or ask for one; and the cluster's `max_sessions` over all workers.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::rt::time::Instant;
use tokio::sync::Notify;

use super::Worker;
use crate::dataplane::idle::IdleConn;
use crate::plane::counters::{bump, ClusterCounters};
use crate::plane::WorkerEvent;

/// While frontends wait for a connection, how often the worker asks the control path again.
const REASK_MS: u64 = 50;

/// One session counted against its cluster's `max_sessions`; uncounted when dropped.
pub(super) struct SessionSlot(Arc<std::sync::atomic::AtomicU64>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Worker {
    /// This worker's counters of `cluster` (created if the snapshot does not know it).
    pub(super) fn cluster_stats(&self, cluster: &Arc<str>) -> Arc<ClusterCounters> {
        let known = self
            .state
            .borrow()
            .clusters
            .get(cluster)
            .map(|c| c.stats.clone());
        known.unwrap_or_else(|| self.counters.clusters.get_or_create(cluster))
    }

    pub(super) fn pool_wait(&self, cluster: &str) -> Duration {
        let state = self.state.borrow();
        Duration::from_millis(
            state
                .clusters
                .get(cluster)
                .map_or(0, |c| c.snap.pool_wait_ms),
        )
    }

    /// `cluster`'s session idle timeout (`None`: never, or the cluster is gone).
    pub(super) fn session_idle_timeout(&self, cluster: &str) -> Option<Duration> {
        let state = self.state.borrow();
        let ms = state.clusters.get(cluster)?.snap.session_idle_timeout_ms;
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    pub(super) fn waiter(&self, cluster: &Arc<str>) -> Rc<Notify> {
        self.waiters
            .borrow_mut()
            .entry(cluster.clone())
            .or_insert_with(|| Rc::new(Notify::new()))
            .clone()
    }

    /// `try_lease` with the published changes applied first (a new host is known before its
    /// connection is leased).
    fn lease_now(&self, cluster: &str, ip: std::net::IpAddr, min_version: u32) -> Option<IdleConn> {
        self.catch_up();
        self.try_lease(cluster, ip, min_version)
    }

    pub(super) async fn lease(&self, cluster: &Arc<str>, client: SocketAddr) -> Option<IdleConn> {
        self.lease_min_version(cluster, client, 0).await
    }

    /// `lease`, of a connection whose agent announced `min_version` or more (a UDP flow's).
    pub(super) async fn lease_min_version(
        &self,
        cluster: &Arc<str>,
        client: SocketAddr,
        min_version: u32,
    ) -> Option<IdleConn> {
        if let Some(conn) = self.lease_now(cluster, client.ip(), min_version) {
            return Some(conn);
        }
        bump(&self.counters.pool_waits_total);
        bump(&self.cluster_stats(cluster).pool_waits_total);
        let waiting = Waiting::begin(self, cluster);
        self.ask_for_connections(cluster);
        let deadline = Instant::now() + self.pool_wait(cluster);
        let notify = self.waiter(cluster);
        let leased = loop {
            let notified = notify.notified();
            if let Some(conn) = self.lease_now(cluster, client.ip(), min_version) {
                break Some(conn);
            }
            let wake = deadline.min(Instant::now() + Duration::from_millis(REASK_MS));
            if crate::rt::time::timeout_at(wake, notified).await.is_err() {
                // Let a later frontend ask again.
                self.starving.borrow_mut().remove(cluster);
                if Instant::now() >= deadline {
                    break self.lease_now(cluster, client.ip(), min_version);
                }
                // Still waiting: ask again (an answer may have gone to another worker, or a
                // donor may have had nothing left).
                self.ask_for_connections(cluster);
            }
        };
        drop(waiting);
        // Others still wait: ask again for them (the flag was cleared when a connection came).
        self.ask_for_connections(cluster);
        leased
    }

    /// Counts a session of `cluster` against its `max_sessions` (over all workers); `None`
    /// when the cluster is full or unknown.
    pub(super) fn session_slot(&self, cluster: &str) -> Option<SessionSlot> {
        let state = self.state.borrow();
        let c = &state.clusters.get(cluster)?.snap;
        let now = c.sessions.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let slot = SessionSlot(c.sessions.clone());
        (now < c.max_sessions).then_some(slot)
    }

    /// Tells the control path that frontends of `cluster` wait here, unless it was told already
    /// and nothing arrived since.
    pub(super) fn ask_for_connections(&self, cluster: &Arc<str>) {
        let waiting = self.waiting.borrow().get(cluster).copied().unwrap_or(0);
        if waiting > 0 && self.starving.borrow_mut().insert(cluster.clone()) {
            self.events.now(WorkerEvent::Starving {
                worker: self.index,
                cluster: cluster.clone(),
                waiting,
            });
        }
    }
}

/// One frontend counted as waiting for a connection of its cluster, until dropped (also when
/// its session is dropped mid-wait). The worker's total tells the control path, through the
/// update slot, when the first starts and the last ends: while any wait, a connection handed to
/// this worker wakes it.
struct Waiting<'a> {
    worker: &'a Worker,
    cluster: &'a Arc<str>,
}

impl<'a> Waiting<'a> {
    fn begin(worker: &'a Worker, cluster: &'a Arc<str>) -> Self {
        *worker
            .waiting
            .borrow_mut()
            .entry(cluster.clone())
            .or_insert(0) += 1;
        worker.count_waiting(1);
        Waiting { worker, cluster }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.worker.waiting.borrow_mut().get_mut(self.cluster) {
            *n = n.saturating_sub(1);
        }
        self.worker.count_waiting(-1);
    }
}

impl Worker {
    fn count_waiting(&self, delta: i32) {
        let before = self.waiting_total.get();
        let after = before.saturating_add_signed(delta);
        self.waiting_total.set(after);
        if (before == 0) != (after == 0) {
            self.updates.set_frontends_waiting(after > 0);
        }
    }
}

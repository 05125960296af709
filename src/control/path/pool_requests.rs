//! Pool requests: frontends waiting on a worker make the control path ask agents for more data
//! connections, and remember which workers are owed them, so one shortage is asked for once and
//! the connections go where they are waited for.

use super::*;

/// How long a pool request is counted as on its way before it is asked again.
const OWED_EXPIRY_MS: u64 = 1000;

impl Control {
    /// Records that `worker` waits for `count` connections of `cluster`; returns how many more
    /// must be asked for (what is owed already is not asked twice). Requests unanswered for
    /// `OWED_EXPIRY_MS` are forgotten, so a lost one is asked again.
    pub(super) fn owe(&self, cluster: &str, worker: usize, count: u32) -> u32 {
        let now = tokio::time::Instant::now();
        let mut wanted = self.wanted.borrow_mut();
        let queue = wanted.entry(cluster.to_string()).or_default();
        queue.retain(|(_, at)| now.duration_since(*at) < Duration::from_millis(OWED_EXPIRY_MS));
        let owed = queue.iter().filter(|(w, _)| *w == worker).count() as u32;
        let more = count.min(4096).saturating_sub(owed);
        for _ in 0..more {
            queue.push_back((worker, now));
        }
        more
    }

    /// Asks one host of the cluster (in turn) for `count` more data connections.
    pub(super) fn request_pool(&self, cluster: &Arc<str>, count: u32) {
        // No per-host status is built: a fleet of thousands is scanned by id and weight only.
        let registry = self.registry.borrow();
        let asides = self.asides.borrow();
        // A host whose aside queue is full is not reading it: ask another.
        let candidates = registry
            .requestable_hosts(cluster)
            .filter_map(|h| asides.get(&h).and_then(|v| v.first()).map(|(_, tx)| tx))
            .filter(|tx| tx.capacity() > 0);
        let n = candidates.clone().count();
        if n == 0 {
            return;
        }
        let turn = self.pool_request_turn.get();
        self.pool_request_turn.set(turn.wrapping_add(1));
        let request = Frame::PoolRequest(crate::protocol::PoolRequest {
            cluster_name: cluster.to_string(),
            count: count.max(1),
        });
        if let Some(tx) = candidates.clone().nth(turn % n) {
            offer(tx, request);
        }
        debug!(%cluster, "asked an agent for another data connection");
    }
}

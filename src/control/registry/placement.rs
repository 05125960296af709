//! Which worker holds each idle data connection: the fewest idle of that host first (or a worker
//! waiting for one), the donor when a worker starves, and moves between workers.

use super::*;

impl Registry {
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
}

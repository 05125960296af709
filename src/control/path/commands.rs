//! Commands from the server handle applied on the control path: a reloaded configuration's
//! clusters, and the admin endpoint's host weight and drain.

use super::*;

impl Control {
    pub(super) fn apply_reload(
        &self,
        clusters: &[crate::config::ClusterConfig],
        removed: &[String],
        stop_frontends: &[String],
        listeners: crate::rt::FrontendSockets,
    ) {
        let stop: Vec<Arc<str>> = stop_frontends
            .iter()
            .map(|s| Arc::from(s.as_str()))
            .collect();
        for (w, add) in listeners.into_iter().enumerate() {
            if let Some(tx) = self.workers.get(w) {
                let _ = tx.send(WorkerMsg::Frontends {
                    stop: stop.clone(),
                    add,
                });
            }
        }
        let (close, gone_hosts) = self.registry.borrow_mut().replace_clusters(clusters);
        self.close_on_workers(close);
        for host in gone_hosts {
            // Dropping the writers ends those aside tasks' loops, which close the connections.
            self.asides.borrow_mut().remove(&host);
            self.peer_tables.host_sources.borrow_mut().forget(host);
        }
        self.publish_full();
        info!(removed = ?removed, clusters = clusters.len(), "configuration reloaded");
    }

    pub(super) fn admin_weight(
        &self,
        cluster: &str,
        host_name: &str,
        weight: Option<u32>,
    ) -> usize {
        let hosts = self.registry.borrow().find_host(cluster, host_name);
        let mut changed = false;
        for h in &hosts {
            changed |= self.registry.borrow_mut().override_weight(*h, weight);
        }
        if changed {
            info!(%cluster, %host_name, ?weight, "host weight set by admin");
            self.publish();
        }
        hosts.len()
    }

    pub(super) fn admin_drain_host(&self, cluster: &str, host_name: &str) -> usize {
        let hosts = self.registry.borrow().find_host(cluster, host_name);
        for h in &hosts {
            let close = self
                .registry
                .borrow_mut()
                .drain_host(*h)
                .unwrap_or_default();
            self.close_on_workers(close);
        }
        if !hosts.is_empty() {
            info!(%cluster, %host_name, "host drained by admin: no new sessions");
            self.publish();
        }
        hosts.len()
    }
}

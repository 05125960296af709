//! Applying what the control path publishes: a whole snapshot (at start, after a reload) builds
//! every cluster and its balancer; otherwise the worker takes its `UpdateSlot` — the host slots
//! changed since it last looked, merged latest-wins — and updates only those slots and, through
//! `Balancer::update`, each changed cluster's balancer once, then adopts the data connections
//! handed to it meanwhile. It does so when woken (an urgent change: weights, drains; a connection
//! while frontends wait), and before it leases a connection, handles a message or sweeps its idle
//! connections (`catch_up`), which is when joins and leaves matter. Frontends waiting on a changed
//! cluster look again.
//!
//! Must not hold the state borrow past this module's functions (they never await).

use std::collections::HashMap;
use std::sync::Arc;

use tracing::trace;

use super::pool::LocalCluster;
use super::Worker;
use crate::balancer::{Balancer, HostSpec};
use crate::plane::counters::{add, bump};
use crate::plane::snapshot::{HostSlot, Snapshot, SnapshotHost};

fn spec(h: &SnapshotHost) -> HostSpec {
    HostSpec {
        key: h.key,
        weight: h.weight,
    }
}

impl Worker {
    /// Applies pending changes and adopts handed connections, if any, before the worker adopts or
    /// leases a connection, handles a message or sweeps its idle connections.
    #[inline]
    pub(super) fn catch_up(&self) {
        if self.updates.has_pending() {
            self.apply_update();
        }
    }

    /// Takes everything the control path published since the last look, and applies it.
    pub(super) fn apply_update(&self) {
        let pending = self.updates.take();
        if pending.is_empty() {
            return;
        }
        let mut changed: Vec<Arc<str>> = Vec::new();
        if let Some(full) = &pending.full {
            self.apply_full(full);
            changed.extend(full.clusters.keys().cloned());
        }
        for (cluster, hosts) in pending.hosts {
            self.apply_hosts(&cluster, hosts);
            changed.push(cluster);
        }
        // After the changes: a connection's host may have joined with them.
        for conn in pending.conns {
            self.adopt_known(conn);
        }
        if let Some(at) = pending.since {
            let ns = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
            bump(&self.counters.snapshots_applied_total);
            add(&self.counters.snapshot_propagation_ns_total, ns);
            self.counters
                .snapshot_propagation_max_ns
                .fetch_max(ns, std::sync::atomic::Ordering::Relaxed);
        }
        trace!(
            worker = self.index,
            version = pending.version,
            "published changes applied"
        );
        // A host may have become leasable: frontends waiting for one look again.
        let waiters = self.waiters.borrow();
        for c in &changed {
            if let Some(n) = waiters.get(c) {
                n.notify_waiters();
            }
        }
    }

    /// Replaces every cluster by the snapshot's.
    pub(super) fn apply_full(&self, snapshot: &Snapshot) {
        let mut state = self.state.borrow_mut();
        state.clusters = snapshot
            .clusters
            .iter()
            .map(|(name, c)| {
                let specs: Vec<HostSpec> = c.hosts.iter().map(spec).collect();
                let seed = (self.index as u64) << 32 | snapshot.version;
                (
                    name.clone(),
                    LocalCluster {
                        balancer: Balancer::new(c.lb_type, &specs, seed),
                        specs,
                        snap: (**c).clone(),
                        stats: self.counters.clusters.get_or_create(name),
                    },
                )
            })
            .collect();
    }

    /// New contents of some of `cluster`'s host slots.
    fn apply_hosts(&self, cluster: &Arc<str>, hosts: HashMap<HostSlot, SnapshotHost>) {
        let mut state = self.state.borrow_mut();
        let Some(local) = state.clusters.get_mut(cluster) else {
            // Unknown here: a reload's full snapshot brings it.
            return;
        };
        let mut changed = Vec::with_capacity(hosts.len());
        for (slot, host) in hosts {
            let i = slot as usize;
            if local.snap.hosts.len() <= i {
                local.snap.hosts.resize(i + 1, SnapshotHost::vacant());
                local.specs.resize(i + 1, spec(&SnapshotHost::vacant()));
            }
            if let (Some(s), Some(h)) = (local.specs.get_mut(i), local.snap.hosts.get_mut(i)) {
                *s = spec(&host);
                *h = host;
                changed.push(i);
            }
        }
        changed.sort_unstable();
        local.balancer.update(&local.specs, &changed);
    }
}

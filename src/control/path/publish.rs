//! Publishing the registry's changes to the workers, coalesced: a change is published at once
//! when the last publication is at least `COALESCE_MS` old, else together with every change made
//! meanwhile when that interval ends. So under a storm each worker gets at most one publication
//! per interval, and no change waits longer than `COALESCE_MS`. A publication carries only the
//! changed host slots, merged into each worker's latest-wins `UpdateSlot`; a worker is woken by
//! one `WorkerMsg::Update` for a change urgent for it (a host with idle connections there that
//! became pickable or stopped being so: a weight to or from 0, a drain; a reload) and otherwise
//! takes the changes before it next adopts or leases a connection. A data connection handed
//! while a publication is due waits for it (`Control::deferred`), so it reaches its worker after
//! its host's join: no worker holds a connection of a host its balancers do not know.

use std::time::Instant;

use tracing::trace;

use super::*;

/// Shortest interval between two publications.
pub(super) const COALESCE_MS: u64 = 4;

impl Control {
    /// The registry changed: publish now, or at the end of the current interval.
    pub(super) fn publish(&self) {
        if self.flush_at.get().is_some() {
            // Already due: this change goes with it.
            return;
        }
        let interval = Duration::from_millis(COALESCE_MS);
        match self.last_flush.get() {
            Some(last) if last.elapsed() < interval => {
                let at = last + interval;
                self.flush_at.set(Some(at));
                // The propagation metrics count the wait too.
                self.first_change.set(Some(Instant::now()));
                let me = self.me.clone();
                tokio::task::spawn_local(async move {
                    tokio::time::sleep_until(at.into()).await;
                    if let Some(ctl) = me.upgrade() {
                        ctl.flush_at.set(None);
                        ctl.flush();
                    }
                });
            }
            _ => self.flush(),
        }
    }

    /// Sends every pending change to every worker, then the data connections handed meanwhile
    /// (`Control::deliver`), so each reaches its worker after its host's join.
    fn flush(&self) {
        let now = Instant::now();
        self.last_flush.set(Some(now));
        let since = self.first_change.take().unwrap_or(now);
        let changes = self.registry.borrow_mut().take_changes();
        trace!(
            version = changes.as_ref().map(|c| c.version),
            deferred = self.deferred.borrow().len(),
            "changes published"
        );
        if let Some(changes) = changes {
            for (w, (slot, tx)) in self.updates.iter().zip(&self.workers).enumerate() {
                if slot.push(&changes, changes.wake.contains(&w), since) {
                    let _ = tx.send(WorkerMsg::Update);
                }
            }
        }
        let deferred = std::mem::take(&mut *self.deferred.borrow_mut());
        for (worker, conn, owed) in deferred {
            self.deliver(worker, conn, owed);
        }
    }

    /// Sends the whole snapshot (after a reload changed clusters), superseding pending changes.
    pub(super) fn publish_full(&self) {
        let now = Instant::now();
        self.last_flush.set(Some(now));
        let snapshot = Arc::new(self.registry.borrow_mut().snapshot());
        for (slot, tx) in self.updates.iter().zip(&self.workers) {
            if slot.push_full(snapshot.clone(), now) {
                let _ = tx.send(WorkerMsg::Update);
            }
        }
    }
}

//! A worker's reports to the control path (`plane::WorkerEvent`), in order.
//!
//! Leases and returns of data connections are batched: a framed session would otherwise wake the
//! control thread twice (a lease, a return) for two counter updates, which at thousands of short
//! sessions per second is most of that thread's work. They are sent together, as one message
//! (`WorkerEvent::Batch`, so a batch wakes the control thread once), at most `BATCH_INTERVAL`
//! after the first of them, or at once when the batch is full; every other event (a close,
//! starvation, a donation) is sent at once, in the same message as whatever is batched, so the
//! control path sees every event in the order the worker made them. The registry's idle counts and
//! session counts lag by at most the interval; leasing never waits for them (the worker owns its
//! pools), and a lagging count only makes a donation fail, which the control path answers with a
//! pool request. It must not hold events any longer than that, nor reorder them.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::plane::WorkerEvent;

/// Longest a lease or return waits for its batch to be sent.
pub(super) const BATCH_INTERVAL: Duration = Duration::from_millis(5);
/// A batch this large is sent at once.
const MAX_BATCH: usize = 256;

pub(super) struct Reports {
    tx: mpsc::UnboundedSender<WorkerEvent>,
    batch: RefCell<Vec<WorkerEvent>>,
    /// A flush is scheduled.
    armed: Cell<bool>,
}

impl Reports {
    pub(super) fn new(tx: mpsc::UnboundedSender<WorkerEvent>) -> Rc<Self> {
        Rc::new(Self {
            tx,
            batch: RefCell::new(Vec::new()),
            armed: Cell::new(false),
        })
    }

    /// Sends `event` now, after the batched ones (in the same message).
    pub(super) fn now(&self, event: WorkerEvent) {
        self.batch.borrow_mut().push(event);
        self.flush();
    }

    /// Sends a lease or return within `BATCH_INTERVAL`, with the others made meanwhile.
    pub(super) fn soon(self: &Rc<Self>, event: WorkerEvent) {
        let full = {
            let mut batch = self.batch.borrow_mut();
            batch.push(event);
            batch.len() >= MAX_BATCH
        };
        if full {
            self.flush();
        } else if !self.armed.replace(true) {
            let me = self.clone();
            crate::rt::spawn_local(async move {
                crate::rt::time::sleep(BATCH_INTERVAL).await;
                me.armed.set(false);
                me.flush();
            });
        }
    }

    fn flush(&self) {
        let mut batch = std::mem::take(&mut *self.batch.borrow_mut());
        // One message per batch: sent one by one, each event could wake the control thread
        // again just after it went back to sleep.
        let event = if batch.len() > 1 {
            WorkerEvent::Batch(batch)
        } else {
            match batch.pop() {
                Some(event) => event,
                None => return,
            }
        };
        // The control path gone means the process is stopping: nothing to tell.
        let _ = self.tx.send(event);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ids(event: &WorkerEvent) -> Vec<u64> {
        match event {
            WorkerEvent::Leased { conn_id } | WorkerEvent::Closed { conn_id } => vec![*conn_id],
            WorkerEvent::Returned { conn_id, .. } => vec![*conn_id],
            WorkerEvent::Batch(events) => events.iter().flat_map(ids).collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_batch_and_the_event_that_flushes_it_travel_as_one_message_in_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reports = Reports::new(tx);
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                reports.soon(WorkerEvent::Leased { conn_id: 1 });
                reports.soon(WorkerEvent::Returned {
                    conn_id: 1,
                    worker: 0,
                });
                reports.now(WorkerEvent::Closed { conn_id: 2 });
            })
            .await;
        let message = rx.try_recv().unwrap();
        assert!(matches!(message, WorkerEvent::Batch(_)));
        assert_eq!(ids(&message), vec![1, 1, 2]);
        assert!(rx.try_recv().is_err(), "one message for the batch");
        // A lone event is sent as itself, not wrapped.
        reports.now(WorkerEvent::Closed { conn_id: 3 });
        assert!(matches!(
            rx.try_recv().unwrap(),
            WorkerEvent::Closed { conn_id: 3 }
        ));
    }
}

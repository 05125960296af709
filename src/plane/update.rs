//! What the control path publishes to a worker, latest-wins: per worker one [`UpdateSlot`]
//! holding the changes the worker has not taken yet, merged by host slot, so a storm of changes
//! costs a slow worker one map entry per changed slot, never a queue of snapshots. The worker
//! takes everything at once.
//!
//! When to take: a change *urgent* for a worker — a host with idle connections on that worker
//! becoming pickable or ceasing to be (a weight to or from 0, a drain), or a whole snapshot —
//! wakes it with one `WorkerMsg::Update` (at most one outstanding per worker). Anything else
//! waits: no worker can pick a host before one of its connections is idle there, so workers take
//! pending changes before they adopt a connection or lease one ([`UpdateSlot::has_pending`], one
//! atomic load). A join wakes no worker: its data connection waits in the slot too (`push_conn`)
//! and is adopted with the changes, unless frontends wait on that worker (it says so,
//! `set_frontends_waiting`) or the control path owes the worker a connection (then it is sent
//! as a `WorkerMsg::DataConn`). A weight to or from 0 wakes only the workers holding that host's
//! idle connections; a weight between two positive values none (it is applied before the next
//! lease). Workers also take the slot before every message and every heartbeat sweep, so a
//! connection waits at most one heartbeat interval for its first ping.
//!
//! Must not run anything or name a runtime; the slot's lock is held only to merge or swap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::snapshot::{HostSlot, Snapshot, SnapshotHost};
use super::HandedConn;

/// One cluster's changed host slots (a vacant host: the slot's host left).
#[derive(Debug, Default)]
pub struct ClusterChanges {
    pub hosts: Vec<(HostSlot, SnapshotHost)>,
}

/// The registry's changes since its last publication.
#[derive(Debug, Default)]
pub struct Changes {
    pub version: u64,
    /// Workers that must apply these changes soon, not only before their next adoption or
    /// lease: they hold idle connections of a host whose weight went to or from 0 or that was
    /// drained.
    pub wake: Vec<usize>,
    pub clusters: Vec<(Arc<str>, ClusterChanges)>,
}

/// What a worker takes from its slot: apply `full` (if any) first, then `hosts`.
#[derive(Debug, Default)]
pub struct Pending {
    /// A whole snapshot (after a reload): replaces the worker's clusters.
    pub full: Option<Arc<Snapshot>>,
    /// Per cluster, the newest content of each changed slot.
    pub hosts: HashMap<Arc<str>, HashMap<HostSlot, SnapshotHost>>,
    /// Version of the newest change merged in.
    pub version: u64,
    /// When the oldest urgent change merged in was published (the propagation metrics start
    /// there).
    pub since: Option<Instant>,
    /// A `WorkerMsg::Update` is on its way to the worker.
    pub woken: bool,
    /// Handshaken data connections for the worker to adopt, oldest first (after the changes:
    /// their hosts may be among them).
    pub conns: Vec<HandedConn>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.full.is_none() && self.hosts.is_empty() && self.conns.is_empty()
    }
}

#[derive(Debug, Default)]
struct SlotState {
    pending: Pending,
    /// The worker has frontends waiting for a connection: a handed connection wakes it.
    frontends_waiting: bool,
}

/// One worker's latest-wins cell.
#[derive(Debug, Default)]
pub struct UpdateSlot {
    cell: Mutex<SlotState>,
    /// `pending` is not empty (read without the lock before every lease).
    has_pending: AtomicBool,
}

impl UpdateSlot {
    pub fn new() -> Arc<UpdateSlot> {
        Arc::new(UpdateSlot::default())
    }

    fn with_cell<R>(&self, f: impl FnOnce(&mut SlotState) -> R) -> R {
        let mut guard = match self.cell.lock() {
            Ok(g) => g,
            // A panic while merging leaves a map, not a broken invariant: go on.
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Pending) -> R) -> R {
        self.with_cell(|c| f(&mut c.pending))
    }

    /// A handshaken data connection for the worker; true when the worker must be woken for it
    /// (frontends wait there, and no wake-up is on its way already).
    pub fn push_conn(&self, conn: HandedConn) -> bool {
        self.with_cell(|c| {
            c.pending.conns.push(conn);
            self.has_pending.store(true, Ordering::Release);
            c.frontends_waiting && !std::mem::replace(&mut c.pending.woken, true)
        })
    }

    /// The worker says whether frontends wait on it. Under the slot's lock, like `push_conn`:
    /// a connection pushed before `true` is set is seen by the worker's next look
    /// (`has_pending`), and one pushed after wakes it.
    pub fn set_frontends_waiting(&self, waiting: bool) {
        self.with_cell(|c| c.frontends_waiting = waiting);
    }

    /// Merges `changes`; true when the worker must be woken (`urgent` for it, and no wake-up is
    /// on its way already).
    pub fn push(&self, changes: &Changes, urgent: bool, at: Instant) -> bool {
        self.with(|p| {
            for (cluster, c) in &changes.clusters {
                let slots = p.hosts.entry(cluster.clone()).or_default();
                for (slot, host) in &c.hosts {
                    slots.insert(*slot, host.clone());
                }
            }
            p.version = changes.version;
            self.has_pending.store(!p.is_empty(), Ordering::Release);
            urgent && !p.is_empty() && p.wake(at)
        })
    }

    /// A whole snapshot, superseding every change not yet taken; true when the worker must be
    /// woken.
    pub fn push_full(&self, snapshot: Arc<Snapshot>, at: Instant) -> bool {
        self.with(|p| {
            p.version = snapshot.version;
            p.full = Some(snapshot);
            p.hosts.clear();
            self.has_pending.store(true, Ordering::Release);
            p.wake(at)
        })
    }

    /// Whether anything waits to be taken (may lag a concurrent push by a moment).
    #[inline]
    pub fn has_pending(&self) -> bool {
        self.has_pending.load(Ordering::Acquire)
    }

    /// Everything pending, leaving the slot empty.
    pub fn take(&self) -> Pending {
        self.with(|p| {
            self.has_pending.store(false, Ordering::Release);
            std::mem::take(p)
        })
    }
}

impl Pending {
    /// Records an urgent change at `at`; true when no wake-up is on its way yet.
    fn wake(&mut self, at: Instant) -> bool {
        self.since.get_or_insert(at);
        !std::mem::replace(&mut self.woken, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: u64, weight: u32) -> SnapshotHost {
        SnapshotHost {
            id,
            key: id,
            weight,
            host_name: Arc::from("h"),
        }
    }

    fn changes(version: u64, slot: HostSlot, h: SnapshotHost) -> Changes {
        Changes {
            version,
            wake: vec![0],
            clusters: vec![(
                Arc::from("c"),
                ClusterChanges {
                    hosts: vec![(slot, h)],
                },
            )],
        }
    }

    #[test]
    fn changes_merge_by_slot_and_wake_once() {
        let slot = UpdateSlot::new();
        let t = Instant::now();
        assert!(slot.push(&changes(1, 0, host(1, 10)), true, t));
        assert!(!slot.push(&changes(2, 0, host(1, 20)), true, t));
        assert!(!slot.push(&changes(3, 1, host(2, 5)), true, t));
        let p = slot.take();
        assert_eq!(p.version, 3);
        assert_eq!(p.since, Some(t));
        let c = &p.hosts[&Arc::<str>::from("c")];
        assert_eq!(c.len(), 2);
        assert_eq!(c[&0].weight, 20);
        assert!(slot.take().is_empty());
        assert!(!slot.has_pending());
        assert!(slot.push(&changes(4, 0, SnapshotHost::vacant()), true, t));
    }

    #[test]
    fn joins_and_leaves_wait_without_waking_the_worker() {
        let slot = UpdateSlot::new();
        let t = Instant::now();
        let join = changes(1, 0, host(1, 10));
        assert!(!slot.push(&join, false, t));
        assert!(slot.has_pending());
        // An urgent change after it wakes the worker once, and starts the propagation clock.
        let later = t + std::time::Duration::from_millis(1);
        assert!(slot.push(&changes(2, 1, host(2, 5)), true, later));
        assert!(!slot.push(&changes(3, 1, host(2, 6)), true, later));
        let p = slot.take();
        assert_eq!(p.since, Some(later));
        assert_eq!(p.hosts[&Arc::<str>::from("c")].len(), 2);
        assert!(!slot.has_pending());
        // Non-urgent alone: no propagation sample.
        assert!(!slot.push(&join, false, t));
        assert_eq!(slot.take().since, None);
    }

    fn handed(conn_id: u64) -> (HandedConn, std::net::TcpListener) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let conn = HandedConn {
            conn_id,
            host_id: 1,
            cluster: Arc::from("c"),
            stream,
            legacy: false,
            peer_extension_version: 0,
            pending: Vec::new(),
            outstanding_pings: 0,
            tls: None,
        };
        (conn, listener)
    }

    #[test]
    fn a_handed_connection_wakes_the_worker_only_while_frontends_wait_there() {
        let slot = UpdateSlot::new();
        let (a, _la) = handed(1);
        assert!(!slot.push_conn(a));
        assert!(slot.has_pending());
        slot.set_frontends_waiting(true);
        let (b, _lb) = handed(2);
        assert!(slot.push_conn(b));
        // One wake-up on its way covers the next.
        let (c, _lc) = handed(3);
        assert!(!slot.push_conn(c));
        let p = slot.take();
        let ids: Vec<u64> = p.conns.iter().map(|c| c.conn_id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert!(!slot.has_pending());
        // The waiting flag outlives a take; cleared, connections wait quietly again.
        let (d, _ld) = handed(4);
        assert!(slot.push_conn(d));
        slot.take();
        slot.set_frontends_waiting(false);
        let (e, _le) = handed(5);
        assert!(!slot.push_conn(e));
    }

    #[test]
    fn a_full_snapshot_supersedes_pending_changes() {
        let slot = UpdateSlot::new();
        let t = Instant::now();
        assert!(slot.push(&changes(1, 0, host(1, 10)), true, t));
        let (conn, _listener) = handed(7);
        assert!(!slot.push_conn(conn));
        assert!(!slot.push_full(Arc::new(Snapshot::default()), t));
        assert!(!slot.push(&changes(3, 2, host(3, 1)), true, t));
        let p = slot.take();
        assert!(p.full.is_some());
        // A handed connection is never superseded: it is adopted after the snapshot.
        assert_eq!(p.conns.len(), 1);
        assert_eq!(p.hosts[&Arc::<str>::from("c")].len(), 1);
    }
}

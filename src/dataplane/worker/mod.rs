//! One worker: its snapshot, its idle pools, its frontend listeners and its sessions.
//!
//! All state is thread-local (`Rc`/`RefCell`); the only cross-thread traffic is the message
//! channel from the control path and the event channel back to it (`crate::plane`). The parts:
//! `pool` (idle connections per host, leasing order, donation, heartbeat sweep), `lease`
//! (waiting for a connection, asking the control path for more, `max_sessions`), `accept`
//! (frontend accept loops), `proxy` (a frontend's PROXY header, read before its session),
//! `reports` (events to the control path, leases and returns batched),
//! `session` (one frontend's session from lease to close), `update` (applying the control
//! path's snapshots and host changes to clusters and balancers), `udp` (a UDP cluster's
//! frontends and their flows).
//!
//! Never hold a `RefCell` borrow of the worker's state across an `.await`; never drop an io_uring
//! operation in flight (end it by shutting its socket down); never block on a peer.

mod accept;
mod framed;
mod lease;
mod pool;
mod proxy;
mod reports;
mod session;
mod udp;
mod update;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use self::accept::AcceptLoop;
use self::pool::State;
use self::reports::Reports;
use super::idle::IdleConn;
use super::pump::Pools;
use crate::plane::counters::WorkerCounters;
use crate::plane::snapshot::Snapshot;
use crate::plane::update::UpdateSlot;
use crate::plane::{HandedConn, WorkerEvent, WorkerMsg};
use crate::rt::Backend;

/// Everything a worker needs to start.
pub struct WorkerSetup {
    pub index: usize,
    pub backend: Backend,
    /// Its own SO_REUSEPORT listener per cluster frontend.
    pub frontends: Vec<crate::rt::FrontendSocket>,
    pub snapshot: Arc<Snapshot>,
    /// Its latest-wins cell of published changes (`WorkerMsg::Update` says when to look).
    pub updates: Arc<UpdateSlot>,
    pub rx: mpsc::UnboundedReceiver<WorkerMsg>,
    pub events: mpsc::UnboundedSender<WorkerEvent>,
    pub heartbeat_interval: Duration,
    pub heartbeat_max_missed: u32,
    /// Idle bound of legacy (MOSN) data connections (`None`: none).
    pub legacy_idle_timeout: Option<Duration>,
    pub max_frame_payload_bytes: usize,
    /// Size of a busy session direction's buffer.
    pub pump_buffer_bytes: usize,
    /// Pipe size for busy plaintext directions (0: no splice).
    pub splice_pipe_bytes: usize,
    pub counters: Arc<WorkerCounters>,
}

struct Worker {
    index: usize,
    updates: Arc<UpdateSlot>,
    backend: Backend,
    /// Reports to the control path (leases and returns batched, `reports`).
    events: Rc<Reports>,
    counters: Arc<WorkerCounters>,
    heartbeat_interval: Duration,
    heartbeat_max_missed: u32,
    legacy_idle_timeout: Option<Duration>,
    max_frame_payload_bytes: usize,
    buffers: Pools,
    state: RefCell<State>,
    /// Frontends waiting for an idle connection, per cluster.
    waiters: RefCell<HashMap<Arc<str>, Rc<Notify>>>,
    /// Frontends waiting for a connection, per cluster.
    waiting: RefCell<HashMap<Arc<str>, u32>>,
    /// Their sum (the update slot is told when it leaves or reaches 0).
    waiting_total: Cell<u32>,
    /// False once draining: accept loops end.
    accepting: Cell<bool>,
    /// Clusters for which a donation was asked and has not arrived yet.
    starving: RefCell<std::collections::HashSet<Arc<str>>>,
    /// Data connections leased to a session here; true once named for closing (a graceful
    /// close): the connection is closed when its session ends, not pooled again.
    leased: RefCell<HashMap<crate::plane::snapshot::ConnId, bool>>,
    next_session: Cell<u64>,
}

/// Runs a worker until it is told to shut down or the control path goes away.
pub async fn run(setup: WorkerSetup) {
    let WorkerSetup {
        index,
        backend,
        frontends,
        snapshot,
        updates,
        mut rx,
        events,
        heartbeat_interval,
        heartbeat_max_missed,
        legacy_idle_timeout,
        max_frame_payload_bytes,
        pump_buffer_bytes,
        splice_pipe_bytes,
        counters,
    } = setup;
    let worker = Rc::new(Worker {
        index,
        updates,
        backend,
        events: Reports::new(events),
        counters,
        heartbeat_interval,
        heartbeat_max_missed,
        legacy_idle_timeout,
        max_frame_payload_bytes,
        buffers: Pools::new(pump_buffer_bytes, splice_pipe_bytes),
        state: RefCell::new(State::default()),
        waiters: RefCell::new(HashMap::new()),
        accepting: Cell::new(true),
        waiting: RefCell::new(HashMap::new()),
        waiting_total: Cell::new(0),
        starving: RefCell::new(Default::default()),
        leased: RefCell::new(HashMap::new()),
        next_session: Cell::new(1),
    });
    worker.apply_full(&snapshot);
    // Accept loops, and the listener fds a drain or reload shuts down to end them.
    let mut accepting: Vec<AcceptLoop> = Vec::new();
    worker.start_accepting(frontends, &mut accepting);
    crate::rt::spawn_local(worker.clone().heartbeat_loop());
    while let Some(msg) = rx.recv().await {
        // Connections handed without a wake-up come first: a message may name them.
        worker.catch_up();
        match msg {
            WorkerMsg::Update => worker.apply_update(),
            WorkerMsg::DataConn(conn) => worker.adopt(conn),
            WorkerMsg::CloseConns(ids) => worker.close_idle(&ids),
            WorkerMsg::StopAccepting => {
                worker.accepting.set(false);
                for a in accepting.drain(..) {
                    a.stop();
                }
            }
            WorkerMsg::Frontends { stop, add } => {
                let (gone, kept): (Vec<AcceptLoop>, Vec<AcceptLoop>) =
                    accepting.drain(..).partition(|a| stop.contains(&a.cluster));
                accepting = kept;
                for a in gone {
                    a.stop();
                }
                worker.start_accepting(add, &mut accepting);
            }
            WorkerMsg::Donate {
                cluster,
                host_id,
                to,
            } => worker.donate(&cluster, host_id, to),
            WorkerMsg::Shutdown => break,
        }
    }
    worker.catch_up();
    worker.close_all_idle();
}

impl Worker {
    fn adopt(&self, handed: HandedConn) {
        // Its host may have joined since the worker last looked.
        self.catch_up();
        self.adopt_known(handed);
    }

    /// Adopts a connection whose host's changes the worker has taken.
    fn adopt_known(&self, handed: HandedConn) {
        // Usually empty after the handshake; its read buffer's capacity must not stay with
        // every idle connection.
        let mut pending = handed.pending;
        pending.shrink_to_fit();
        let conn = IdleConn::new(
            handed.conn_id,
            handed.host_id,
            handed.stream,
            handed.legacy,
            pending,
            handed.outstanding_pings,
            handed.tls,
        )
        .with_extension_version(handed.peer_extension_version);
        self.state
            .borrow_mut()
            .pools
            .entry(handed.host_id)
            .or_default()
            .idle
            .push_back(conn);
        self.starving.borrow_mut().remove(&handed.cluster);
        if let Some(n) = self.waiters.borrow().get(&handed.cluster) {
            n.notify_one();
        }
    }
}

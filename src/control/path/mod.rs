//! The control path's event loop: accept agents, keep the registry, publish snapshots, answer
//! workers' events and the server handle's commands. The parts: `join_now` (a plaintext data
//! connection whose init is waiting at accept, joined without a task), `tunnel` (every other
//! tunnel connection's handshake task and the hand-off to a worker), `join` (an init's
//! authentication, registration and answer, for both), `admission` and `peer_limits` (the
//! bounds), `aside` (an aside connection's frames), `parked` (MOSN's silent aside),
//! `pool_requests` (who is owed connections), `commands` (admin and reload requests), `publish`
//! (registry changes to the workers, coalesced).
//!
//! Single-threaded: the registry is owned here and changed only on this thread. Never hold a
//! `RefCell` borrow across an `.await`; never wait on a peer in the loop itself (the inline join
//! only reads and writes without waiting; whatever would wait is a task).

mod admission;
mod aside;
mod commands;
#[cfg(test)]
mod deferral_tests;
mod join;
mod join_now;
#[cfg(test)]
mod join_now_tests;
mod parked;
mod peer_limits;
mod pool_requests;
mod publish;
#[cfg(test)]
mod test_control;
mod tunnel;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::auth;
use super::handshake::{read_first_from, First, HandshakeError};
use super::registry::{HostIdentity, RegisterError, Registry};
use super::stats::{ControlStats, HandshakeOutcome};
use crate::config::agent::MAX_WEIGHT;
use crate::config::ServerConfig;
use crate::plane::snapshot::{ConnId, HostId};
use crate::plane::{HandedConn, WorkerEvent, WorkerMsg};
use crate::protocol::{
    self, ConnectionInitResponse, Decoded, Frame, GracefulCloseOnewayRequest, Ping, Role, Status,
};
use crate::tls::Channel;

pub use super::api::ControlCmd;
use aside::send_frame;

/// How often a draining control path checks whether sessions are done.
const DRAIN_POLL_MS: u64 = 20;

/// Everything the control path needs to start.
pub struct ControlSetup {
    pub listener: std::net::TcpListener,
    pub config: ServerConfig,
    pub registry: Registry,
    pub workers: Vec<mpsc::UnboundedSender<WorkerMsg>>,
    /// Each worker's latest-wins cell of published changes (same order as `workers`).
    pub updates: Vec<Arc<crate::plane::update::UpdateSlot>>,
    pub events: mpsc::UnboundedReceiver<WorkerEvent>,
    pub commands: mpsc::UnboundedReceiver<ControlCmd>,
    pub stats: Arc<ControlStats>,
    /// The workers' counters (a drain waits for their active sessions to end).
    pub counters: Vec<Arc<crate::plane::counters::WorkerCounters>>,
    /// The tunnel listener's TLS config (`tunnel_listener.tls_context`): each handshake takes
    /// the current one; a reload may replace it (certificate rotation).
    pub tls: Option<Arc<crate::tls::Rotating<crate::tls::ServerConfig>>>,
}

/// An aside connection's id and the queue of frames its task writes. Boxed: the channel
/// allocates its slots 32 at a time, and 32 unboxed frames would cost every agent kilobytes for
/// the few frames an aside connection ever carries.
pub(super) type AsideWriter = (ConnId, mpsc::Sender<Box<Frame>>);

/// Frames queued at most for one aside connection. A full queue means the agent stopped
/// reading: further frames are dropped (counted in the log) and the connection closes at its
/// write timeout.
const ASIDE_QUEUE_FRAMES: usize = 64;

/// Queues `frame` for an aside connection without waiting; false when its queue is full or
/// its task is gone.
pub(super) fn offer(tx: &mpsc::Sender<Box<Frame>>, frame: Frame) -> bool {
    match tx.try_send(Box::new(frame)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(frame)) => {
            crate::log_limited!(warn!(
                frame = frame.flag().name(),
                "aside connection's queue is full (the agent is not reading); frame dropped"
            ));
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

struct Control {
    /// Itself, for the coalesced publication's timer task.
    me: Weak<Control>,
    config: ServerConfig,
    registry: RefCell<Registry>,
    workers: Vec<mpsc::UnboundedSender<WorkerMsg>>,
    updates: Vec<Arc<crate::plane::update::UpdateSlot>>,
    /// When changes were last published, and when the next publication is due (if one is).
    last_flush: Cell<Option<std::time::Instant>>,
    flush_at: Cell<Option<std::time::Instant>>,
    /// The first change waiting for the due publication.
    first_change: Cell<Option<std::time::Instant>>,
    /// Data connections handed while a publication was due, for their workers once it is out
    /// (worker, connection, owed to its waiting frontends); at most one interval's handshakes.
    deferred: RefCell<Vec<(usize, HandedConn, bool)>>,
    handshakes: Arc<tokio::sync::Semaphore>,
    /// Handshakes in progress per source IP (`max_handshakes_per_ip`).
    handshakes_per_ip: admission::IpCounts,
    /// Hosts and aside connections per source IP and per host (`peer_limits`).
    peer_tables: peer_limits::PeerTables,
    stats: Arc<ControlStats>,
    /// Writers of the aside connections, per host.
    asides: RefCell<HashMap<HostId, Vec<AsideWriter>>>,
    /// Rotates pool requests over a cluster's hosts.
    pool_request_turn: std::cell::Cell<usize>,
    /// Per cluster, workers owed a connection by a pool request (and when it was asked), in
    /// order asked.
    wanted: RefCell<HashMap<String, std::collections::VecDeque<(usize, tokio::time::Instant)>>>,
    /// Accepted `hmac` credentials, refused if seen again.
    replay: RefCell<super::replay::ReplayCache>,
    /// TLS on tunnel connections.
    tls: Option<Arc<crate::tls::Rotating<crate::tls::ServerConfig>>>,
    /// MOSN aside connections parked (or held), per source IP.
    parked: parked::ParkedTable,
}

/// Most worker events handled in one turn of the control loop.
const EVENTS_PER_TURN: usize = 512;

/// Runs until told to shut down.
pub async fn run(setup: ControlSetup) {
    let ControlSetup {
        listener,
        config,
        registry,
        workers,
        updates,
        mut events,
        mut commands,
        stats,
        counters,
        tls,
    } = setup;
    let mut listener = match crate::rt::ReadyListener::from_std(listener) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(error = %e, "cannot adopt tunnel listener");
            return;
        }
    };
    let handshake_slots = config.tunnel_listener.max_concurrent_handshakes;
    let replay_entries = config.tunnel_listener.hmac_replay_cache_entries;
    let ctl = Rc::new_cyclic(|me| Control {
        me: me.clone(),
        config,
        registry: RefCell::new(registry),
        workers,
        updates,
        last_flush: Cell::new(None),
        flush_at: Cell::new(None),
        first_change: Cell::new(None),
        deferred: RefCell::new(Vec::new()),
        handshakes: Arc::new(tokio::sync::Semaphore::new(handshake_slots)),
        handshakes_per_ip: Rc::default(),
        peer_tables: Default::default(),
        stats,
        asides: RefCell::new(HashMap::new()),
        pool_request_turn: std::cell::Cell::new(0),
        wanted: RefCell::new(HashMap::new()),
        replay: RefCell::new(super::replay::ReplayCache::new(replay_entries)),
        tls,
        parked: Rc::default(),
    });
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    // Created once: a timer re-created each iteration would be starved by any event arriving
    // more often than it fires, and the drain would never end.
    let mut drain_poll = tokio::time::interval(Duration::from_millis(DRAIN_POLL_MS));
    drain_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            accepted = async { match &listener { Some(l) => l.accept().await, None => std::future::pending().await } } => match accepted {
                Ok((stream, peer)) => {
                    if let Some(admission) = ctl.admit(peer) {
                        ctl.accepted(stream, peer, admission);
                    }
                }
                Err(e) => {
                    crate::log_limited!(warn!(error = %e, "tunnel accept failed"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(event) = events.recv() => {
                ctl.on_worker_event(event);
                // A worker's batch of leases and returns arrives together: handled in one turn
                // of this loop (bounded, so accepts and commands still get their turns).
                for _ in 1..EVENTS_PER_TURN {
                    match events.try_recv() {
                        Ok(event) => ctl.on_worker_event(event),
                        Err(_) => break,
                    }
                }
            }
            cmd = commands.recv() => match cmd {
                Some(ControlCmd::Hosts { cluster, reply }) => {
                    let _ = reply.send(ctl.registry.borrow().hosts(&cluster));
                }
                Some(ControlCmd::Clusters { reply }) => {
                    let _ = reply.send(ctl.registry.borrow().clusters());
                }
                Some(ControlCmd::SetWeight { cluster, host_name, weight, reply }) => {
                    let _ = reply.send(ctl.admin_weight(&cluster, &host_name, weight));
                }
                Some(ControlCmd::DrainHost { cluster, host_name, reply }) => {
                    let _ = reply.send(ctl.admin_drain_host(&cluster, &host_name));
                }
                Some(ControlCmd::Drain { grace_ms }) => {
                    if drain_deadline.is_none() {
                        info!(grace_ms, "draining: no new agents or frontends; waiting for sessions to finish");
                        listener = None;
                        for w in &ctl.workers {
                            let _ = w.send(WorkerMsg::StopAccepting);
                        }
                        ctl.broadcast(&Frame::Drain(crate::protocol::Drain { grace_ms }));
                        drain_deadline = Some(tokio::time::Instant::now() + Duration::from_millis(grace_ms));
                    }
                }
                Some(ControlCmd::Reload { clusters, removed, stop_frontends, listeners, reply }) => {
                    ctl.apply_reload(&clusters, &removed, &stop_frontends, listeners);
                    let _ = reply.send(());
                }
                Some(ControlCmd::Shutdown) | None => break,
            },
            _ = drain_poll.tick(), if drain_deadline.is_some() => {
                let active = crate::plane::counters::CounterTotals::sum(counters.iter().map(|c| &**c)).active_sessions;
                if active == 0 {
                    info!("drain complete: every session finished");
                    break;
                }
                if drain_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    warn!(sessions = active, "drain grace time is up; closing the remaining sessions");
                    break;
                }
            }
        }
    }
    for w in &ctl.workers {
        let _ = w.send(WorkerMsg::Shutdown);
    }
}

impl Control {
    /// Sends `frame` on every aside connection.
    pub(super) fn broadcast(&self, frame: &Frame) {
        for conns in self.asides.borrow().values() {
            for (_, tx) in conns {
                offer(tx, frame.clone());
            }
        }
    }

    /// Closes idle connections on the workers holding them.
    pub(super) fn close_on_workers(&self, close: Vec<(usize, ConnId)>) {
        let mut by_worker: HashMap<usize, Vec<ConnId>> = HashMap::new();
        for (w, id) in close {
            by_worker.entry(w).or_default().push(id);
        }
        for (w, ids) in by_worker {
            if let Some(tx) = self.workers.get(w) {
                let _ = tx.send(WorkerMsg::CloseConns(ids));
            }
        }
    }

    pub(super) fn on_worker_event(&self, event: WorkerEvent) {
        match event {
            WorkerEvent::Batch(events) => {
                for event in events {
                    self.on_worker_event(event);
                }
            }
            WorkerEvent::Leased { conn_id } => self.registry.borrow_mut().conn_leased(conn_id),
            WorkerEvent::Returned { conn_id, worker } => {
                if !self.registry.borrow_mut().conn_returned(conn_id, worker) {
                    if let Some(tx) = self.workers.get(worker) {
                        let _ = tx.send(WorkerMsg::CloseConns(vec![conn_id]));
                    }
                }
            }
            WorkerEvent::Closed { conn_id } => self.conn_closed(conn_id),
            WorkerEvent::Starving {
                worker,
                cluster,
                waiting,
            } => {
                let donor = self.registry.borrow().donor_for(&cluster, worker);
                match donor.and_then(|(host_id, from)| Some((host_id, self.workers.get(from)?))) {
                    Some((host_id, tx)) => {
                        let _ = tx.send(WorkerMsg::Donate {
                            cluster,
                            host_id,
                            to: worker,
                        });
                    }
                    None => {
                        let more = self.owe(&cluster, worker, waiting);
                        if more > 0 {
                            self.request_pool(&cluster, more);
                        }
                    }
                }
            }
            WorkerEvent::DonateFailed { to, cluster } => {
                // The registry's idle counts lagged; ask an agent instead.
                debug!(worker = to, %cluster, "donation found nothing; asking for a new connection");
                if self.owe(&cluster, to, 1) > 0 {
                    self.request_pool(&cluster, 1);
                }
            }
            WorkerEvent::Donated { to, conn } => {
                let conn_id = conn.conn_id;
                if self.registry.borrow().is_closing(conn_id) {
                    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                    self.conn_closed(conn_id);
                    return;
                }
                self.registry.borrow_mut().reassign(conn_id, to);
                let sent = self
                    .workers
                    .get(to)
                    .map(|tx| tx.send(WorkerMsg::DataConn(conn)));
                if !matches!(sent, Some(Ok(()))) {
                    self.conn_closed(conn_id);
                }
            }
        }
    }

    pub(super) fn conn_closed(&self, conn_id: ConnId) {
        let host = self.registry.borrow().host_of(conn_id);
        let host_removed = self.registry.borrow_mut().conn_closed(conn_id);
        if host_removed {
            if let Some(host) = host {
                self.peer_tables.host_sources.borrow_mut().forget(host);
            }
            self.publish();
        }
    }
}

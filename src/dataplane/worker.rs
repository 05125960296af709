//! One worker: its snapshot, its idle pools, its frontend listeners and its sessions.
//!
//! All state is thread-local (`Rc`/`RefCell`); the only cross-thread traffic is the message
//! channel from the control path and the event channel back to it.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{debug, trace, warn, Instrument};

use super::idle::{IdleConn, IdleError};
use super::pump::{pump_conns, pump_tls, Pools};
use crate::balancer::{Balancer, HostSpec, HostState};
use crate::plane::counters::{add, bump, drop_one, ClusterCounters, SessionSetup, WorkerCounters};
use crate::plane::snapshot::{ClusterSnapshot, HostId, Snapshot, SnapshotHost};
use crate::plane::{HandedConn, WorkerEvent, WorkerMsg};
use crate::protocol::{self, Decoded, Frame, SessionStart};
use crate::rt::Backend;
use crate::rt::Conn;

/// While frontends wait for a connection, how often the worker asks the control path again.
const REASK_MS: u64 = 50;

/// Everything a worker needs to start.
pub struct WorkerSetup {
    pub index: usize,
    pub backend: Backend,
    /// Its own SO_REUSEPORT listener per cluster frontend.
    pub frontends: Vec<(Arc<str>, std::net::TcpListener)>,
    pub snapshot: Arc<Snapshot>,
    pub rx: mpsc::UnboundedReceiver<WorkerMsg>,
    pub events: mpsc::UnboundedSender<WorkerEvent>,
    pub heartbeat_interval: Duration,
    pub heartbeat_max_missed: u32,
    pub max_frame_payload_bytes: usize,
    /// Size of a busy session direction's buffer.
    pub pump_buffer_bytes: usize,
    /// Pipe size for busy plaintext directions (0: no splice).
    pub splice_pipe_bytes: usize,
    pub counters: Arc<WorkerCounters>,
}

struct LocalCluster {
    snap: ClusterSnapshot,
    balancer: Balancer,
    stats: Arc<ClusterCounters>,
}

#[derive(Default)]
struct HostPool {
    idle: VecDeque<IdleConn>,
    active: u32,
}

#[derive(Default)]
struct State {
    clusters: HashMap<Arc<str>, LocalCluster>,
    pools: HashMap<HostId, HostPool>,
}

/// The balancer's view of this worker's pools.
struct PoolView<'a> {
    hosts: &'a [SnapshotHost],
    pools: &'a HashMap<HostId, HostPool>,
}

impl HostState for PoolView<'_> {
    fn is_available(&self, index: usize) -> bool {
        self.hosts
            .get(index)
            .and_then(|h| self.pools.get(&h.id))
            .is_some_and(|p| !p.idle.is_empty())
    }

    fn active_sessions(&self, index: usize) -> u32 {
        self.hosts
            .get(index)
            .and_then(|h| self.pools.get(&h.id))
            .map_or(0, |p| p.active)
    }
}

struct Worker {
    index: usize,
    backend: Backend,
    events: mpsc::UnboundedSender<WorkerEvent>,
    counters: Arc<WorkerCounters>,
    heartbeat_interval: Duration,
    heartbeat_max_missed: u32,
    max_frame_payload_bytes: usize,
    buffers: Pools,
    state: RefCell<State>,
    /// Frontends waiting for an idle connection, per cluster.
    waiters: RefCell<HashMap<Arc<str>, Rc<Notify>>>,
    /// Frontends waiting for a connection, per cluster.
    waiting: RefCell<HashMap<Arc<str>, u32>>,
    /// False once draining: accept loops end.
    accepting: Cell<bool>,
    /// Clusters for which a donation was asked and has not arrived yet.
    starving: RefCell<std::collections::HashSet<Arc<str>>>,
    next_session: Cell<u64>,
}

/// Runs a worker until it is told to shut down or the control path goes away.
pub async fn run(setup: WorkerSetup) {
    let WorkerSetup {
        index,
        backend,
        frontends,
        snapshot,
        mut rx,
        events,
        heartbeat_interval,
        heartbeat_max_missed,
        max_frame_payload_bytes,
        pump_buffer_bytes,
        splice_pipe_bytes,
        counters,
    } = setup;
    let worker = Rc::new(Worker {
        index,
        backend,
        events,
        counters,
        heartbeat_interval,
        heartbeat_max_missed,
        max_frame_payload_bytes,
        buffers: Pools::new(pump_buffer_bytes, splice_pipe_bytes),
        state: RefCell::new(State::default()),
        waiters: RefCell::new(HashMap::new()),
        accepting: Cell::new(true),
        waiting: RefCell::new(HashMap::new()),
        starving: RefCell::new(Default::default()),
        next_session: Cell::new(1),
    });
    worker.apply_snapshot(&snapshot);
    // Accept loops, and the listener fds a drain or reload shuts down to end them.
    let mut accepting: Vec<AcceptLoop> = Vec::new();
    worker.start_accepting(frontends, &mut accepting);
    tokio::task::spawn_local(worker.clone().heartbeat_loop());
    while let Some(msg) = rx.recv().await {
        match msg {
            WorkerMsg::Snapshot(s) => worker.apply_snapshot(&s),
            WorkerMsg::DataConn(conn) => worker.adopt(conn),
            WorkerMsg::CloseConns(ids) => worker.close_idle(&ids),
            WorkerMsg::StopAccepting => {
                worker.accepting.set(false);
                for a in accepting.drain(..) {
                    a.stop(backend);
                }
            }
            WorkerMsg::Frontends { stop, add } => {
                let (gone, kept): (Vec<AcceptLoop>, Vec<AcceptLoop>) =
                    accepting.drain(..).partition(|a| stop.contains(&a.cluster));
                accepting = kept;
                for a in gone {
                    a.stop(backend);
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
    worker.close_all_idle();
}

/// One session counted against its cluster's `max_sessions`; uncounted when dropped.
struct SessionSlot(Arc<std::sync::atomic::AtomicU64>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A running accept loop of one frontend listener.
struct AcceptLoop {
    cluster: Arc<str>,
    task: tokio::task::JoinHandle<()>,
    fd: std::os::fd::RawFd,
    /// Set before the listener is shut down, so the io_uring loop knows its error means "stop".
    stopped: Rc<Cell<bool>>,
}

impl AcceptLoop {
    fn stop(self, backend: Backend) {
        self.stopped.set(true);
        match backend {
            // An epoll accept is cancelled safely by aborting its task.
            Backend::Epoll => self.task.abort(),
            // An io_uring accept in flight must complete, not be dropped: shutting the listener
            // down completes it with an error, and the loop ends.
            // SAFETY: the fd belongs to a listener owned by the accept task, which is still
            // alive: it exits only after this completes its accept.
            Backend::Uring { .. } => unsafe {
                libc::shutdown(self.fd, libc::SHUT_RDWR);
            },
        }
    }
}

impl Worker {
    /// Starts an accept loop per listener.
    fn start_accepting(
        self: &Rc<Self>,
        listeners: Vec<(Arc<str>, std::net::TcpListener)>,
        into: &mut Vec<AcceptLoop>,
    ) {
        for (cluster, listener) in listeners {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
            let stopped = Rc::new(Cell::new(false));
            let task = match self.backend {
                Backend::Epoll => TcpListener::from_std(listener).map(|l| {
                    tokio::task::spawn_local(self.clone().accept_loop(cluster.clone(), l))
                }),
                Backend::Uring { .. } => crate::rt::uring::Listener::from_std(listener).map(|l| {
                    tokio::task::spawn_local(self.clone().accept_loop_uring(
                        cluster.clone(),
                        l,
                        stopped.clone(),
                    ))
                }),
            };
            match task {
                Ok(task) => into.push(AcceptLoop {
                    cluster,
                    task,
                    fd,
                    stopped,
                }),
                Err(e) => {
                    warn!(worker = self.index, %cluster, error = %e, "cannot adopt frontend listener")
                }
            }
        }
    }

    fn apply_snapshot(&self, snapshot: &Snapshot) {
        self.apply_snapshot_inner(snapshot);
        if let Some(at) = snapshot.published_at {
            let ns = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
            bump(&self.counters.snapshots_applied_total);
            add(&self.counters.snapshot_propagation_ns_total, ns);
            self.counters
                .snapshot_propagation_max_ns
                .fetch_max(ns, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn apply_snapshot_inner(&self, snapshot: &Snapshot) {
        let mut state = self.state.borrow_mut();
        state.clusters = snapshot
            .clusters
            .iter()
            .map(|(name, c)| {
                let specs: Vec<HostSpec> = c
                    .hosts
                    .iter()
                    .map(|h| HostSpec {
                        key: h.key,
                        weight: h.weight,
                    })
                    .collect();
                let seed = (self.index as u64) << 32 | snapshot.version;
                (
                    name.clone(),
                    LocalCluster {
                        snap: c.clone(),
                        balancer: Balancer::new(c.lb_type, &specs, seed),
                        stats: self.counters.clusters.get_or_create(name),
                    },
                )
            })
            .collect();
        trace!(
            worker = self.index,
            version = snapshot.version,
            "snapshot applied"
        );
    }

    fn adopt(&self, handed: HandedConn) {
        let conn = IdleConn::new(
            handed.conn_id,
            handed.host_id,
            handed.stream,
            handed.legacy,
            handed.pending,
            handed.outstanding_pings,
            handed.tls,
        );
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

    /// Gives an idle connection to another worker whose frontends are starving.
    fn donate(&self, cluster: &Arc<str>, host_id: HostId, to: usize) {
        let conn = {
            let mut state = self.state.borrow_mut();
            let State { clusters, pools } = &mut *state;
            let hosts_of_cluster = clusters.get(cluster).map(|c| &c.snap.hosts);
            let candidates = std::iter::once(host_id)
                .chain(hosts_of_cluster.into_iter().flatten().map(|h| h.id));
            let mut found = None;
            for id in candidates {
                // The oldest: it was the least likely to be leased here.
                if let Some(c) = pools.get_mut(&id).and_then(|p| p.idle.pop_front()) {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let Some(conn) = conn else {
            let _ = self.events.send(WorkerEvent::DonateFailed {
                to,
                cluster: cluster.clone(),
            });
            return;
        };
        let handed = HandedConn {
            conn_id: conn.conn_id,
            host_id: conn.host_id,
            cluster: cluster.clone(),
            stream: conn.stream,
            legacy: conn.legacy,
            pending: conn.pending,
            outstanding_pings: conn.outstanding_pings,
            tls: conn.tls,
        };
        let _ = self.events.send(WorkerEvent::Donated { to, conn: handed });
    }

    fn retire(&self, conn: IdleConn, why: &IdleError) {
        debug!(worker = self.index, conn = conn.conn_id, reason = %why, "idle data connection closed");
        if matches!(why, IdleError::HeartbeatMissed(_)) {
            bump(&self.counters.heartbeat_closes_total);
            warn!(conn = conn.conn_id, reason = %why, "closing data connection: agent stopped answering heartbeats");
        } else {
            bump(&self.counters.idle_closes_total);
        }
        conn.shutdown();
        let _ = self.events.send(WorkerEvent::Closed {
            conn_id: conn.conn_id,
        });
    }

    fn close_idle(&self, ids: &[u64]) {
        let mut removed = Vec::new();
        {
            let mut state = self.state.borrow_mut();
            for pool in state.pools.values_mut() {
                let mut i = 0;
                while i < pool.idle.len() {
                    if ids.contains(&pool.idle[i].conn_id) {
                        if let Some(c) = pool.idle.remove(i) {
                            removed.push(c);
                        }
                    } else {
                        i += 1;
                    }
                }
            }
        }
        for c in removed {
            self.retire(c, &IdleError::Closed);
        }
    }

    fn close_all_idle(&self) {
        let mut state = self.state.borrow_mut();
        for pool in state.pools.values_mut() {
            for c in pool.idle.drain(..) {
                c.shutdown();
            }
        }
    }

    async fn heartbeat_loop(self: Rc<Self>) {
        let mut tick = tokio::time::interval(self.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let mut dead = Vec::new();
            {
                let mut state = self.state.borrow_mut();
                for pool in state.pools.values_mut() {
                    let mut i = 0;
                    while i < pool.idle.len() {
                        let conn = &mut pool.idle[i];
                        let result = conn
                            .poll(self.max_frame_payload_bytes)
                            .and_then(|()| conn.heartbeat(self.heartbeat_max_missed));
                        match result {
                            Ok(()) => i += 1,
                            Err(e) => {
                                if let Some(c) = pool.idle.remove(i) {
                                    dead.push((c, e));
                                }
                            }
                        }
                    }
                }
                state
                    .pools
                    .retain(|_, p| !p.idle.is_empty() || p.active > 0);
            }
            for (c, e) in dead {
                self.retire(c, &e);
            }
        }
    }

    /// Serves an accepted frontend in its own task, inside a session span.
    fn accepted(self: &Rc<Self>, cluster: &Arc<str>, frontend: Conn, client: SocketAddr) {
        bump(&self.counters.frontends_accepted_total);
        let span = tracing::debug_span!("session", worker = self.index, %cluster, %client, id = tracing::field::Empty);
        tokio::task::spawn_local(
            self.clone()
                .serve_frontend(cluster.clone(), frontend, client)
                .instrument(span),
        );
    }

    /// Out of descriptors and similar: log (rate-limited) and back off instead of spinning.
    async fn accept_failed(&self, cluster: &str, e: &io::Error) {
        crate::log_limited!(
            warn!(worker = self.index, %cluster, error = %e, "frontend accept failed")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    async fn accept_loop(self: Rc<Self>, cluster: Arc<str>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, client)) => {
                    let _ = stream.set_nodelay(true);
                    self.accepted(&cluster, Conn::Epoll(stream), client);
                }
                Err(e) => self.accept_failed(&cluster, &e).await,
            }
        }
    }

    /// The io_uring accept loop. It runs until the runtime ends and is never raced or dropped
    /// while an accept is in flight.
    async fn accept_loop_uring(
        self: Rc<Self>,
        cluster: Arc<str>,
        listener: crate::rt::uring::Listener,
        stopped: Rc<Cell<bool>>,
    ) {
        loop {
            if stopped.get() {
                return;
            }
            match listener.accept().await {
                Ok((stream, client)) => {
                    let _ = stream.set_nodelay(true);
                    self.accepted(&cluster, Conn::Uring(stream), client);
                }
                Err(e) => {
                    if stopped.get() || !self.accepting.get() {
                        return;
                    }
                    self.accept_failed(&cluster, &e).await;
                }
            }
        }
    }

    /// Takes an idle connection of the host the balancer picks, skipping dead ones.
    fn try_lease(&self, cluster: &str, client_ip: IpAddr) -> Option<IdleConn> {
        let mut dead = Vec::new();
        let leased = {
            let mut state = self.state.borrow_mut();
            let State { clusters, pools } = &mut *state;
            let local = clusters.get_mut(cluster)?;
            loop {
                let view = PoolView {
                    hosts: &local.snap.hosts,
                    pools,
                };
                let Some(i) = local.balancer.pick(client_ip, &view) else {
                    break None;
                };
                let Some(pool) = local.snap.hosts.get(i).and_then(|h| pools.get_mut(&h.id)) else {
                    break None;
                };
                // Newest first: connections nobody needs stay at the front and age, so an
                // agent can let its extra ones go once idle (a rotating pool never would).
                let Some(mut conn) = pool.idle.pop_back() else {
                    break None;
                };
                match conn.poll(self.max_frame_payload_bytes) {
                    Ok(()) => {
                        pool.active += 1;
                        break Some(conn);
                    }
                    Err(e) => dead.push((conn, e)),
                }
            }
        };
        for (c, e) in dead {
            self.retire(c, &e);
        }
        leased
    }

    /// This worker's counters of `cluster` (created if the snapshot does not know it).
    fn cluster_stats(&self, cluster: &Arc<str>) -> Arc<ClusterCounters> {
        let known = self
            .state
            .borrow()
            .clusters
            .get(cluster)
            .map(|c| c.stats.clone());
        known.unwrap_or_else(|| self.counters.clusters.get_or_create(cluster))
    }

    fn pool_wait(&self, cluster: &str) -> Duration {
        let state = self.state.borrow();
        Duration::from_millis(
            state
                .clusters
                .get(cluster)
                .map_or(0, |c| c.snap.pool_wait_ms),
        )
    }

    fn waiter(&self, cluster: &Arc<str>) -> Rc<Notify> {
        self.waiters
            .borrow_mut()
            .entry(cluster.clone())
            .or_insert_with(|| Rc::new(Notify::new()))
            .clone()
    }

    async fn lease(&self, cluster: &Arc<str>, client: SocketAddr) -> Option<IdleConn> {
        if let Some(conn) = self.try_lease(cluster, client.ip()) {
            return Some(conn);
        }
        bump(&self.counters.pool_waits_total);
        bump(&self.cluster_stats(cluster).pool_waits_total);
        *self
            .waiting
            .borrow_mut()
            .entry(cluster.clone())
            .or_insert(0) += 1;
        self.ask_for_connections(cluster);
        let deadline = Instant::now() + self.pool_wait(cluster);
        let notify = self.waiter(cluster);
        let leased = loop {
            let notified = notify.notified();
            if let Some(conn) = self.try_lease(cluster, client.ip()) {
                break Some(conn);
            }
            let wake = deadline.min(Instant::now() + Duration::from_millis(REASK_MS));
            if tokio::time::timeout_at(wake, notified).await.is_err() {
                // Let a later frontend ask again.
                self.starving.borrow_mut().remove(cluster);
                if Instant::now() >= deadline {
                    break self.try_lease(cluster, client.ip());
                }
                // Still waiting: ask again (an answer may have gone to another worker, or a
                // donor may have had nothing left).
                self.ask_for_connections(cluster);
            }
        };
        if let Some(n) = self.waiting.borrow_mut().get_mut(cluster) {
            *n = n.saturating_sub(1);
        }
        // Others still wait: ask again for them (the flag was cleared when a connection came).
        self.ask_for_connections(cluster);
        leased
    }

    /// Counts a session of `cluster` against its `max_sessions` (over all workers); `None`
    /// when the cluster is full or unknown.
    fn session_slot(&self, cluster: &str) -> Option<SessionSlot> {
        let state = self.state.borrow();
        let c = &state.clusters.get(cluster)?.snap;
        let now = c.sessions.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let slot = SessionSlot(c.sessions.clone());
        (now < c.max_sessions).then_some(slot)
    }

    /// Tells the control path that frontends of `cluster` wait here, unless it was told already
    /// and nothing arrived since.
    fn ask_for_connections(&self, cluster: &Arc<str>) {
        let waiting = self.waiting.borrow().get(cluster).copied().unwrap_or(0);
        if waiting > 0 && self.starving.borrow_mut().insert(cluster.clone()) {
            let _ = self.events.send(WorkerEvent::Starving {
                worker: self.index,
                cluster: cluster.clone(),
                waiting,
            });
        }
    }

    async fn serve_frontend(self: Rc<Self>, cluster: Arc<str>, frontend: Conn, client: SocketAddr) {
        let setup = SessionSetup::start(self.cluster_stats(&cluster));
        let stats = &*setup.stats;
        bump(&stats.frontends_accepted_total);
        let Some(_slot) = self.session_slot(&cluster) else {
            bump(&self.counters.sessions_over_limit_total);
            crate::log_limited!(warn!(worker = self.index, %cluster, %client,
                "frontend refused: the cluster is at max_sessions"));
            frontend.shutdown();
            return;
        };
        let Some(conn) = self.lease(&cluster, client).await else {
            bump(&self.counters.pool_exhausted_total);
            bump(&stats.pool_exhausted_total);
            debug!(worker = self.index, %cluster, %client, "no idle data connection within pool_wait_ms; closing frontend");
            frontend.shutdown();
            return;
        };
        let (conn_id, host_id) = (conn.conn_id, conn.host_id);
        let _ = self.events.send(WorkerEvent::Leased { conn_id });
        bump(&self.counters.sessions_started_total);
        add(&self.counters.active_sessions, 1);
        bump(&stats.sessions_started_total);
        add(&stats.active_sessions, 1);
        let session_id = (self.index as u64) << 48 | self.next_session.get();
        self.next_session.set(self.next_session.get() + 1);
        tracing::Span::current().record("id", session_id);
        let result = self
            .run_session(conn, &frontend, client, session_id, &setup)
            .await;
        match result {
            Ok(moved) => {
                add(&self.counters.bytes_to_agent_total, moved.a_to_b);
                add(&self.counters.bytes_from_agent_total, moved.b_to_a);
                add(&stats.bytes_to_agent_total, moved.a_to_b);
                add(&stats.bytes_from_agent_total, moved.b_to_a);
                trace!(
                    session = session_id,
                    to_agent = moved.a_to_b,
                    from_agent = moved.b_to_a,
                    "session ended"
                );
            }
            Err(e) => {
                bump(&self.counters.session_errors_total);
                bump(&stats.session_errors_total);
                debug!(session = session_id, %cluster, %client, error = %e, "session ended with error");
            }
        }
        bump(&self.counters.sessions_ended_total);
        drop_one(&self.counters.active_sessions);
        drop_one(&stats.active_sessions);
        if let Some(pool) = self.state.borrow_mut().pools.get_mut(&host_id) {
            pool.active = pool.active.saturating_sub(1);
        }
        let _ = self.events.send(WorkerEvent::Closed { conn_id });
    }

    async fn run_session(
        &self,
        conn: IdleConn,
        frontend: &Conn,
        client: SocketAddr,
        session_id: u64,
        setup: &SessionSetup,
    ) -> io::Result<super::pump::Moved> {
        if conn.tls.is_some() {
            // Boxed: a TLS session's state is large, and plaintext sessions should not carry it.
            return Box::pin(self.run_tls_session(conn, frontend, client, session_id, setup)).await;
        }
        let IdleConn {
            stream,
            legacy,
            pending,
            outstanding_pings,
            ..
        } = conn;
        let (data, prefix_to_frontend) = if legacy {
            setup.started();
            (Conn::from_std(self.backend, stream)?, pending)
        } else {
            let start = Frame::SessionStart(SessionStart {
                session_id,
                client_addr: client.to_string(),
            });
            let frame = protocol::encode_to_vec(&start).map_err(io::Error::other)?;
            let adopted = self
                .start_session(stream, &frame, pending, outstanding_pings)
                .await?;
            setup.started();
            adopted
        };
        let moved = pump_conns(
            frontend,
            &data,
            prefix_to_frontend,
            Vec::new(),
            &self.buffers,
        )
        .await;
        moved
    }

    /// `run_session` for a TLS data connection: the session start frame and the pump go
    /// through its TLS session.
    async fn run_tls_session(
        &self,
        conn: IdleConn,
        frontend: &Conn,
        client: SocketAddr,
        session_id: u64,
        setup: &SessionSetup,
    ) -> io::Result<super::pump::Moved> {
        let IdleConn {
            stream,
            legacy,
            pending,
            outstanding_pings,
            tls,
            ..
        } = conn;
        let tls = tls.ok_or_else(|| io::Error::other("TLS session lost"))?;
        let start = Frame::SessionStart(SessionStart {
            session_id,
            client_addr: client.to_string(),
        });
        let frame = protocol::encode_to_vec(&start).map_err(io::Error::other)?;
        let mut channel = crate::tls::Channel::new(TcpStream::from_std(stream)?, Some(tls));
        let rest = if legacy {
            pending
        } else {
            channel.write_all(&frame).await?;
            self.strip_pongs(&mut channel, pending, outstanding_pings)
                .await?
        };
        setup.started();
        let (stream, tls) = channel.into_parts();
        let data = Conn::from_tokio(self.backend, stream)?;
        let session = tls.ok_or_else(|| io::Error::other("TLS session lost"))?;
        let moved = pump_tls(&data, frontend, session, rest, Vec::new(), &self.buffers).await;
        // (to the frontend, to the agent) → (a = frontend, b = data).
        moved.map(|m| super::pump::Moved {
            a_to_b: m.b_to_a,
            b_to_a: m.a_to_b,
        })
    }

    /// Writes the session start frame and drops pongs still due, then adopts the data
    /// connection on this worker's backend. The common case (nothing pending, an empty send
    /// buffer) is one non-blocking write.
    async fn start_session(
        &self,
        stream: std::net::TcpStream,
        frame: &[u8],
        pending: Vec<u8>,
        outstanding_pings: u32,
    ) -> io::Result<(Conn, Vec<u8>)> {
        let written = match std::io::Write::write(&mut &stream, frame) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if written == frame.len() && outstanding_pings == 0 {
            return Ok((Conn::from_std(self.backend, stream)?, pending));
        }
        let mut channel = crate::tls::Channel::plain(TcpStream::from_std(stream)?);
        channel.write_all(&frame[written..]).await?;
        let rest = self
            .strip_pongs(&mut channel, pending, outstanding_pings)
            .await?;
        let (data, _) = channel.into_parts();
        Ok((Conn::from_tokio(self.backend, data)?, rest))
    }

    /// Pongs for pings sent before the lease precede the session's raw bytes; drop them (decoded
    /// from decrypted bytes on a TLS connection).
    async fn strip_pongs(
        &self,
        data: &mut crate::tls::Channel,
        mut buf: Vec<u8>,
        mut outstanding: u32,
    ) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + self.heartbeat_interval;
        while outstanding > 0 {
            match protocol::decode(&buf, self.max_frame_payload_bytes) {
                Ok(Decoded::Frame(Frame::Pong(_), used)) => {
                    buf.drain(..used);
                    outstanding -= 1;
                }
                Ok(Decoded::NeedMore(_)) => {
                    let n = tokio::time::timeout_at(deadline, data.read_into(&mut buf))
                        .await
                        .map_err(|_| {
                            io::Error::new(
                                io::ErrorKind::TimedOut,
                                "agent did not answer pending heartbeats",
                            )
                        })??;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Ok(Decoded::Frame(other, _)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "unexpected {} frame before session bytes",
                            other.flag().name()
                        ),
                    ))
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod future_sizes {
    //! What an idle session costs in memory is mostly its task's future: these bounds keep a
    //! stack array or an unboxed TLS state from creeping back into it (see the README's
    //! Performance section for the measured memory per idle session).
    use super::*;

    fn future_bytes<A, F>(_: impl Fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_server_session_task_stays_small() {
        let session = future_bytes(|(w, c, f, a): (Rc<Worker>, Arc<str>, Conn, SocketAddr)| {
            w.serve_frontend(c, f, a)
        });
        assert!(session <= 2048, "serve_frontend future is {session} bytes");
        let pump = future_bytes(|(a, b, p): (&Conn, &Conn, &Pools)| {
            pump_conns(a, b, Vec::new(), Vec::new(), p)
        });
        assert!(pump <= 1536, "pump_conns future is {pump} bytes");
    }
}

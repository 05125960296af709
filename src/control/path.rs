//! The control path's event loop: accept agents, handshake, keep the registry, publish snapshots,
//! hand data connections to workers, serve aside connections and answer queries.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::auth;
use super::handshake::{read_init_from, HandshakeError};
use super::registry::{ClusterStatus, HostIdentity, HostStatus, RegisterError, Registry};
use super::stats::{ControlStats, HandshakeOutcome};
use crate::config::agent::MAX_WEIGHT;
use crate::config::ServerConfig;
use crate::plane::snapshot::{ConnId, HostId};
use crate::plane::{HandedConn, WorkerEvent, WorkerMsg};
use crate::protocol::{self, ConnectionInitResponse, Decoded, Frame, Ping, Role, Status};
use crate::tls::Channel;

/// Requests from the server handle.
pub enum ControlCmd {
    Hosts {
        cluster: String,
        reply: std::sync::mpsc::Sender<Vec<HostStatus>>,
    },
    /// Every cluster and its hosts (admin `/clusters` and `/metrics`).
    Clusters {
        reply: tokio::sync::oneshot::Sender<Vec<ClusterStatus>>,
    },
    /// Admin: set (Some) or clear (None) the server-side weight of the hosts named `host_name`
    /// in `cluster`; replies with how many hosts matched.
    SetWeight {
        cluster: String,
        host_name: String,
        weight: Option<u32>,
        reply: tokio::sync::oneshot::Sender<usize>,
    },
    /// Admin: stop leasing the connections of the hosts named `host_name` in `cluster`.
    DrainHost {
        cluster: String,
        host_name: String,
        reply: tokio::sync::oneshot::Sender<usize>,
    },
    /// Drain the server: stop accepting agents and frontends, tell agents, let sessions finish
    /// within `grace_ms`, then stop.
    Drain {
        grace_ms: u64,
    },
    /// Apply a reloaded configuration's clusters: `removed` ones leave (their connections are
    /// closed), the frontends of `stop_frontends` close, `listeners[w]` start on worker `w`.
    Reload {
        clusters: Vec<crate::config::ClusterConfig>,
        removed: Vec<String>,
        stop_frontends: Vec<String>,
        listeners: crate::rt::FrontendSockets,
        reply: tokio::sync::oneshot::Sender<()>,
    },
    Shutdown,
}

/// How long a pool request is counted as on its way before it is asked again.
const OWED_EXPIRY_MS: u64 = 1000;

/// How often a draining control path checks whether sessions are done.
const DRAIN_POLL_MS: u64 = 20;

/// Everything the control path needs to start.
pub struct ControlSetup {
    pub listener: std::net::TcpListener,
    pub config: ServerConfig,
    pub registry: Registry,
    pub workers: Vec<mpsc::UnboundedSender<WorkerMsg>>,
    pub events: mpsc::UnboundedReceiver<WorkerEvent>,
    pub commands: mpsc::UnboundedReceiver<ControlCmd>,
    pub stats: Arc<ControlStats>,
    /// The workers' counters (a drain waits for their active sessions to end).
    pub counters: Vec<Arc<crate::plane::counters::WorkerCounters>>,
    /// The tunnel listener's TLS config (`tunnel_listener.tls_context`), loaded once at start.
    pub tls: Option<Arc<crate::tls::ServerConfig>>,
}

/// An aside connection's id and the queue of frames its task writes.
type AsideWriter = (ConnId, mpsc::UnboundedSender<Frame>);

struct Control {
    config: ServerConfig,
    registry: RefCell<Registry>,
    workers: Vec<mpsc::UnboundedSender<WorkerMsg>>,
    handshakes: Arc<tokio::sync::Semaphore>,
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
    tls: Option<Arc<crate::tls::ServerConfig>>,
}

/// Runs until told to shut down.
pub async fn run(setup: ControlSetup) {
    let ControlSetup {
        listener,
        config,
        registry,
        workers,
        mut events,
        mut commands,
        stats,
        counters,
        tls,
    } = setup;
    let mut listener = match TcpListener::from_std(listener) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(error = %e, "cannot adopt tunnel listener");
            return;
        }
    };
    let handshake_slots = config.tunnel_listener.max_concurrent_handshakes;
    let ctl = Rc::new(Control {
        config,
        registry: RefCell::new(registry),
        workers,
        handshakes: Arc::new(tokio::sync::Semaphore::new(handshake_slots)),
        stats,
        asides: RefCell::new(HashMap::new()),
        pool_request_turn: std::cell::Cell::new(0),
        wanted: RefCell::new(HashMap::new()),
        replay: RefCell::default(),
        tls,
    });
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            accepted = async { match &listener { Some(l) => l.accept().await, None => std::future::pending().await } } => match accepted {
                Ok((stream, peer)) => {
                    match ctl.handshakes.clone().try_acquire_owned() {
                        Ok(permit) => {
                            tokio::task::spawn_local(ctl.clone().tunnel_conn(stream, peer, permit));
                        }
                        Err(_) => {
                            ctl.stats.handshake(HandshakeOutcome::Overloaded);
                            debug!(%peer, "too many handshakes in progress; closing tunnel connection");
                        }
                    }
                }
                Err(e) => {
                    crate::log_limited!(warn!(error = %e, "tunnel accept failed"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(event) = events.recv() => ctl.on_worker_event(event),
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
            _ = tokio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)), if drain_deadline.is_some() => {
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
    fn broadcast(&self, frame: &Frame) {
        for conns in self.asides.borrow().values() {
            for (_, tx) in conns {
                let _ = tx.send(frame.clone());
            }
        }
    }

    /// Closes idle connections on the workers holding them.
    fn close_on_workers(&self, close: Vec<(usize, ConnId)>) {
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

    fn apply_reload(
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
        }
        self.publish();
        info!(removed = ?removed, clusters = clusters.len(), "configuration reloaded");
    }

    fn admin_weight(&self, cluster: &str, host_name: &str, weight: Option<u32>) -> usize {
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

    fn admin_drain_host(&self, cluster: &str, host_name: &str) -> usize {
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

    /// Records that `worker` waits for `count` connections of `cluster`; returns how many more
    /// must be asked for (what is owed already is not asked twice). Requests unanswered for
    /// `OWED_EXPIRY_MS` are forgotten, so a lost one is asked again.
    fn owe(&self, cluster: &str, worker: usize, count: u32) -> u32 {
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
    fn request_pool(&self, cluster: &Arc<str>, count: u32) {
        let hosts: Vec<HostId> = self
            .registry
            .borrow()
            .hosts(cluster)
            .iter()
            .filter(|h| h.weight > 0 && !h.legacy)
            .map(|h| h.id)
            .collect();
        let asides = self.asides.borrow();
        let candidates: Vec<&mpsc::UnboundedSender<Frame>> = hosts
            .iter()
            .filter_map(|h| asides.get(h).and_then(|v| v.first()).map(|(_, tx)| tx))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let turn = self.pool_request_turn.get();
        self.pool_request_turn.set(turn.wrapping_add(1));
        let request = Frame::PoolRequest(crate::protocol::PoolRequest {
            cluster_name: cluster.to_string(),
            count: count.max(1),
        });
        let _ = candidates[turn % candidates.len()].send(request);
        debug!(%cluster, "asked an agent for another data connection");
    }

    fn publish(&self) {
        let snapshot = Arc::new(self.registry.borrow_mut().snapshot());
        for w in &self.workers {
            let _ = w.send(WorkerMsg::Snapshot(snapshot.clone()));
        }
    }

    fn on_worker_event(&self, event: WorkerEvent) {
        match event {
            WorkerEvent::Leased { conn_id } => self.registry.borrow_mut().conn_leased(conn_id),
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

    fn conn_closed(&self, conn_id: ConnId) {
        let host_removed = self.registry.borrow_mut().conn_closed(conn_id);
        if host_removed {
            self.publish();
        }
    }

    async fn tunnel_conn(
        self: Rc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let timeout_ms = self.config.tunnel_listener.handshake_timeout_ms;
        let max_payload = self.config.tunnel_listener.max_frame_payload_bytes;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let (mut stream, first) = match &self.tls {
            None => (Channel::plain(stream), Vec::new()),
            Some(config) => {
                // Boxed: the handshake's state is large, and plaintext agents should not carry it.
                let accepted = Box::pin(crate::tls::accept(
                    &stream,
                    config.clone(),
                    Duration::from_millis(timeout_ms),
                ))
                .await;
                match accepted {
                    Ok(est) => (
                        Channel::new(stream, Some(Box::new(est.session))),
                        est.plaintext,
                    ),
                    Err(e) => {
                        // `accept` has sent the alert telling the agent why (best effort).
                        self.stats.handshake(match e {
                            crate::tls::TlsError::Timeout(_) => HandshakeOutcome::Timeout,
                            _ => HandshakeOutcome::TlsError,
                        });
                        crate::log_limited!(
                            warn!(%peer, reason = %e, "TLS handshake with agent failed; connection closed")
                        );
                        let _ = stream.shutdown_std();
                        return;
                    }
                }
            }
        };
        let read =
            tokio::time::timeout_at(deadline, read_init_from(&mut stream, first, max_payload))
                .await
                .unwrap_or(Err(HandshakeError::Timeout(timeout_ms)));
        let (init, leftover) = match read {
            Ok(x) => x,
            Err(e) => {
                self.stats.handshake(match e {
                    HandshakeError::Timeout(_) => HandshakeOutcome::Timeout,
                    _ => HandshakeOutcome::ProtocolError,
                });
                crate::log_limited!(warn!(%peer, reason = %e, "tunnel connection refused"));
                let _ = stream.stream.shutdown_std();
                return;
            }
        };
        let decision = auth::decide(
            self.registry.borrow().cluster(&init.cluster_name),
            &init,
            crate::credential::unix_now_secs(),
            &mut self.replay.borrow_mut(),
        );
        let status = decision.status;
        let ext = init.ringtun().cloned();
        if status != Status::SUCCESS {
            self.stats.handshake(HandshakeOutcome::of_status(status));
            crate::log_limited!(warn!(
                %peer, cluster = %init.cluster_name, host_name = %init.host_name,
                status = status.0, reason = decision.reason, "agent refused: {}", status.meaning()
            ));
            let _ = send_frame(
                &mut stream,
                &Frame::InitResponse(ConnectionInitResponse::status(status)),
            )
            .await;
            let _ = stream.stream.shutdown_std();
            return;
        }
        let legacy = ext.is_none();
        let role = ext.as_ref().map_or(Role::Data, |e| e.role);
        let identity = HostIdentity {
            host_name: init.host_name.clone(),
            agent_id: ext
                .as_ref()
                .map_or_else(|| format!("mosn@{}", peer.ip()), |e| e.agent_id.clone()),
            legacy,
        };
        let weight = match init.weight {
            w if w <= 0 && legacy => 10,
            w => w.clamp(0, MAX_WEIGHT) as u32,
        };
        let registered =
            self.registry
                .borrow_mut()
                .register(&init.cluster_name, identity, weight, role, peer);
        let reg = match registered {
            Ok(reg) => reg,
            Err(RegisterError::NoCluster) => {
                // The cluster vanished between the check and now (reload).
                self.stats.handshake(HandshakeOutcome::ClusterNotExist);
                let response = ConnectionInitResponse::status(Status::CLUSTER_NOT_EXIST);
                let _ = send_frame(&mut stream, &Frame::InitResponse(response)).await;
                return;
            }
            Err(limit) => {
                self.stats.handshake(HandshakeOutcome::OverLimit);
                crate::log_limited!(warn!(
                    %peer, cluster = %init.cluster_name, host_name = %init.host_name,
                    "data connection refused (status 0): {limit}"
                ));
                let response = ConnectionInitResponse::status(Status::UNKNOWN_FAILURE);
                let _ = send_frame(&mut stream, &Frame::InitResponse(response)).await;
                return;
            }
        };
        if reg.snapshot_changed {
            if !reg.new_host {
                // Every init carries the agent's weight; one that changed it is the first to
                // tell (the aside connection's update may arrive after it).
                info!(conn = reg.conn_id, host = reg.host_id, weight, role = ?role,
                    "agent changed its weight");
            }
            self.publish();
        }
        let response = if legacy {
            ConnectionInitResponse::status(Status::SUCCESS)
        } else {
            ConnectionInitResponse {
                status: Status::SUCCESS,
                connection_id: Some(reg.conn_id),
                heartbeat_interval_ms: Some(self.config.heartbeat_interval_ms),
            }
        };
        if let Err(e) = send_frame(&mut stream, &Frame::InitResponse(response)).await {
            self.stats.handshake(HandshakeOutcome::ProtocolError);
            debug!(%peer, error = %e, "agent went away during handshake");
            self.conn_closed(reg.conn_id);
            return;
        }
        self.stats.handshake(HandshakeOutcome::Success);
        drop(permit);
        let _ = stream.stream.set_nodelay(true);
        // Every session's data connection is replaced by a new one: logging each at `info`
        // would make the log grow with traffic. A host's first connection and aside
        // connections are rare and worth seeing.
        if reg.new_host || role == Role::Aside {
            info!(
                %peer, cluster = %init.cluster_name, host_name = %init.host_name,
                conn = reg.conn_id, role = ?role, legacy, new_host = reg.new_host,
                "tunnel connection registered"
            );
        } else {
            debug!(
                %peer, cluster = %init.cluster_name, host_name = %init.host_name,
                conn = reg.conn_id, role = ?role, legacy, "tunnel connection registered"
            );
        }
        match role {
            Role::Data => self.hand_to_worker(
                stream,
                reg.conn_id,
                reg.host_id,
                &init.cluster_name,
                legacy,
                leftover,
            ),
            // Boxed: data connections' handshakes should not carry the aside loop's state.
            Role::Aside => Box::pin(self.aside(stream, reg.conn_id, reg.host_id, leftover)).await,
        }
    }

    fn hand_to_worker(
        &self,
        stream: Channel,
        conn_id: ConnId,
        host_id: HostId,
        cluster: &str,
        legacy: bool,
        pending: Vec<u8>,
    ) {
        let (stream, tls) = stream.into_parts();
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(conn = conn_id, error = %e, "cannot hand data connection to a worker");
                self.conn_closed(conn_id);
                return;
            }
        };
        // A worker whose frontends asked for a connection of this cluster gets it first.
        let wanted = self
            .wanted
            .borrow_mut()
            .get_mut(cluster)
            .and_then(std::collections::VecDeque::pop_front)
            .map(|(w, _)| w);
        let worker = self
            .registry
            .borrow_mut()
            .assign_worker_preferring(conn_id, wanted);
        let sent = worker.and_then(|w| self.workers.get(w)).map(|tx| {
            tx.send(WorkerMsg::DataConn(HandedConn {
                conn_id,
                host_id,
                cluster: Arc::from(cluster),
                stream: std_stream,
                legacy,
                pending,
                outstanding_pings: 0,
                tls,
            }))
        });
        if !matches!(sent, Some(Ok(()))) {
            self.conn_closed(conn_id);
        }
    }

    /// Serves an aside connection: heartbeats and the agent's control frames.
    async fn aside(&self, mut stream: Channel, conn_id: ConnId, host_id: HostId, mut buf: Vec<u8>) {
        let interval = Duration::from_millis(self.config.heartbeat_interval_ms);
        let max_missed = self.config.heartbeat_max_missed;
        let max_payload = self.config.tunnel_listener.max_frame_payload_bytes;
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        let mut outstanding = 0u32;
        let mut seq = 0u64;
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Frame>();
        self.asides
            .borrow_mut()
            .entry(host_id)
            .or_default()
            .push((conn_id, out_tx));
        let reason = 'conn: loop {
            loop {
                match protocol::decode(&buf, max_payload) {
                    Ok(Decoded::NeedMore(_)) => break,
                    Ok(Decoded::Frame(frame, used)) => {
                        buf.drain(..used);
                        match frame {
                            Frame::Pong(_) => outstanding = outstanding.saturating_sub(1),
                            Frame::WeightUpdate(w) => {
                                let weight = w.weight.clamp(0, MAX_WEIGHT) as u32;
                                // An aside connection announces its weight when it opens; only
                                // a real change is worth an `info` line.
                                if self.registry.borrow_mut().set_weight(host_id, weight) {
                                    info!(
                                        conn = conn_id,
                                        host = host_id,
                                        weight,
                                        "agent changed its weight"
                                    );
                                    self.publish();
                                } else {
                                    debug!(
                                        conn = conn_id,
                                        host = host_id,
                                        weight,
                                        "agent weight update: the host's effective weight is unchanged"
                                    );
                                }
                            }
                            Frame::GracefulClose(g) => {
                                // Only this authenticated agent's own connections, by the ids
                                // this server issued; addresses (MOSN's form) name nothing here.
                                let close = self
                                    .registry
                                    .borrow_mut()
                                    .graceful_close(host_id, &g.connection_ids);
                                debug!(
                                    conn = conn_id,
                                    host = host_id,
                                    named = g.connection_ids.len(),
                                    closing_idle = close.len(),
                                    "graceful close"
                                );
                                self.close_on_workers(close);
                            }
                            other => {
                                break 'conn format!(
                                    "unexpected {} frame on aside connection",
                                    other.flag().name()
                                )
                            }
                        }
                    }
                    Err(e) => break 'conn e.to_string(),
                }
            }
            tokio::select! {
                read = stream.read_into(&mut buf) => match read {
                    Ok(0) => break 'conn "agent closed the aside connection".to_string(),
                    Ok(_) => {}
                    Err(e) => break 'conn format!("read failed: {e}"),
                },
                frame = out_rx.recv() => match frame {
                    Some(frame) => {
                        if let Err(e) = send_frame(&mut stream, &frame).await {
                            break 'conn format!("write failed: {e}");
                        }
                    }
                    None => break 'conn "its cluster was removed by a configuration reload".to_string(),
                },
                _ = tick.tick() => {
                    if outstanding >= max_missed {
                        self.stats.aside_heartbeat_closes_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        break 'conn format!("{outstanding} heartbeats unanswered");
                    }
                    seq += 1;
                    if let Err(e) = send_frame(&mut stream, &Frame::Ping(Ping { seq })).await {
                        break 'conn format!("write failed: {e}");
                    }
                    outstanding += 1;
                }
            }
        };
        debug!(conn = conn_id, host = host_id, %reason, "aside connection closed");
        if let Some(list) = self.asides.borrow_mut().get_mut(&host_id) {
            list.retain(|(id, _)| *id != conn_id);
        }
        self.asides.borrow_mut().retain(|_, list| !list.is_empty());
        let _ = stream.stream.shutdown_std();
        self.conn_closed(conn_id);
    }
}

async fn send_frame(stream: &mut Channel, frame: &Frame) -> std::io::Result<()> {
    let bytes = protocol::encode_to_vec(frame).map_err(std::io::Error::other)?;
    stream.write_all(&bytes).await
}

trait ShutdownStd {
    fn shutdown_std(&self) -> std::io::Result<()>;
}

impl ShutdownStd for TcpStream {
    fn shutdown_std(&self) -> std::io::Result<()> {
        socket2::SockRef::from(self).shutdown(std::net::Shutdown::Both)
    }
}

#[cfg(test)]
mod future_sizes {
    use super::*;

    /// Every connection an agent opens runs one handshake task here; a storm of pool requests
    /// runs thousands at once, so its future must stay small (TLS and aside state are boxed).
    #[test]
    fn a_handshake_task_stays_small() {
        fn future_bytes<A, F>(_: impl Fn(A) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let handshake = future_bytes(
            |(c, s, p, q): (
                Rc<Control>,
                TcpStream,
                SocketAddr,
                tokio::sync::OwnedSemaphorePermit,
            )| { c.tunnel_conn(s, p, q) },
        );
        assert!(handshake <= 2048, "tunnel_conn future is {handshake} bytes");
    }
}

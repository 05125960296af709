//! The control path's event loop: accept agents, handshake, keep the registry, publish snapshots,
//! hand data connections to workers, serve aside connections and answer queries.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::auth;
use super::handshake::{read_init, HandshakeError};
use super::registry::{ClusterStatus, HostIdentity, HostStatus, Registry};
use super::snapshot::{ConnId, HostId};
use super::stats::{ControlStats, HandshakeOutcome};
use crate::config::agent::MAX_WEIGHT;
use crate::config::ServerConfig;
use crate::dataplane::pump::write_all;
use crate::dataplane::{HandedConn, WorkerEvent, WorkerMsg};
use crate::protocol::{self, ConnectionInitResponse, Decoded, Frame, Ping, Role, Status};

/// Handshakes in progress at once; more connections are closed at accept.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 4096;

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
    Shutdown,
}

/// Everything the control path needs to start.
pub struct ControlSetup {
    pub listener: std::net::TcpListener,
    pub config: ServerConfig,
    pub registry: Registry,
    pub workers: Vec<mpsc::UnboundedSender<WorkerMsg>>,
    pub events: mpsc::UnboundedReceiver<WorkerEvent>,
    pub commands: mpsc::UnboundedReceiver<ControlCmd>,
    pub stats: Arc<ControlStats>,
}

struct Control {
    config: ServerConfig,
    registry: RefCell<Registry>,
    workers: Vec<mpsc::UnboundedSender<WorkerMsg>>,
    handshakes: Arc<tokio::sync::Semaphore>,
    stats: Arc<ControlStats>,
    /// Accepted `hmac` credentials, refused if seen again.
    replay: RefCell<super::replay::ReplayCache>,
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
    } = setup;
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot adopt tunnel listener");
            return;
        }
    };
    let ctl = Rc::new(Control {
        config,
        registry: RefCell::new(registry),
        workers,
        handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_HANDSHAKES)),
        stats,
        replay: RefCell::default(),
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
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
                Some(ControlCmd::Shutdown) | None => break,
            },
        }
    }
    for w in &ctl.workers {
        let _ = w.send(WorkerMsg::Shutdown);
    }
}

impl Control {
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
            WorkerEvent::Starving { worker, cluster } => {
                let donor = self.registry.borrow().donor_for(&cluster, worker);
                if let Some((host_id, from)) = donor {
                    if let Some(tx) = self.workers.get(from) {
                        let _ = tx.send(WorkerMsg::Donate {
                            cluster,
                            host_id,
                            to: worker,
                        });
                    }
                }
            }
            WorkerEvent::Donated { to, conn } => {
                let conn_id = conn.conn_id;
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
        mut stream: TcpStream,
        peer: SocketAddr,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let timeout_ms = self.config.tunnel_listener.handshake_timeout_ms;
        let max_payload = self.config.tunnel_listener.max_frame_payload_bytes;
        let read = tokio::time::timeout(
            Duration::from_millis(timeout_ms),
            read_init(&mut stream, max_payload),
        )
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
                return;
            }
        };
        let decision = auth::decide(
            self.registry.borrow().cluster(&init.cluster_name),
            &init,
            auth::unix_now(),
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
                &stream,
                &Frame::InitResponse(ConnectionInitResponse::status(status)),
            )
            .await;
            let _ = stream.shutdown_std();
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
        let Some(reg) = registered else {
            // The cluster vanished between the check and now (reload); answer as unknown.
            self.stats.handshake(HandshakeOutcome::ClusterNotExist);
            let response = ConnectionInitResponse::status(Status::CLUSTER_NOT_EXIST);
            let _ = send_frame(&stream, &Frame::InitResponse(response)).await;
            return;
        };
        if reg.snapshot_changed {
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
        if let Err(e) = send_frame(&stream, &Frame::InitResponse(response)).await {
            self.stats.handshake(HandshakeOutcome::ProtocolError);
            debug!(%peer, error = %e, "agent went away during handshake");
            self.conn_closed(reg.conn_id);
            return;
        }
        self.stats.handshake(HandshakeOutcome::Success);
        drop(permit);
        let _ = stream.set_nodelay(true);
        info!(
            %peer, cluster = %init.cluster_name, host_name = %init.host_name,
            conn = reg.conn_id, role = ?role, legacy, "tunnel connection registered"
        );
        match role {
            Role::Data => self.hand_to_worker(
                stream,
                reg.conn_id,
                reg.host_id,
                &init.cluster_name,
                legacy,
                leftover,
            ),
            Role::Aside => self.aside(stream, reg.conn_id, reg.host_id, leftover).await,
        }
    }

    fn hand_to_worker(
        &self,
        stream: TcpStream,
        conn_id: ConnId,
        host_id: HostId,
        cluster: &str,
        legacy: bool,
        pending: Vec<u8>,
    ) {
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(conn = conn_id, error = %e, "cannot hand data connection to a worker");
                self.conn_closed(conn_id);
                return;
            }
        };
        let worker = self.registry.borrow_mut().assign_worker(conn_id);
        let sent = worker.and_then(|w| self.workers.get(w)).map(|tx| {
            tx.send(WorkerMsg::DataConn(HandedConn {
                conn_id,
                host_id,
                cluster: Arc::from(cluster),
                stream: std_stream,
                legacy,
                pending,
                outstanding_pings: 0,
            }))
        });
        if !matches!(sent, Some(Ok(()))) {
            self.conn_closed(conn_id);
        }
    }

    /// Serves an aside connection: heartbeats and the agent's control frames.
    async fn aside(
        &self,
        mut stream: TcpStream,
        conn_id: ConnId,
        host_id: HostId,
        mut buf: Vec<u8>,
    ) {
        let interval = Duration::from_millis(self.config.heartbeat_interval_ms);
        let max_missed = self.config.heartbeat_max_missed;
        let max_payload = self.config.tunnel_listener.max_frame_payload_bytes;
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        let mut outstanding = 0u32;
        let mut seq = 0u64;
        let mut chunk = vec![0u8; 4096];
        let reason = 'conn: loop {
            loop {
                match protocol::decode(&buf, max_payload) {
                    Ok(Decoded::NeedMore(_)) => break,
                    Ok(Decoded::Frame(frame, used)) => {
                        buf.drain(..used);
                        match frame {
                            Frame::Pong(_) => outstanding = outstanding.saturating_sub(1),
                            Frame::WeightUpdate(w) => {
                                debug!(
                                    conn = conn_id,
                                    weight = w.weight,
                                    "weight update ignored: not supported yet"
                                )
                            }
                            Frame::GracefulClose(g) => {
                                debug!(conn = conn_id, ids = ?g.connection_ids, "graceful close ignored: not supported yet")
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
                read = stream.read(&mut chunk) => match read {
                    Ok(0) => break 'conn "agent closed the aside connection".to_string(),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => break 'conn format!("read failed: {e}"),
                },
                _ = tick.tick() => {
                    if outstanding >= max_missed {
                        self.stats.aside_heartbeat_closes_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        break 'conn format!("{outstanding} heartbeats unanswered");
                    }
                    seq += 1;
                    if let Err(e) = send_frame(&stream, &Frame::Ping(Ping { seq })).await {
                        break 'conn format!("write failed: {e}");
                    }
                    outstanding += 1;
                }
            }
        };
        debug!(conn = conn_id, host = host_id, %reason, "aside connection closed");
        let _ = stream.shutdown_std();
        self.conn_closed(conn_id);
    }
}

async fn send_frame(stream: &TcpStream, frame: &Frame) -> std::io::Result<()> {
    let bytes = protocol::encode_to_vec(frame).map_err(std::io::Error::other)?;
    write_all(stream, &bytes).await
}

trait ShutdownStd {
    fn shutdown_std(&self) -> std::io::Result<()>;
}

impl ShutdownStd for TcpStream {
    fn shutdown_std(&self) -> std::io::Result<()> {
        socket2::SockRef::from(self).shutdown(std::net::Shutdown::Both)
    }
}

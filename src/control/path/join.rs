//! What an agent's init leads to, decided without I/O: credentials, registration, the per-peer
//! limits, the publication, and the response to send. Shared by the handshake task
//! (`tunnel`) and the task-free join of a plaintext data connection (`join_now`).
//!
//! Must not: read from or write to the connection (the callers send the response, each its own
//! way), or wait.

use super::peer_limits::AsideSlots;
use super::*;
use crate::protocol::ConnectionInitInfo;

/// An init accepted and registered: the response to send, then the connection's role.
pub(super) struct Joined {
    pub conn_id: ConnId,
    pub host_id: HostId,
    pub new_host: bool,
    pub role: Role,
    /// The ringtun extension version the agent announced; `None`: a legacy (MOSN) agent.
    pub extension: Option<u32>,
    /// An aside connection's place in the per-peer limits, held for as long as it is up.
    pub aside_slots: Option<AsideSlots>,
    pub response: ConnectionInitResponse,
}

impl Joined {
    pub fn legacy(&self) -> bool {
        self.extension.is_none()
    }
}

/// An init refused (counted and logged): the response that tells the agent, and whether the
/// socket is shut down after it (else it is just dropped).
pub(super) struct Refused {
    pub response: ConnectionInitResponse,
    pub shutdown: bool,
}

impl Refused {
    fn status(status: Status, shutdown: bool) -> Self {
        Self {
            response: ConnectionInitResponse::status(status),
            shutdown,
        }
    }
}

impl Control {
    /// Authenticates and registers `init` from `peer`, and publishes the change it made.
    pub(super) fn join(
        &self,
        init: &ConnectionInitInfo,
        peer: SocketAddr,
    ) -> Result<Joined, Refused> {
        let decision = auth::decide(
            self.registry.borrow().cluster(&init.cluster_name),
            init,
            crate::credential::unix_now_secs(),
            &mut self.replay.borrow_mut(),
        );
        let status = decision.status;
        if status != Status::SUCCESS {
            self.stats
                .handshake(if decision.reason == auth::reason::HMAC_REPLAY_CACHE_FULL {
                    HandshakeOutcome::ReplayCacheFull
                } else {
                    HandshakeOutcome::of_status(status)
                });
            crate::log_limited!(warn!(
                %peer, cluster = %init.cluster_name, host_name = %init.host_name,
                status = status.0, reason = decision.reason, "agent refused: {}", status.meaning()
            ));
            return Err(Refused::status(status, true));
        }
        let ext = init.ringtun();
        let legacy = ext.is_none();
        let role = ext.map_or(Role::Data, |e| e.role);
        let identity = HostIdentity {
            host_name: init.host_name.clone(),
            agent_id: ext.map_or_else(|| format!("mosn@{}", peer.ip()), |e| e.agent_id.clone()),
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
                return Err(Refused::status(Status::CLUSTER_NOT_EXIST, false));
            }
            Err(limit) => {
                self.stats.handshake(HandshakeOutcome::OverLimit);
                crate::log_limited!(warn!(
                    %peer, cluster = %init.cluster_name, host_name = %init.host_name,
                    "data connection refused (status 0): {limit}"
                ));
                return Err(Refused::status(Status::UNKNOWN_FAILURE, false));
            }
        };
        let aside_slots = match self.within_peer_limits(&reg, role, &init.cluster_name, peer.ip()) {
            Ok(slots) => slots,
            Err(limit) => {
                // Rolled back before anything was published: a refused new host was never seen.
                self.registry.borrow_mut().conn_closed(reg.conn_id);
                if reg.snapshot_changed && !reg.new_host {
                    // Its init changed a known host's weight; that change stands.
                    self.publish();
                }
                self.stats.handshake(HandshakeOutcome::OverLimit);
                crate::log_limited!(warn!(
                    %peer, cluster = %init.cluster_name, host_name = %init.host_name, role = ?role,
                    "tunnel connection refused (status 0): {limit}"
                ));
                return Err(Refused::status(Status::UNKNOWN_FAILURE, true));
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
        let extension = ext.map(|e| e.version);
        let response = match extension {
            None => ConnectionInitResponse::status(Status::SUCCESS),
            Some(version) => ConnectionInitResponse {
                status: Status::SUCCESS,
                connection_id: Some(reg.conn_id),
                heartbeat_interval_ms: Some(self.config.heartbeat_interval_ms),
                extension_version: Some(version.min(crate::protocol::EXTENSION_VERSION)),
            },
        };
        Ok(Joined {
            conn_id: reg.conn_id,
            host_id: reg.host_id,
            new_host: reg.new_host,
            role,
            extension,
            aside_slots,
            response,
        })
    }

    /// Counts and logs a join whose response reached the socket.
    pub(super) fn registered(&self, init: &ConnectionInitInfo, peer: SocketAddr, joined: &Joined) {
        self.stats.handshake(HandshakeOutcome::Success);
        let (conn, role, legacy) = (joined.conn_id, joined.role, joined.legacy());
        // Every session's data connection may be replaced by a new one: logging each at `info`
        // would make the log grow with traffic. A host's first connection and aside
        // connections are rare and worth seeing.
        if joined.new_host || role == Role::Aside {
            info!(
                %peer, cluster = %init.cluster_name, host_name = %init.host_name,
                conn, role = ?role, legacy, new_host = joined.new_host,
                "tunnel connection registered"
            );
        } else {
            debug!(
                %peer, cluster = %init.cluster_name, host_name = %init.host_name,
                conn, role = ?role, legacy, "tunnel connection registered"
            );
        }
    }

    /// A join whose response could not be sent: the agent went away.
    pub(super) fn response_failed(&self, peer: SocketAddr, conn_id: ConnId, e: &std::io::Error) {
        self.stats.handshake(HandshakeOutcome::ProtocolError);
        debug!(%peer, error = %e, "agent went away during handshake");
        self.conn_closed(conn_id);
    }
}

/// Sends a refusal's response (best effort: the agent may be gone) and closes the connection.
pub(super) async fn refuse(mut stream: Channel, refused: Refused, deadline: tokio::time::Instant) {
    let _ = send_by(
        deadline,
        &mut stream,
        &Frame::InitResponse(refused.response),
    )
    .await;
    if refused.shutdown {
        let _ = stream.stream.shutdown_std();
    }
}

/// Sends `frame`, giving up at the handshake's `deadline` (an agent that does not read its
/// answer must not hold a handshake slot for longer than one that does not send its init).
pub(super) async fn send_by(
    deadline: tokio::time::Instant,
    stream: &mut Channel,
    frame: &Frame,
) -> std::io::Result<()> {
    match tokio::time::timeout_at(deadline, send_frame(stream, frame)).await {
        Ok(sent) => sent,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the answer was not read within handshake_timeout_ms",
        )),
    }
}

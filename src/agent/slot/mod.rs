//! One connection slot: dial, serve, re-dial, until its peer stops (or `connect_retry_times`
//! attempts fail).
//!
//! A data slot keeps one idle data connection to its server: answers heartbeats, and on a session
//! start connects the hosting listener's backend and pumps; with framed sessions (extension
//! version 2, `framed`) the connection then waits for the next session, otherwise the slot dials
//! a replacement at once. An extra data slot (asked for by a pool request) does the same, so a pool
//! grown by demand stays grown while the demand lasts; its connection is let go, and the slot
//! ends, once it idles for `extra_connection_idle_duration_ms`. The aside slot keeps the per-server control
//! connection: heartbeats, weight updates, graceful close, drain and pool requests.
//!
//! On stop a data slot ends its own session: its sockets are shut down and its pump runs to the
//! end (an io_uring pump has reads in flight, which are never dropped); the slot's future is never
//! dropped mid-session. Slots run on one worker each and use that worker's [`Local`] state.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, error, info, trace, warn, Instrument};

mod aside;
mod data;
mod framed;
mod mosn;
mod udp;

use super::backoff::Backoff;
use super::dial::{dial, open, DialError, Dialed, InitParams, MAX_SERVER_FRAME_PAYLOAD_BYTES};
use super::peer::{AsideCmd, AsideCommands, ConnCell, Peer, ServerKind, SlotGuard};
use super::resolve::BackendCache;
use super::{AgentStats, Shared};
use crate::config::ServerType;
use crate::dataplane::pump::{pump_conns, pump_tls, Pools};
use crate::protocol::{
    self, Decoded, Frame, GracefulCloseOnewayRequest, Pong, Role, SessionStart, WeightUpdate,
};
use crate::rt::Conn;
use crate::tls::Channel;
use aside::serve_aside;
use data::serve_data;
use mosn::{serve_mosn_aside, serve_mosn_data};

/// Which slot this is.
#[derive(Clone)]
pub struct SlotSpec {
    pub peer: Arc<Peer>,
    pub role: Role,
    pub index: u32,
    /// Started by a pool request: re-dials after each session, ends once its connection idles
    /// for the tunnel's `extra_connection_idle_duration_ms` (or is lost).
    pub extra: bool,
}

/// How a served connection ended.
enum Ended {
    /// A session ran on it; dial the replacement at once.
    Session,
    /// It closed or failed while idle.
    Lost(String),
    /// The agent is stopping (any session on it was ended cleanly).
    Stopped,
}

/// What one agent worker owns and lends to each of its slots: its buffer pools, its counters
/// (summed by readers) and its cache of backend addresses.
pub struct Local {
    pub pool: Pools,
    pub stats: Arc<AgentStats>,
    pub backends: BackendCache,
}

/// True once the agent's stop was sent (an atomic load: no lock on a session's path).
fn stop_sent(stop: &watch::Receiver<bool>) -> bool {
    stop.has_changed().unwrap_or(true)
}

/// Heartbeats the agent may miss before it presumes the server dead (the server closes after 3).
const SERVER_SILENCE_INTERVALS: u64 = 4;

pub async fn run(
    shared: Arc<Shared>,
    spec: SlotSpec,
    local: Rc<Local>,
    mut stop: watch::Receiver<bool>,
) {
    let peer = spec.peer.clone();
    let Some(tunnel) = shared.config.tunnels.get(peer.tunnel) else {
        return;
    };
    // Extra slots were counted when they were asked for (see `Shared::extra_slots`).
    let slot = (spec.role == Role::Data).then(|| {
        if spec.extra {
            SlotGuard::adopt(peer.clone(), true)
        } else {
            SlotGuard::new(peer.clone(), false)
        }
    });
    let mut aside_commands = match spec.role {
        Role::Aside => peer.take_aside_commands(),
        Role::Data => None,
    };
    let backoff = Backoff {
        base_ms: tunnel.reconnect_base_duration_ms,
        max_ms: tunnel.reconnect_max_duration_ms,
    };
    let connect_timeout_ms = tunnel.connect_timeout_duration_ms;
    let mut failures = 0u32;
    let mut attempts = 0u64;
    loop {
        if stop_sent(&stop) || (spec.role == Role::Data && peer.stopping()) {
            return;
        }
        if spec.role == Role::Aside && peer.stopping() && peer.finished() {
            return;
        }
        attempts += 1;
        let params = InitParams {
            cluster: &tunnel.cluster,
            host_name: &shared.config.host_name,
            weight: shared.weight(),
            credential_policy: &tunnel.credential_policy,
            credential: tunnel.credential.as_ref(),
            agent_id: &shared.agent_id,
            role: spec.role,
            max_connection_num: tunnel.max_connections(),
            tls: shared.tls.get(peer.tunnel).and_then(Option::as_ref),
            server_name: &peer.name,
        };
        // The aside connection must know what the server is before it writes anything: a MOSN
        // aside sends no init. With `auto`, the first data connection's answer tells.
        let aside_kind = match (spec.role, tunnel.server_type) {
            (Role::Data, _) => None,
            (Role::Aside, ServerType::Mosn) => Some(ServerKind::Mosn),
            (Role::Aside, ServerType::Ringtun) => Some(ServerKind::Ringtun),
            (Role::Aside, ServerType::Auto) => tokio::select! {
                k = peer.kind() => Some(k),
                _ = stop.changed() => return,
            },
        };
        if aside_kind == Some(ServerKind::Mosn) {
            let tls = shared.tls.get(peer.tunnel).and_then(Option::as_ref);
            let opened = tokio::select! {
                r = tokio::time::timeout(Duration::from_millis(connect_timeout_ms), Box::pin(open(peer.addr, &peer.name, tls))) => {
                    r.unwrap_or(Err(DialError::Timeout { peer: peer.addr, timeout_ms: connect_timeout_ms }))
                }
                _ = stop.changed() => return,
            };
            let lost = match opened {
                Ok((stream, _)) => {
                    attempts = 0;
                    let ended = tokio::select! {
                        e = Box::pin(serve_mosn_aside(&shared, &spec, stream, &local)) => e,
                        _ = stop.changed() => return,
                    };
                    if let Ended::Lost(why) = ended {
                        debug!(peer = %peer.addr, reason = %why, "MOSN aside connection lost; re-dialling");
                    }
                    failures = 1;
                    continue;
                }
                Err(e) => e,
            };
            failures = failures.saturating_add(1);
            let delay = backoff.delay(failures, fastrand::f64());
            warn!(peer = %peer.addr, cluster = %tunnel.cluster, role = ?spec.role, attempt = failures,
                retry_in_ms = delay.as_millis() as u64, "{lost}; retrying in {} ms", delay.as_millis());
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        let dialed = tokio::select! {
            // Boxed, like each phase below: the slot's own future stays small while it idles.
            r = tokio::time::timeout(Duration::from_millis(connect_timeout_ms), Box::pin(dial(peer.addr, &params))) => {
                r.unwrap_or(Err(DialError::Timeout { peer: peer.addr, timeout_ms: connect_timeout_ms }))
            }
            _ = stop.changed() => return,
        };
        let lost = match dialed {
            Ok(conn) => {
                if failures > 0 {
                    info!(peer = %peer.addr, cluster = %tunnel.cluster, role = ?spec.role, "connected after {failures} failed attempts");
                }
                failures = 0;
                attempts = 0;
                let kind = match tunnel.server_type {
                    ServerType::Mosn => ServerKind::Mosn,
                    ServerType::Ringtun => ServerKind::Ringtun,
                    // A ringtun server always answers with its connection id and heartbeat.
                    ServerType::Auto
                        if conn.connection_id.is_none() && conn.heartbeat_interval_ms.is_none() =>
                    {
                        ServerKind::Mosn
                    }
                    ServerType::Auto => ServerKind::Ringtun,
                };
                if spec.role == Role::Data {
                    peer.set_kind(kind);
                }
                let ended = match (spec.role, slot.as_ref()) {
                    // Not raced against the stop: a data connection ends its own session on
                    // stop (an io_uring pump must not be dropped with reads in flight).
                    (Role::Data, Some(slot)) if kind == ServerKind::Mosn => {
                        Box::pin(serve_mosn_data(
                            &shared,
                            &spec,
                            slot.cell(),
                            conn,
                            &local,
                            &mut stop,
                        ))
                        .await
                    }
                    (Role::Data, Some(slot)) => {
                        peer.conn_up(slot.cell(), conn.connection_id);
                        let ended = Box::pin(serve_data(
                            &shared,
                            &spec,
                            slot.cell(),
                            conn,
                            &local,
                            &mut stop,
                        ))
                        .await;
                        peer.conn_down(slot.cell());
                        ended
                    }
                    (Role::Data, None) => return,
                    (Role::Aside, _) => tokio::select! {
                        e = Box::pin(serve_aside(&shared, &spec, conn, &local, aside_commands.as_mut())) => e,
                        _ = stop.changed() => return,
                    },
                };
                match ended {
                    // An extra connection that carried a session is replaced like any other:
                    // while demand stays above `connection_num`, a pool request per session
                    // would add a round trip through the server to each one. A replacement
                    // that then idles for `extra_connection_idle_duration_ms` is let go, and
                    // the slot ends.
                    Ended::Session => continue,
                    Ended::Stopped => return,
                    Ended::Lost(_) if spec.extra => return,
                    Ended::Lost(why) => {
                        debug!(peer = %peer.addr, role = ?spec.role, reason = %why, "tunnel connection lost; re-dialling");
                        // The first re-dial is immediate; repeated losses back off.
                        failures = 1;
                        continue;
                    }
                }
            }
            Err(e) => e,
        };
        failures = failures.saturating_add(1);
        local
            .stats
            .dial_failures_total
            .fetch_add(1, Ordering::Relaxed);
        if spec.extra {
            // A warning: an extra connection that cannot be opened (a bad certificate, a full
            // server) is what a starving frontend waits on.
            crate::log_limited!(warn!(peer = %peer.addr, cluster = %tunnel.cluster,
                "extra data connection (pool request) not opened: {lost}"));
            return;
        }
        if let Some(limit) = tunnel.retry_limit() {
            if attempts >= limit {
                error!(peer = %peer.addr, cluster = %tunnel.cluster, role = ?spec.role,
                    "{lost}; giving up after {attempts} attempts (connect_retry_times)");
                return;
            }
        }
        let delay = backoff.delay(failures, fastrand::f64());
        warn!(peer = %peer.addr, cluster = %tunnel.cluster, role = ?spec.role, attempt = failures,
            retry_in_ms = delay.as_millis() as u64, "{lost}; retrying in {} ms", delay.as_millis());
        let mut state = peer.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = state.changed() => {}
            _ = stop.changed() => return,
        }
    }
}

pub(super) async fn send(stream: &mut Channel, frame: &Frame) -> Result<(), String> {
    let bytes = protocol::encode_to_vec(frame).map_err(|e| e.to_string())?;
    stream
        .write_all(&bytes)
        .await
        .map_err(|e| format!("write failed: {e}"))
}

#[cfg(test)]
mod stop_tests;

#[cfg(test)]
mod future_sizes {
    //! An idle agent connection costs its slot task and the boxed `serve_data` future: these
    //! bounds keep stack buffers and TLS state out of them.
    use super::*;
    use std::net::SocketAddr;

    fn future_bytes<A, F>(_: impl Fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn an_idle_slot_stays_small() {
        let slot = future_bytes(
            |(a, b, c, d): (Arc<Shared>, SlotSpec, Rc<Local>, watch::Receiver<bool>)| {
                run(a, b, c, d)
            },
        );
        assert!(slot <= 1536, "slot::run future is {slot} bytes");
        let data = future_bytes(
            |(a, b, c, d, e, f): (
                &Shared,
                &SlotSpec,
                &ConnCell,
                Dialed,
                &Local,
                &mut watch::Receiver<bool>,
            )| serve_data(a, b, c, d, e, f),
        );
        assert!(data <= 2048, "serve_data future is {data} bytes");
        let dialing = future_bytes(|(a, p): (SocketAddr, &InitParams)| dial(a, p));
        assert!(dialing <= 1024, "dial future is {dialing} bytes");
    }
}

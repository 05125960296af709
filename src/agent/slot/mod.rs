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

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::rt::ReadyStream;
use tokio::sync::watch;
use tracing::{debug, error, info, trace, warn, Instrument};

mod aside;
mod backend;
mod data;
mod framed;
mod mosn;
mod udp;
mod udp_framed;

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

/// How the slot's attempts have gone: failures in a row (for the back-off) and attempts since
/// the last connection (for `connect_retry_times`).
#[derive(Default)]
struct Attempts {
    failures: u32,
    since_connected: u64,
}

/// What one attempt to connect leaves the slot to do.
enum Next {
    /// Connected: serve the connection.
    Serve(Box<Dialed>, ServerKind),
    /// Try again (after a back-off, or after a MOSN aside connection ended).
    Again,
    /// The agent is stopping, or the slot gives up.
    End,
}

pub async fn run(
    shared: Arc<Shared>,
    spec: SlotSpec,
    local: Rc<Local>,
    mut stop: watch::Receiver<bool>,
) {
    if shared.config.tunnels.get(spec.peer.tunnel).is_none() {
        return;
    }
    // Extra slots were counted when they were asked for (see `Shared::extra_slots`).
    let slot = (spec.role == Role::Data).then(|| {
        if spec.extra {
            SlotGuard::adopt(spec.peer.clone(), true)
        } else {
            SlotGuard::new(spec.peer.clone(), false)
        }
    });
    let mut aside_commands = match spec.role {
        Role::Aside => spec.peer.take_aside_commands(),
        Role::Data => None,
    };
    let mut attempts = Attempts::default();
    loop {
        // Each phase is boxed: this future, which lives as long as the slot, holds only what
        // an idle connection needs (the dial's state and the back-off's timers are gone then).
        let serving =
            match Box::pin(connect(&shared, &spec, &local, &mut stop, &mut attempts)).await {
                Next::Serve(conn, kind) => serve(
                    Serving {
                        shared: &shared,
                        spec: &spec,
                        slot: slot.as_ref(),
                        local: &local,
                        stop: &mut stop,
                        aside_commands: aside_commands.as_mut(),
                    },
                    conn,
                    kind,
                ),
                Next::Again => continue,
                Next::End => return,
            };
        let Some(serving) = serving else {
            return;
        };
        match serving.await {
            // An extra connection that carried a session is replaced like any other:
            // while demand stays above `connection_num`, a pool request per session
            // would add a round trip through the server to each one. A replacement
            // that then idles for `extra_connection_idle_duration_ms` is let go, and
            // the slot ends.
            Ended::Session => continue,
            Ended::Stopped => return,
            Ended::Lost(_) if spec.extra => return,
            Ended::Lost(why) => {
                debug!(peer = %spec.peer.addr, role = ?spec.role, reason = %why, "tunnel connection lost; re-dialling");
                // The first re-dial is immediate; repeated losses back off.
                attempts.failures = 1;
                continue;
            }
        }
    }
}

/// One attempt: dial the slot's server (after a failure, back off before returning). A MOSN
/// aside connection is opened and served here, to its end: it sends no init.
async fn connect(
    shared: &Shared,
    spec: &SlotSpec,
    local: &Local,
    stop: &mut watch::Receiver<bool>,
    attempts: &mut Attempts,
) -> Next {
    let peer = &spec.peer;
    let Some(tunnel) = shared.config.tunnels.get(peer.tunnel) else {
        return Next::End;
    };
    if stop_sent(stop) || (spec.role == Role::Data && peer.stopping()) {
        return Next::End;
    }
    if spec.role == Role::Aside && peer.stopping() && peer.finished() {
        return Next::End;
    }
    attempts.since_connected += 1;
    let backoff = Backoff {
        base_ms: tunnel.reconnect_base_duration_ms,
        max_ms: tunnel.reconnect_max_duration_ms,
    };
    let connect_timeout_ms = tunnel.connect_timeout_duration_ms;
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
            _ = stop.changed() => return Next::End,
        },
    };
    if aside_kind == Some(ServerKind::Mosn) {
        let tls = shared.tls.get(peer.tunnel).and_then(Option::as_ref);
        let opened = tokio::select! {
            r = crate::rt::time::timeout(Duration::from_millis(connect_timeout_ms), Box::pin(open(peer.addr, &peer.name, tls))) => {
                r.unwrap_or(Err(DialError::Timeout { peer: peer.addr, timeout_ms: connect_timeout_ms }))
            }
            _ = stop.changed() => return Next::End,
        };
        let lost = match opened {
            Ok((stream, _)) => {
                attempts.since_connected = 0;
                let ended = tokio::select! {
                    e = Box::pin(serve_mosn_aside(shared, spec, stream, local)) => e,
                    _ = stop.changed() => return Next::End,
                };
                if let Ended::Lost(why) = ended {
                    debug!(peer = %peer.addr, reason = %why, "MOSN aside connection lost; re-dialling");
                }
                attempts.failures = 1;
                return Next::Again;
            }
            Err(e) => e,
        };
        attempts.failures = attempts.failures.saturating_add(1);
        let delay = backoff.delay(attempts.failures, fastrand::f64());
        warn!(peer = %peer.addr, cluster = %tunnel.cluster, role = ?spec.role, attempt = attempts.failures,
            retry_in_ms = delay.as_millis() as u64, "{lost}; retrying in {} ms", delay.as_millis());
        tokio::select! {
            _ = crate::rt::time::sleep(delay) => {}
            _ = stop.changed() => return Next::End,
        }
        return Next::Again;
    }
    let dialed = tokio::select! {
        r = crate::rt::time::timeout(Duration::from_millis(connect_timeout_ms), Box::pin(dial(peer.addr, &params))) => {
            r.unwrap_or(Err(DialError::Timeout { peer: peer.addr, timeout_ms: connect_timeout_ms }))
        }
        _ = stop.changed() => return Next::End,
    };
    let lost = match dialed {
        Ok(conn) => {
            if attempts.failures > 0 {
                info!(peer = %peer.addr, cluster = %tunnel.cluster, role = ?spec.role,
                    "connected after {} failed attempts", attempts.failures);
            }
            attempts.failures = 0;
            attempts.since_connected = 0;
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
            // Boxed: serving moves it on, and an idle connection's future keeps none of it.
            return Next::Serve(Box::new(conn), kind);
        }
        Err(e) => e,
    };
    attempts.failures = attempts.failures.saturating_add(1);
    local
        .stats
        .dial_failures_total
        .fetch_add(1, Ordering::Relaxed);
    if spec.extra {
        // A warning: an extra connection that cannot be opened (a bad certificate, a full
        // server) is what a starving frontend waits on.
        crate::log_limited!(warn!(peer = %peer.addr, cluster = %tunnel.cluster,
            "extra data connection (pool request) not opened: {lost}"));
        return Next::End;
    }
    if let Some(limit) = tunnel.retry_limit() {
        if attempts.since_connected >= limit {
            error!(peer = %peer.addr, cluster = %tunnel.cluster, role = ?spec.role,
                "{lost}; giving up after {} attempts (connect_retry_times)", attempts.since_connected);
            return Next::End;
        }
    }
    let delay = backoff.delay(attempts.failures, fastrand::f64());
    warn!(peer = %peer.addr, cluster = %tunnel.cluster, role = ?spec.role, attempt = attempts.failures,
        retry_in_ms = delay.as_millis() as u64, "{lost}; retrying in {} ms", delay.as_millis());
    let mut state = peer.subscribe();
    tokio::select! {
        _ = crate::rt::time::sleep(delay) => {}
        _ = state.changed() => {}
        _ = stop.changed() => return Next::End,
    }
    Next::Again
}

/// What serving a connection borrows from its slot.
struct Serving<'a> {
    shared: &'a Shared,
    spec: &'a SlotSpec,
    slot: Option<&'a SlotGuard>,
    local: &'a Local,
    stop: &'a mut watch::Receiver<bool>,
    aside_commands: Option<&'a mut AsideCommands>,
}

/// The future that serves `conn` for its slot, boxed (its state lives only while the
/// connection does); `None` for a data slot without its guard (never made).
fn serve(
    with: Serving<'_>,
    conn: Box<Dialed>,
    kind: ServerKind,
) -> Option<Pin<Box<dyn Future<Output = Ended> + '_>>> {
    let Serving {
        shared,
        spec,
        slot,
        local,
        stop,
        aside_commands,
    } = with;
    match (spec.role, slot) {
        // Not raced against the stop: a data connection ends its own session on stop (an
        // io_uring pump must not be dropped with reads in flight).
        (Role::Data, Some(slot)) if kind == ServerKind::Mosn => Some(Box::pin(serve_mosn_data(
            shared,
            spec,
            slot.cell(),
            *conn,
            local,
            stop,
        ))),
        (Role::Data, Some(slot)) => Some(Box::pin(serve_data(
            shared,
            spec,
            slot.cell(),
            conn,
            local,
            stop,
        ))),
        (Role::Data, None) => None,
        (Role::Aside, _) => Some(Box::pin(async move {
            tokio::select! {
                e = serve_aside(shared, spec, *conn, local, aside_commands) => e,
                _ = stop.changed() => Ended::Stopped,
            }
        })),
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
    //! An idle agent connection costs its slot task and the boxed `serve_data` future (with
    //! `wait_for_session` inline): these bounds keep stack buffers, TLS state and the other
    //! phases' state (dial, back-off, sessions) out of them. Measured (debug build): 184, 816
    //! and 416 bytes; 1,232 and 1,824 (and 1,040) before the other phases were boxed.
    use super::*;
    use std::net::SocketAddr;

    /// `wait_for_session`'s release: the connection's id, and after how long.
    type Release = Option<(u64, Duration)>;

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
        assert!(slot <= 256, "slot::run future is {slot} bytes");
        let data = future_bytes(
            |(a, b, c, d, e, f): (
                &Shared,
                &SlotSpec,
                &ConnCell,
                Box<Dialed>,
                &Local,
                &mut watch::Receiver<bool>,
            )| serve_data(a, b, c, d, e, f),
        );
        assert!(data <= 896, "serve_data future is {data} bytes");
        let waiting = future_bytes(
            |(a, b, c, d, e): (&mut Channel, Vec<u8>, Option<Duration>, &Peer, Release)| {
                data::wait_for_session(a, b, c, d, e)
            },
        );
        assert!(waiting <= 448, "wait_for_session future is {waiting} bytes");
        let dialing = future_bytes(|(a, p): (SocketAddr, &InitParams)| dial(a, p));
        assert!(dialing <= 1024, "dial future is {dialing} bytes");
    }
}

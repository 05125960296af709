//! One connection slot: dial, serve, re-dial, until its peer stops (or `connect_retry_times`
//! attempts fail).
//!
//! A data slot keeps one idle data connection to its server: answers heartbeats, and on a session
//! start connects the hosting listener's backend and pumps; when the session ends it dials a
//! replacement at once. An extra data slot (asked for by a pool request) does the same, so a pool
//! grown by demand stays grown while the demand lasts; its connection is let go, and the slot
//! ends, once it idles for `extra_connection_idle_duration_ms`. The aside slot keeps the per-server control
//! connection: heartbeats, weight updates, graceful close, drain and pool requests.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, error, info, warn, Instrument};

use super::backoff::Backoff;
use super::dial::{dial, DialError, Dialed, InitParams, MAX_SERVER_FRAME_PAYLOAD_BYTES};
use super::peer::{AsideCmd, Peer, SlotGuard};
use super::Shared;
use crate::dataplane::pump::{pump_conns, pump_tls, Pools};
use crate::protocol::{
    self, Decoded, Frame, GracefulCloseOnewayRequest, Pong, Role, SessionStart, WeightUpdate,
};
use crate::rt::Conn;
use crate::tls::Channel;

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
}

/// Heartbeats the agent may miss before it presumes the server dead (the server closes after 3).
const SERVER_SILENCE_INTERVALS: u64 = 4;

pub async fn run(
    shared: Arc<Shared>,
    spec: SlotSpec,
    pool: Pools,
    mut stop: watch::Receiver<bool>,
) {
    let peer = spec.peer.clone();
    let Some(tunnel) = shared.config.tunnels.get(peer.tunnel) else {
        return;
    };
    // Extra slots were counted when they were asked for (see `Shared::extra_slots`).
    let _slot = (spec.role == Role::Data).then(|| {
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
        if *stop.borrow() || (spec.role == Role::Data && peer.stopping()) {
            return;
        }
        if spec.role == Role::Aside && peer.stopping() && peer.finished() {
            return;
        }
        attempts += 1;
        let params = InitParams {
            cluster: &tunnel.cluster,
            host_name: &shared.config.host_name,
            weight: *shared.weight.borrow(),
            credential_policy: &tunnel.credential_policy,
            credential: tunnel.credential.as_ref(),
            agent_id: &shared.agent_id,
            role: spec.role,
            max_connection_num: tunnel.max_connections(),
            tls: shared.tls.get(peer.tunnel).and_then(Option::as_ref),
        };
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
                let ended = match spec.role {
                    Role::Data => {
                        let id = conn.connection_id;
                        peer.conn_up(id);
                        let ended = tokio::select! {
                            e = Box::pin(serve_data(&shared, &spec, conn, &pool)) => e,
                            _ = stop.changed() => return,
                        };
                        peer.conn_down(id);
                        ended
                    }
                    Role::Aside => tokio::select! {
                        e = Box::pin(serve_aside(&shared, &spec, conn, aside_commands.as_mut())) => e,
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
        shared
            .stats
            .dial_failures_total
            .fetch_add(1, Ordering::Relaxed);
        if spec.extra {
            debug!(peer = %peer.addr, "extra data connection not opened: {lost}");
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

async fn serve_data(shared: &Shared, spec: &SlotSpec, conn: Dialed, pool: &Pools) -> Ended {
    let Dialed {
        mut stream,
        heartbeat_interval_ms,
        leftover,
        connection_id,
    } = conn;
    let Some(tunnel) = shared.config.tunnels.get(spec.peer.tunnel) else {
        return Ended::Lost("no such tunnel".into());
    };
    let _up = shared.connection_up(spec.peer.tunnel, Role::Data);
    shared
        .stats
        .idle_data_connections
        .fetch_add(1, Ordering::Relaxed);
    let silence = heartbeat_interval_ms
        .map(|ms| Duration::from_millis(ms.saturating_mul(SERVER_SILENCE_INTERVALS)));
    let release = match (spec.extra, connection_id) {
        (true, Some(id)) => Some((
            id,
            Duration::from_millis(tunnel.extra_connection_idle_duration_ms),
        )),
        _ => None,
    };
    let waited = wait_for_session(&mut stream, leftover, silence, &spec.peer, release).await;
    shared
        .stats
        .idle_data_connections
        .fetch_sub(1, Ordering::Relaxed);
    match waited {
        Ok((start, rest)) => {
            spec.peer.conn_down(connection_id);
            let span =
                tracing::debug_span!("session", id = start.session_id, client = %start.client_addr);
            // Boxed: only a session pays for its pump's state, not every idle connection.
            Box::pin(run_session(
                shared,
                spec.peer.tunnel,
                stream,
                start,
                rest,
                pool,
            ))
            .instrument(span)
            .await;
            Ended::Session
        }
        Err(why) => Ended::Lost(why),
    }
}

/// Answers pings until a session starts; returns it and the session bytes already read. An
/// extra connection asks once, after `release`'s delay, to be let go. Bytes live in `buf` across
/// waits (a cancelled `read` loses none), so timers can be raced against reads safely.
async fn wait_for_session(
    stream: &mut Channel,
    mut buf: Vec<u8>,
    silence: Option<Duration>,
    peer: &Peer,
    mut release: Option<(u64, Duration)>,
) -> Result<(SessionStart, Vec<u8>), String> {
    let started = tokio::time::Instant::now();
    let mut last_heard = started;
    let far = Duration::from_secs(86_400 * 365);
    loop {
        match protocol::decode(&buf, MAX_SERVER_FRAME_PAYLOAD_BYTES) {
            Ok(Decoded::Frame(frame, used)) => {
                buf.drain(..used);
                match frame {
                    Frame::Ping(p) => {
                        let pong = Frame::Pong(Pong { seq: p.seq });
                        send(stream, &pong).await?;
                    }
                    Frame::SessionStart(s) => return Ok((s, buf)),
                    other => {
                        return Err(format!(
                            "unexpected {} frame on a data connection",
                            other.flag().name()
                        ))
                    }
                }
                continue;
            }
            Ok(Decoded::NeedMore(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
        let silent_at = last_heard + silence.unwrap_or(far);
        let release_at = release.map_or(started + far, |(_, after)| started + after);
        tokio::select! {
            read = stream.read_into(&mut buf) => match read {
                Ok(0) => return Err("server closed the connection".into()),
                Ok(_) => {
                    last_heard = tokio::time::Instant::now();
                }
                Err(e) => return Err(format!("read failed: {e}")),
            },
            _ = tokio::time::sleep_until(silent_at) => {
                return Err(format!("server silent for {} ms (missed heartbeats)", silence.unwrap_or(far).as_millis()));
            }
            _ = tokio::time::sleep_until(release_at), if release.is_some() => {
                if let Some((id, _)) = release.take() {
                    peer.release(id);
                }
            }
        }
    }
}

/// Serves the aside connection: heartbeats, weight changes, graceful close, drain, pool requests.
async fn serve_aside(
    shared: &Shared,
    spec: &SlotSpec,
    conn: Dialed,
    mut commands: Option<&mut tokio::sync::mpsc::UnboundedReceiver<AsideCmd>>,
) -> Ended {
    let Dialed {
        mut stream,
        heartbeat_interval_ms,
        leftover,
        ..
    } = conn;
    let peer = &spec.peer;
    let Some(tunnel) = shared.config.tunnels.get(peer.tunnel) else {
        return Ended::Lost("no such tunnel".into());
    };
    let _up = shared.connection_up(peer.tunnel, Role::Aside);
    shared
        .stats
        .aside_connections
        .fetch_add(1, Ordering::Relaxed);
    let silence = heartbeat_interval_ms
        .map(|ms| Duration::from_millis(ms.saturating_mul(SERVER_SILENCE_INTERVALS)))
        .unwrap_or(Duration::MAX);
    let mut weight = shared.weight.subscribe();
    // The init carried the weight read before dialling; announce the current one once so a
    // change in between is not lost.
    weight.mark_changed();
    let mut state = peer.subscribe();
    let mut buf = leftover;
    let mut last_heard = tokio::time::Instant::now();
    let ended = 'conn: loop {
        loop {
            match protocol::decode(&buf, MAX_SERVER_FRAME_PAYLOAD_BYTES) {
                Ok(Decoded::NeedMore(_)) => break,
                Ok(Decoded::Frame(frame, used)) => {
                    buf.drain(..used);
                    let reply = match frame {
                        Frame::Ping(p) => Some(Frame::Pong(Pong { seq: p.seq })),
                        Frame::Drain(d) => {
                            info!(peer = %peer.addr, cluster = %tunnel.cluster, grace_ms = d.grace_ms,
                                "server is draining; its connections end when it stops, and are re-dialled when it returns");
                            None
                        }
                        Frame::PoolRequest(r) => {
                            shared.extra_slots(peer, r.count);
                            None
                        }
                        other => {
                            break 'conn Ended::Lost(format!(
                                "unexpected {} frame on the aside connection",
                                other.flag().name()
                            ))
                        }
                    };
                    if let Some(reply) = reply {
                        if let Err(e) = send(&mut stream, &reply).await {
                            break 'conn Ended::Lost(e);
                        }
                    }
                }
                Err(e) => break 'conn Ended::Lost(e.to_string()),
            }
        }
        if peer.stopping() && peer.finished() {
            break Ended::Lost("peer stopped".into());
        }
        let deadline = last_heard + silence.min(Duration::from_secs(86_400 * 365));
        tokio::select! {
            read = stream.read_into(&mut buf) => match read {
                Ok(0) => break Ended::Lost("server closed the aside connection".into()),
                Ok(_) => {
                    last_heard = tokio::time::Instant::now();
                }
                Err(e) => break Ended::Lost(format!("read failed: {e}")),
            },
            _ = tokio::time::sleep_until(deadline) => {
                break Ended::Lost(format!("server silent for {} ms (missed heartbeats)", silence.as_millis()));
            }
            changed = weight.changed() => {
                if changed.is_err() { continue; }
                let w = *weight.borrow_and_update();
                let update = Frame::WeightUpdate(WeightUpdate { cluster_name: tunnel.cluster.clone(), weight: w });
                if let Err(e) = send(&mut stream, &update).await {
                    break Ended::Lost(e);
                }
                info!(peer = %peer.addr, cluster = %tunnel.cluster, weight = w, "weight update sent");
            }
            cmd = async { match commands.as_mut() { Some(c) => c.recv().await, None => std::future::pending().await } } => {
                let Some(AsideCmd::GracefulClose(ids)) = cmd else { continue };
                let request = Frame::GracefulClose(GracefulCloseOnewayRequest {
                    addresses: Vec::new(),
                    cluster_name: tunnel.cluster.clone(),
                    connection_ids: ids,
                });
                if let Err(e) = send(&mut stream, &request).await {
                    break Ended::Lost(e);
                }
            }
            _ = state.changed() => {}
            // Wake up now and then to notice the peer finishing.
            _ = tokio::time::sleep(Duration::from_millis(100)), if peer.stopping() => {}
        }
    };
    shared
        .stats
        .aside_connections
        .fetch_sub(1, Ordering::Relaxed);
    ended
}

async fn send(stream: &mut Channel, frame: &Frame) -> Result<(), String> {
    let bytes = protocol::encode_to_vec(frame).map_err(|e| e.to_string())?;
    stream
        .write_all(&bytes)
        .await
        .map_err(|e| format!("write failed: {e}"))
}

async fn run_session(
    shared: &Shared,
    tunnel: usize,
    data: Channel,
    start: SessionStart,
    prefix: Vec<u8>,
    pool: &Pools,
) {
    let stats = &shared.stats;
    stats.sessions_total.fetch_add(1, Ordering::Relaxed);
    let Some(listener) = shared.listener_of(tunnel) else {
        return;
    };
    // Boxed: name resolution makes the connect future large, and the pump does not need it.
    let connect = Box::pin(tokio::time::timeout(
        Duration::from_millis(listener.connect_timeout_ms),
        TcpStream::connect(listener.backend.as_str()),
    ))
    .await;
    let backend = match connect {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            stats.backend_failures_total.fetch_add(1, Ordering::Relaxed);
            warn!(session = start.session_id, client = %start.client_addr, backend = %listener.backend,
                "cannot connect to backend: {e}; closing the session");
            return;
        }
        Err(_) => {
            stats.backend_failures_total.fetch_add(1, Ordering::Relaxed);
            warn!(session = start.session_id, backend = %listener.backend,
                "backend connect timed out after {} ms; closing the session", listener.connect_timeout_ms);
            return;
        }
    };
    let _ = backend.set_nodelay(true);
    let (data, tls) = data.into_parts();
    let adopted = Conn::from_tokio(shared.backend, data)
        .and_then(|d| Ok((d, Conn::from_tokio(shared.backend, backend)?)));
    let (data, backend) = match adopted {
        Ok(pair) => pair,
        Err(e) => {
            warn!(
                session = start.session_id,
                "cannot adopt session sockets: {e}"
            );
            return;
        }
    };
    stats.active_sessions.fetch_add(1, Ordering::Relaxed);
    let moved = match tls {
        // Boxed: a TLS session's state is large, and plaintext sessions should not carry it.
        Some(session) => {
            Box::pin(pump_tls(&data, &backend, session, prefix, Vec::new(), pool)).await
        }
        None => pump_conns(&data, &backend, Vec::new(), prefix, pool).await,
    };
    stats.active_sessions.fetch_sub(1, Ordering::Relaxed);
    match moved {
        Ok(m) => {
            stats
                .bytes_to_backend_total
                .fetch_add(m.a_to_b, Ordering::Relaxed);
            stats
                .bytes_from_backend_total
                .fetch_add(m.b_to_a, Ordering::Relaxed);
        }
        Err(e) => debug!(session = start.session_id, error = %e, "session ended with error"),
    }
}

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
            |(a, b, c, d): (Arc<Shared>, SlotSpec, Pools, watch::Receiver<bool>)| run(a, b, c, d),
        );
        assert!(slot <= 1536, "slot::run future is {slot} bytes");
        let data = future_bytes(|(a, b, c, d): (&Shared, &SlotSpec, Dialed, &Pools)| {
            serve_data(a, b, c, d)
        });
        assert!(data <= 2048, "serve_data future is {data} bytes");
        let dialing = future_bytes(|(a, p): (SocketAddr, &InitParams)| dial(a, p));
        assert!(dialing <= 1024, "dial future is {dialing} bytes");
    }
}

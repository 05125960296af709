//! One connection slot: dial, serve, re-dial, forever (or `connect_retry_times` attempts).
//!
//! A data slot keeps one idle data connection to its server: answers heartbeats, and on a session
//! start connects the hosting listener's backend and pumps; when the session ends it dials a
//! replacement at once. An aside slot keeps the per-server control connection.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, error, info, warn, Instrument};

use super::backoff::Backoff;
use super::dial::{dial, read_frame, Dialed, InitParams, ReadFrameError};
use super::Shared;
use crate::dataplane::pump::{pump_conns, write_all, Conn, Pools};
use crate::protocol::{self, Frame, Pong, Role, SessionStart};

/// Which slot this is.
#[derive(Debug, Clone, Copy)]
pub struct SlotSpec {
    pub tunnel: usize,
    pub peer: SocketAddr,
    pub role: Role,
    pub index: u32,
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
    let Some(tunnel) = shared.config.tunnels.get(spec.tunnel) else {
        return;
    };
    let backoff = Backoff {
        base_ms: tunnel.reconnect_base_duration_ms,
        max_ms: tunnel.reconnect_max_duration_ms,
    };
    let params = InitParams {
        cluster: &tunnel.cluster,
        host_name: &shared.config.host_name,
        weight: shared.config.weight,
        credential_policy: &tunnel.credential_policy,
        credential: tunnel.credential.as_ref(),
        agent_id: &shared.agent_id,
        role: spec.role,
        max_connection_num: tunnel.max_connections(),
    };
    let connect_timeout_ms = tunnel.connect_timeout_duration_ms;
    let mut failures = 0u32;
    let mut attempts = 0u64;
    loop {
        if *stop.borrow() {
            return;
        }
        attempts += 1;
        let dialed = tokio::select! {
            r = tokio::time::timeout(Duration::from_millis(connect_timeout_ms), dial(spec.peer, &params)) => {
                r.unwrap_or(Err(super::dial::DialError::Timeout { peer: spec.peer, timeout_ms: connect_timeout_ms }))
            }
            _ = stop.changed() => return,
        };
        let lost = match dialed {
            Ok(conn) => {
                if failures > 0 {
                    info!(peer = %spec.peer, cluster = %tunnel.cluster, role = ?spec.role, "connected after {failures} failed attempts");
                }
                failures = 0;
                attempts = 0;
                let ended = tokio::select! {
                    e = serve(&shared, spec, conn, &pool) => e,
                    _ = stop.changed() => return,
                };
                match ended {
                    Ended::Session => continue,
                    Ended::Lost(why) => {
                        debug!(peer = %spec.peer, role = ?spec.role, reason = %why, "tunnel connection lost; re-dialling");
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
        if let Some(limit) = tunnel.retry_limit() {
            if attempts >= limit {
                error!(peer = %spec.peer, cluster = %tunnel.cluster, role = ?spec.role,
                    "{lost}; giving up after {attempts} attempts (connect_retry_times)");
                return;
            }
        }
        let delay = backoff.delay(failures, fastrand::f64());
        warn!(peer = %spec.peer, cluster = %tunnel.cluster, role = ?spec.role, attempt = failures,
            retry_in_ms = delay.as_millis() as u64, "{lost}; retrying in {} ms", delay.as_millis());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn serve(shared: &Shared, spec: SlotSpec, conn: Dialed, pool: &Pools) -> Ended {
    let Dialed {
        mut stream,
        heartbeat_interval_ms,
        leftover,
        ..
    } = conn;
    let _up = shared.connection_up(spec.tunnel, spec.role);
    let gauge = match spec.role {
        Role::Data => &shared.stats.idle_data_connections,
        Role::Aside => &shared.stats.aside_connections,
    };
    gauge.fetch_add(1, Ordering::Relaxed);
    let silence = heartbeat_interval_ms
        .map(|ms| Duration::from_millis(ms.saturating_mul(SERVER_SILENCE_INTERVALS)));
    let waited = wait_for_session(&mut stream, leftover, silence).await;
    gauge.fetch_sub(1, Ordering::Relaxed);
    match waited {
        Ok((start, rest)) if spec.role == Role::Data => {
            let span =
                tracing::debug_span!("session", id = start.session_id, client = %start.client_addr);
            run_session(shared, spec, stream, start, rest, pool)
                .instrument(span)
                .await;
            Ended::Session
        }
        Ok((start, _)) => Ended::Lost(format!(
            "session start {} on an aside connection",
            start.session_id
        )),
        Err(why) => Ended::Lost(why),
    }
}

/// Answers pings until a session starts; returns it and the session bytes already read.
async fn wait_for_session(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    silence: Option<Duration>,
) -> Result<(SessionStart, Vec<u8>), String> {
    loop {
        let read = read_frame(stream, std::mem::take(&mut buf));
        let read = match silence {
            Some(limit) => tokio::time::timeout(limit, read).await.map_err(|_| {
                format!(
                    "server silent for {} ms (missed heartbeats)",
                    limit.as_millis()
                )
            })?,
            None => read.await,
        };
        let (frame, rest) = read.map_err(|e| match e {
            ReadFrameError::Closed => "server closed the connection".to_string(),
            other => other.to_string(),
        })?;
        buf = rest;
        match frame {
            Frame::Ping(p) => {
                let pong = protocol::encode_to_vec(&Frame::Pong(Pong { seq: p.seq }))
                    .map_err(|e| e.to_string())?;
                write_all(stream, &pong).await.map_err(|e| e.to_string())?;
            }
            Frame::SessionStart(s) => return Ok((s, buf)),
            Frame::Drain(_) | Frame::PoolRequest(_) => {
                debug!(
                    flag = frame.flag().name(),
                    "control frame ignored: not supported by this version"
                );
            }
            other => {
                return Err(format!(
                    "unexpected {} frame from server",
                    other.flag().name()
                ))
            }
        }
    }
}

async fn run_session(
    shared: &Shared,
    spec: SlotSpec,
    data: TcpStream,
    start: SessionStart,
    prefix: Vec<u8>,
    pool: &Pools,
) {
    let stats = &shared.stats;
    stats.sessions_total.fetch_add(1, Ordering::Relaxed);
    let Some(listener) = shared.listener_of(spec.tunnel) else {
        return;
    };
    let connect = tokio::time::timeout(
        Duration::from_millis(listener.connect_timeout_ms),
        TcpStream::connect(listener.backend.as_str()),
    )
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
    let moved = pump_conns(&data, &backend, Vec::new(), prefix, pool).await;
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

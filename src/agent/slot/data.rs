//! A data slot's connection: idle until a session start (answering heartbeats), then the
//! session: connect the hosting listener's backend and pump; a legacy or TLS connection the same
//! way through its channel. A listener with `send_proxy_protocol` writes the PROXY header
//! (the session start's client and frontend addresses) to the backend before any session byte.
//!
//! The backend's address comes from the worker's cache (`agent::resolve`), not a lookup per
//! session. On the agent's stop a session in flight is ended by shutting its sockets down and
//! letting its pump finish, never by dropping the pump.

use super::backend::{connect_backend, proxy_prefix};
use super::*;
use crate::dataplane::session_timeout::with_idle_timeout;

/// Serves one data connection for its slot (marked up for the slot's graceful stop while it
/// idles, down once it is gone): idle waits, and each session, until it is lost or carried its
/// last session.
///
/// Every idle data connection holds this future (boxed by the slot): it keeps only the idle
/// wait's state inline, and a session runs in one boxed future of its own.
pub(super) async fn serve_data(
    shared: &Shared,
    spec: &SlotSpec,
    cell: &ConnCell,
    conn: Box<Dialed>,
    local: &Local,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let silence = conn
        .heartbeat_interval_ms
        .map(|ms| Duration::from_millis(ms.saturating_mul(SERVER_SILENCE_INTERVALS)));
    let framed = conn.extension_version >= protocol::FRAMED_SESSIONS_VERSION;
    let Dialed {
        mut stream,
        mut leftover,
        connection_id,
        ..
    } = *conn;
    spec.peer.conn_up(cell, connection_id);
    let Some(tunnel) = shared.config.tunnels.get(spec.peer.tunnel) else {
        spec.peer.conn_down(cell);
        return Ended::Lost("no such tunnel".into());
    };
    let up = local.stats.connection_up(spec.peer.tunnel, Role::Data);
    // A framed connection comes back here after each session; any other carries one.
    let mut reused = false;
    let ended = loop {
        if reused {
            local
                .stats
                .data_connection_reuses_total
                .fetch_add(1, Ordering::Relaxed);
            spec.peer.conn_up(cell, connection_id);
        }
        local
            .stats
            .idle_data_connections
            .fetch_add(1, Ordering::Relaxed);
        let release = match (spec.extra, connection_id) {
            (true, Some(id)) => Some((
                id,
                Duration::from_millis(tunnel.extra_connection_idle_duration_ms),
            )),
            _ => None,
        };
        // The wait reads through tokio (readiness): it may be dropped on stop.
        let waited = tokio::select! {
            w = wait_for_session(&mut stream, std::mem::take(&mut leftover), silence, &spec.peer, release) => Some(w),
            _ = stop.changed() => None,
        };
        local
            .stats
            .idle_data_connections
            .fetch_sub(1, Ordering::Relaxed);
        let (start, rest) = match waited {
            Some(Ok(started)) => started,
            Some(Err(why)) => break Ended::Lost(why),
            None => break Ended::Stopped,
        };
        spec.peer.conn_down(cell);
        // Boxed: only a session pays for its state (its pump's), not every idle connection.
        let session = start_session(
            shared,
            local,
            spec.peer.tunnel,
            stream,
            start,
            rest,
            framed,
            silence,
            stop,
        )
        .await;
        match session {
            Session::Again(channel, left) => {
                stream = channel;
                leftover = left;
                reused = true;
            }
            Session::Ended(ended) => break ended,
        }
    };
    drop(up);
    spec.peer.conn_down(cell);
    ended
}

/// How a session on a data connection ended.
enum Session {
    /// A framed session ended and its connection waits for the next (with the bytes already
    /// read for it).
    Again(Channel, Vec<u8>),
    /// The connection is done.
    Ended(Ended),
}

/// Starts the session `start` began on `stream`: a UDP flow, a framed session (on a `framed`
/// connection, which then waits for the next), or a plain session that closes the connection.
/// Its future is boxed: a session pays only for its own kind's state, in one allocation.
#[allow(clippy::too_many_arguments)]
fn start_session<'a>(
    shared: &'a Shared,
    local: &'a Local,
    tunnel: usize,
    stream: Channel,
    start: SessionStart,
    rest: Vec<u8>,
    framed: bool,
    silence: Option<Duration>,
    stop: &'a mut watch::Receiver<bool>,
) -> Running<'a> {
    let span = tracing::debug_span!("session", id = start.session_id,
        client = %start.client_addr, frontend = %start.frontend_addr.as_deref().unwrap_or("-"));
    if start.protocol == crate::protocol::TransportProtocol::Udp && framed {
        // A UDP flow as session records: the connection waits for the next session after it.
        let silence = silence.unwrap_or(Duration::from_secs(60));
        let flow = super::udp_framed::run_framed_flow(
            shared, local, tunnel, stream, start, rest, silence, stop,
        );
        Running::Framed(Box::pin(flow.instrument(span)))
    } else if start.protocol == crate::protocol::TransportProtocol::Udp {
        // A UDP flow on a connection without framed sessions: u16-length datagrams; the
        // connection closes when it ends.
        let flow = super::udp::run_flow(shared, local, tunnel, stream, start, rest, stop);
        Running::Closing(Box::pin(flow.instrument(span)))
    } else if framed {
        let silence = silence.unwrap_or(Duration::from_secs(60));
        let session = super::framed::run_framed_session(
            shared, local, tunnel, stream, start, rest, silence, stop,
        );
        Running::Framed(Box::pin(session.instrument(span)))
    } else {
        let session = run_session(shared, local, tunnel, stream, start, rest, stop);
        Running::Closing(Box::pin(session.instrument(span)))
    }
}

/// A started session's future (each kind boxed), resolving to how it ended.
enum Running<'a> {
    /// A session that closes its connection: true when the agent's stop ended it.
    Closing(Pin<Box<dyn Future<Output = bool> + 'a>>),
    /// A framed session.
    Framed(Pin<Box<dyn Future<Output = super::framed::Framed> + 'a>>),
}

impl Future for Running<'_> {
    type Output = Session;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Session> {
        use super::framed::Framed;
        match self.get_mut() {
            Running::Closing(session) => session.as_mut().poll(cx).map(|stopped| {
                Session::Ended(if stopped {
                    Ended::Stopped
                } else {
                    Ended::Session
                })
            }),
            Running::Framed(session) => session.as_mut().poll(cx).map(|ended| match ended {
                Framed::Again(channel, left) => Session::Again(channel, left),
                Framed::Closed => Session::Ended(Ended::Session),
                Framed::Stopped => Session::Ended(Ended::Stopped),
            }),
        }
    }
}

/// Answers pings until a session starts; returns it and the session bytes already read. An
/// extra connection asks once, after `release`'s delay, to be let go. Bytes live in `buf` across
/// waits (a cancelled `read` loses none), so timers can be raced against reads safely.
///
/// Every idle data connection holds this future: it waits on one timer (the nearer of the
/// silence and release deadlines), and a pong is sent from a boxed future.
pub(super) async fn wait_for_session(
    stream: &mut Channel,
    mut buf: Vec<u8>,
    silence: Option<Duration>,
    peer: &Peer,
    mut release: Option<(u64, Duration)>,
) -> Result<(SessionStart, Vec<u8>), String> {
    let started = crate::rt::time::Instant::now();
    let mut last_heard = started;
    loop {
        let ping = match next_idle_frame(&mut buf)? {
            Some(Heard::Start(start)) => return Ok((start, buf)),
            Some(Heard::Ping(seq)) => Some(seq),
            None => None,
        };
        if let Some(seq) = ping {
            Box::pin(send_pong(stream, seq)).await?;
            continue;
        }
        let silent_at = silence.map(|after| last_heard + after);
        let release_at = release.map(|(_, after)| started + after);
        let wake_at = match (silent_at, release_at) {
            (Some(s), Some(r)) => s.min(r),
            (Some(at), None) | (None, Some(at)) => at,
            (None, None) => started + Duration::from_secs(86_400 * 365),
        };
        tokio::select! {
            read = stream.read_into(&mut buf) => match read {
                Ok(0) => return Err("server closed the connection".into()),
                Ok(_) => {
                    last_heard = crate::rt::time::Instant::now();
                }
                Err(e) => return Err(format!("read failed: {e}")),
            },
            _ = crate::rt::time::sleep_until(wake_at) => {
                let now = crate::rt::time::Instant::now();
                if let (Some(at), Some(after)) = (silent_at, silence) {
                    if at <= now {
                        return Err(format!("server silent for {} ms (missed heartbeats)", after.as_millis()));
                    }
                }
                if release_at.is_some_and(|at| at <= now) {
                    if let Some((id, _)) = release.take() {
                        peer.release(id);
                    }
                }
            }
        }
    }
}

/// What an idle data connection heard.
enum Heard {
    Ping(u64),
    Start(SessionStart),
}

/// The next whole frame in `buf` (taken out of it), `None` until one is whole; anything but a
/// ping or a session start is an error.
fn next_idle_frame(buf: &mut Vec<u8>) -> Result<Option<Heard>, String> {
    match protocol::decode(buf, MAX_SERVER_FRAME_PAYLOAD_BYTES) {
        Ok(Decoded::Frame(frame, used)) => {
            buf.drain(..used);
            match frame {
                Frame::Ping(p) => Ok(Some(Heard::Ping(p.seq))),
                Frame::SessionStart(s) => Ok(Some(Heard::Start(s))),
                other => Err(format!(
                    "unexpected {} frame on a data connection",
                    other.flag().name()
                )),
            }
        }
        Ok(Decoded::NeedMore(_)) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Answers a ping (boxed by its caller: the frame and the write stay out of the idle wait).
async fn send_pong(stream: &mut Channel, seq: u64) -> Result<(), String> {
    send(stream, &Frame::Pong(Pong { seq })).await
}

/// Runs one session: connects the backend and pumps. Returns true when the agent's stop ended it
/// (its sockets shut down, its pump run to the end).
pub(super) async fn run_session(
    shared: &Shared,
    local: &Local,
    tunnel: usize,
    data: Channel,
    start: SessionStart,
    prefix: Vec<u8>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let stats = &local.stats;
    stats.sessions_total.fetch_add(1, Ordering::Relaxed);
    let Some(listener) = shared.listener_of(tunnel) else {
        return false;
    };
    if !super::udp::accepts(local, listener, &start) {
        return false;
    }
    let connect = tokio::select! {
        c = connect_backend(local, listener) => c,
        _ = stop.changed() => return true,
    };
    let backend = match connect {
        Ok(b) => b,
        Err(why) => {
            stats.backend_failures_total.fetch_add(1, Ordering::Relaxed);
            warn!(session = start.session_id, client = %start.client_addr, backend = %listener.backend,
                "{why}; closing the session");
            return false;
        }
    };
    let prefix = proxy_prefix(listener, &start, prefix);
    let (data, tls) = data.into_parts();
    let adopted = Conn::from_ready(shared.backend, data)
        .and_then(|d| Ok((d, Conn::from_ready(shared.backend, backend)?)));
    let (data, backend) = match adopted {
        Ok(pair) => pair,
        Err(e) => {
            warn!(
                session = start.session_id,
                "cannot adopt session sockets: {e}"
            );
            return false;
        }
    };
    stats.active_sessions.fetch_add(1, Ordering::Relaxed);
    let pool = &local.pool;
    let idle = listener.session_idle_timeout();
    let pump = async {
        match tls {
            // Boxed: a TLS session's state is large, and plaintext sessions should not carry it.
            Some(session) => {
                let mut pump =
                    Box::pin(pump_tls(&data, &backend, session, prefix, Vec::new(), pool));
                with_idle_timeout(&data, &backend, idle, pump.as_mut()).await
            }
            None => {
                let pump = std::pin::pin!(pump_conns(&data, &backend, Vec::new(), prefix, pool));
                with_idle_timeout(&data, &backend, idle, pump).await
            }
        }
    };
    tokio::pin!(pump);
    let mut stopped = false;
    let (moved, timed_out) = tokio::select! {
        m = &mut pump => m,
        _ = stop.changed() => {
            // Shut down, not dropped: the pump's reads complete, and it ends by itself.
            stopped = true;
            data.shutdown();
            backend.shutdown();
            pump.await
        }
    };
    count_session_end(stats, start.session_id, timed_out);
    match moved {
        Ok(m) => count_moved(stats, m.a_to_b, m.b_to_a),
        Err(e) => debug!(session = start.session_id, error = %e, "session ended with error"),
    }
    stopped
}

/// A session's end in the worker's counters: one fewer active; an idle timeout counted and logged.
pub(super) fn count_session_end(stats: &AgentStats, session_id: u64, timed_out: bool) {
    stats.active_sessions.fetch_sub(1, Ordering::Relaxed);
    if timed_out {
        stats
            .sessions_idle_timeout_total
            .fetch_add(1, Ordering::Relaxed);
        debug!(
            session = session_id,
            "session ended by session_idle_timeout_ms"
        );
    }
}

/// A session's payload bytes, to and from the backend.
pub(super) fn count_moved(stats: &AgentStats, to_backend: u64, from_backend: u64) {
    stats
        .bytes_to_backend_total
        .fetch_add(to_backend, Ordering::Relaxed);
    stats
        .bytes_from_backend_total
        .fetch_add(from_backend, Ordering::Relaxed);
}

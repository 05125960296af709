//! A framed session on a data slot (extension version 2): connect the hosting listener's
//! backend and pump records on the data connection, which then waits for the next session.
//!
//! A backend that cannot be connected is answered with ABORT (reason: backend connect) and the
//! server's DATA is dropped until its END; the connection stays. A connection that errs or
//! breaks framing is closed. On the agent's stop a session in flight is ended by shutting its
//! sockets down and letting its pump finish, never by dropping the pump.

use super::backend::{connect_backend, proxy_prefix};
use super::data::{count_moved, count_session_end};
use super::*;
use crate::dataplane::pump::{abort_framed, pump_framed, DataLink};
use crate::dataplane::session_timeout::with_idle_timeout;
use crate::protocol::session_frame::AbortReason;

/// How a framed session left its data connection.
pub(super) enum Framed {
    /// Clean: the connection waits for the next session (with the bytes after the session).
    Again(Channel, Vec<u8>),
    /// Closed (an error, broken framing, an idle timeout).
    Closed,
    /// The agent's stop ended it.
    Stopped,
}

/// Runs one framed session on `data`; `rest` holds record bytes already read; the server's
/// terminal must come within `terminal_wait` once this side sent its own.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_framed_session(
    shared: &Shared,
    local: &Local,
    tunnel: usize,
    data: Channel,
    start: SessionStart,
    rest: Vec<u8>,
    terminal_wait: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Framed {
    let stats = &local.stats;
    stats.sessions_total.fetch_add(1, Ordering::Relaxed);
    let Some(listener) = shared.listener_of(tunnel) else {
        return Framed::Closed;
    };
    let accepted = super::udp::accepts(local, listener, &start);
    let (stream, tls) = data.into_parts();
    let link = match DataLink::new(stream, tls) {
        Ok(link) => link,
        Err(e) => {
            debug!(session = start.session_id, error = %e, "cannot adopt the data connection");
            return Framed::Closed;
        }
    };
    // A TCP session start for a UDP listener: refused (logged, counted) and aborted, so the
    // connection carries the next session.
    if !accepted {
        let why = format!("listener {:?} carries udp, not tcp", listener.name);
        return abort_and_keep(
            link,
            rest,
            &why,
            terminal_wait,
            local,
            stop,
            start.session_id,
        )
        .await;
    }
    let connect = tokio::select! {
        c = connect_backend(local, listener) => c,
        _ = stop.changed() => {
            link.shutdown();
            return Framed::Stopped;
        }
    };
    let backend = match connect {
        Ok(b) => b,
        Err(why) => {
            stats.backend_failures_total.fetch_add(1, Ordering::Relaxed);
            warn!(session = start.session_id, client = %start.client_addr, backend = %listener.backend,
                "{why}; aborting the session");
            return abort_and_keep(
                link,
                rest,
                &why,
                terminal_wait,
                local,
                stop,
                start.session_id,
            )
            .await;
        }
    };
    let prefix = proxy_prefix(listener, &start, Vec::new());
    let backend = match Conn::from_ready(shared.backend, backend) {
        Ok(b) => b,
        Err(e) => {
            warn!(
                session = start.session_id,
                "cannot adopt the backend socket: {e}"
            );
            link.shutdown();
            return Framed::Closed;
        }
    };
    stats.active_sessions.fetch_add(1, Ordering::Relaxed);
    let idle = listener.session_idle_timeout();
    let mut stopped = false;
    let (ended, timed_out) = {
        let mut pump = Box::pin(pump_framed(
            &link,
            &backend,
            rest,
            Vec::new(),
            prefix,
            AbortReason::BackendError,
            terminal_wait,
            &local.pool,
        ));
        let pump = with_idle_timeout(link.stream(), &backend, idle, pump.as_mut());
        tokio::pin!(pump);
        tokio::select! {
            m = &mut pump => m,
            _ = stop.changed() => {
                // Shut down, not dropped: the pump's reads complete, and it ends by itself.
                stopped = true;
                link.shutdown();
                backend.shutdown();
                pump.await
            }
        }
    };
    count_session_end(stats, start.session_id, timed_out);
    match ended {
        Ok(end) => {
            count_moved(stats, end.moved.b_to_a, end.moved.a_to_b);
            if let Some(reason) = end.sent_abort {
                stats.count_abort_sent(reason);
            }
            if let Some(abort) = &end.received_abort {
                stats.count_abort_received(abort.reason);
                debug!(session = start.session_id, reason = abort.reason.label(), text = %abort.text,
                    "server aborted the session");
            }
            if stopped {
                return Framed::Stopped;
            }
            // No shutdown before the backend socket is closed: the pump ended both its
            // directions (its write side after the server's END, unless the backend's own EOF
            // came first and this close sends the FIN; both on an abort either way).
            again(link, end.leftover)
        }
        Err(e) => {
            debug!(session = start.session_id, error = %e, "session ended with error; data connection closed");
            if stopped {
                Framed::Stopped
            } else {
                Framed::Closed
            }
        }
    }
}

/// Aborts the session as one whose backend cannot be reached (`why`), then keeps the connection
/// for the next session once the server's terminal came; closed when it errs, stopped on stop.
async fn abort_and_keep(
    link: DataLink,
    rest: Vec<u8>,
    why: &str,
    terminal_wait: Duration,
    local: &Local,
    stop: &mut watch::Receiver<bool>,
    session: u64,
) -> Framed {
    local.stats.count_abort_sent(AbortReason::BackendConnect);
    let abort = abort_framed(
        &link,
        rest,
        AbortReason::BackendConnect,
        why,
        terminal_wait,
        &local.pool,
    );
    let aborted = tokio::select! {
        a = abort => a,
        _ = stop.changed() => {
            link.shutdown();
            return Framed::Stopped;
        }
    };
    match aborted {
        Ok(left) => again(link, left),
        Err(e) => {
            debug!(session, error = %e, "data connection closed");
            Framed::Closed
        }
    }
}

fn again(link: DataLink, leftover: Vec<u8>) -> Framed {
    let (stream, tls) = link.into_parts();
    Framed::Again(Channel::from_ready(stream, tls), leftover)
}

//! A data slot's UDP flow on a framed connection (extension version 2): the server's datagrams
//! arrive as whole DATA records (`protocol::datagram::decode_flow_record`) and go to the flow's
//! backend socket; the backend's replies go back one record each. The flow's end is an END (or
//! ABORT) each way, then the connection waits for the next SessionStart (`framed::Framed::Again`).
//!
//! The agent ends a flow with END after the listener's `session_idle_timeout_ms` without a
//! datagram, and with ABORT when its backend fails (backend connect: no socket to the backend;
//! backend error: a receive error other than an ICMP unreachable); the server's END or ABORT ends
//! it too, answered with END at once. After its own terminal the agent drops (and counts,
//! `flow_ended`) the server's DATA until the server's terminal, which must come within `terminal_wait`, else the connection is
//! closed. On the agent's stop the connection is shut down (nothing is in flight on a ring: all
//! waits are readiness).

use std::io;

use crate::rt::ReadyUdp;

use super::framed::Framed;
use super::udp::{
    accepts, backend_socket, count_flow_end, send_to_backend, FlowEnd, Moved, Replies,
};
use super::*;
use crate::protocol::datagram::{
    decode_flow_record, encode_datagram_record, FlowRecord, MAX_DATAGRAM_BYTES,
};
use crate::protocol::session_frame::{encode_abort, encode_end, AbortReason, DATA_HEADER_LEN};

/// Aborts the flow as one whose backend cannot be reached (`why`) and keeps the connection for
/// the next session once the server's terminal came; closed when it errs.
async fn abort_and_keep(
    mut data: Channel,
    inbound: Vec<u8>,
    why: String,
    terminal_wait: Duration,
    local: &Local,
    session: u64,
) -> Framed {
    let abort = Some((AbortReason::BackendConnect, why));
    match end_flow(&mut data, inbound, abort, terminal_wait, local).await {
        Ok(left) => Framed::Again(data, left),
        Err(e) => {
            debug!(session, error = %e, "data connection closed");
            let _ = socket2::SockRef::from(&data.stream).shutdown(std::net::Shutdown::Both);
            Framed::Closed
        }
    }
}

/// Runs one UDP flow on a framed connection; `inbound` holds record bytes already read.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_framed_flow(
    shared: &Shared,
    local: &Local,
    tunnel: usize,
    mut data: Channel,
    start: SessionStart,
    inbound: Vec<u8>,
    terminal_wait: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Framed {
    let shut = |data: &Channel| {
        let _ = socket2::SockRef::from(&data.stream).shutdown(std::net::Shutdown::Both);
    };
    let Some(listener) = shared.listener_of(tunnel) else {
        shut(&data);
        return Framed::Closed;
    };
    if !accepts(local, listener, &start) {
        // Aborted, not closed: the connection carries the next session.
        let why = format!("listener {:?} carries tcp, not udp", listener.name);
        return abort_and_keep(data, inbound, why, terminal_wait, local, start.session_id).await;
    }
    let stats = &local.stats;
    let limit = Duration::from_millis(listener.connect_timeout_ms);
    let socket = tokio::select! {
        s = crate::rt::time::timeout(limit, backend_socket(local, listener)) => s.unwrap_or_else(|_| {
            Err(io::Error::new(io::ErrorKind::TimedOut, format!(
                "no backend address within connect_timeout_ms ({} ms)", listener.connect_timeout_ms)))
        }),
        _ = stop.changed() => {
            shut(&data);
            return Framed::Stopped;
        }
    };
    let socket = match socket {
        Ok(s) => s,
        Err(e) => {
            stats.backend_failures_total.fetch_add(1, Ordering::Relaxed);
            warn!(session = start.session_id, backend = %listener.backend,
                "cannot open a UDP socket to the backend: {e}; aborting the flow");
            let why = format!("cannot open a UDP socket to the backend: {e}");
            return abort_and_keep(data, inbound, why, terminal_wait, local, start.session_id)
                .await;
        }
    };
    stats.udp_flows_total.fetch_add(1, Ordering::Relaxed);
    stats.active_udp_flows.fetch_add(1, Ordering::Relaxed);
    let mut moved = Moved::default();
    let idle = listener.session_idle_timeout();
    let carried = carry(&mut data, &socket, inbound, idle, stop, local, &mut moved).await;
    // The flow's end: this side's terminal (unless the server's came first: END answers it),
    // then the server's.
    let ended = match carried {
        Ok((FlowEnd::Stopped, _)) => Ok(None),
        Ok((end, Terminal::Peer(left))) => {
            let mut out = Vec::with_capacity(1);
            encode_end(&mut out);
            data.write_all(&out).await.map(|()| Some((end, left)))
        }
        Ok((end, Terminal::Mine(inbound, abort))) => {
            end_flow(&mut data, inbound, abort, terminal_wait, local)
                .await
                .map(|left| Some((end, left)))
        }
        Err(e) => Err(e),
    };
    let (end, result) = match ended {
        Ok(Some((end, left))) => (Ok(end), Framed::Again(data, left)),
        Ok(None) => {
            shut(&data);
            (Ok(FlowEnd::Stopped), Framed::Stopped)
        }
        Err(e) => {
            shut(&data);
            (Err(e), Framed::Closed)
        }
    };
    count_flow_end(local, start.session_id, &moved, end);
    result
}

/// Where a carried flow stands: the server's terminal arrived (with the bytes after it), or this
/// side must send its own (ABORT with a reason, else END), with the record bytes read so far.
enum Terminal {
    Peer(Vec<u8>),
    Mine(Vec<u8>, Option<(AbortReason, String)>),
}

/// Sends this side's terminal (ABORT with `abort`, else END), then drops the server's DATA until
/// its terminal, due within `terminal_wait`; returns the bytes after it.
async fn end_flow(
    data: &mut Channel,
    mut inbound: Vec<u8>,
    abort: Option<(AbortReason, String)>,
    terminal_wait: Duration,
    local: &Local,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    match &abort {
        Some((reason, text)) => {
            local.stats.count_abort_sent(*reason);
            encode_abort(*reason, text, &mut out);
        }
        None => encode_end(&mut out),
    }
    data.write_all(&out).await?;
    let due = crate::rt::time::Instant::now() + terminal_wait;
    loop {
        loop {
            match decode_flow_record(&inbound, MAX_DATAGRAM_BYTES).map_err(broken)? {
                FlowRecord::NeedMore(_) => break,
                FlowRecord::Datagram { used } => {
                    // For a flow this side ended: no backend socket takes it any more.
                    local
                        .stats
                        .udp_dropped_flow_ended_total
                        .fetch_add(1, Ordering::Relaxed);
                    inbound.drain(..used);
                }
                FlowRecord::End { used } => {
                    inbound.drain(..used);
                    return Ok(inbound);
                }
                FlowRecord::Abort { abort, used } => {
                    local.stats.count_abort_received(abort.reason);
                    inbound.drain(..used);
                    return Ok(inbound);
                }
            }
        }
        let read = crate::rt::time::timeout_at(due, data.read_into(&mut inbound))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "server sent no end of the UDP flow within {} ms",
                        terminal_wait.as_millis()
                    ),
                )
            })??;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

fn broken(e: crate::protocol::datagram::FlowRecordError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("server broke the UDP flow's records: {e}"),
    )
}

/// Carries datagrams both ways until the flow ends: the server's terminal, this side's idle
/// bound or backend failure, or the agent's stop.
async fn carry(
    data: &mut Channel,
    socket: &ReadyUdp,
    mut inbound: Vec<u8>,
    idle: Option<Duration>,
    stop: &mut watch::Receiver<bool>,
    local: &Local,
    moved: &mut Moved,
) -> io::Result<(FlowEnd, Terminal)> {
    let stats = &local.stats;
    let far = Duration::from_secs(86_400 * 365);
    let mut last_datagram = crate::rt::time::Instant::now();
    let mut reply = vec![0u8; MAX_DATAGRAM_BYTES + 1];
    let mut out = Vec::new();
    loop {
        let mut at = 0;
        loop {
            match decode_flow_record(&inbound[at..], MAX_DATAGRAM_BYTES).map_err(broken)? {
                FlowRecord::NeedMore(_) => break,
                FlowRecord::Datagram { used } => {
                    let payload = &inbound[at + DATA_HEADER_LEN..at + used];
                    send_to_backend(socket, payload, local, moved).await;
                    at += used;
                    last_datagram = crate::rt::time::Instant::now();
                }
                FlowRecord::End { used } => {
                    inbound.drain(..at + used);
                    return Ok((FlowEnd::ServerClosed, Terminal::Peer(inbound)));
                }
                FlowRecord::Abort { abort, used } => {
                    stats.count_abort_received(abort.reason);
                    debug!(reason = abort.reason.label(), text = %abort.text, "server aborted the UDP flow");
                    inbound.drain(..at + used);
                    return Ok((FlowEnd::ServerClosed, Terminal::Peer(inbound)));
                }
            }
        }
        inbound.drain(..at);
        let idle_at = last_datagram + idle.unwrap_or(far);
        tokio::select! {
            read = data.read_into(&mut inbound) => {
                if read? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "data connection closed mid-flow"));
                }
            }
            ready = socket.readable() => {
                let replies = Replies { socket, reply: &mut reply, out: &mut out };
                // An empty reply cannot be a record: dropped and counted.
                let failed = replies.forward(ready, data, local, moved, |d, out| {
                    encode_datagram_record(d, out).is_ok()
                }).await?;
                if failed.got > 0 {
                    last_datagram = crate::rt::time::Instant::now();
                }
                if let Some(e) = failed.error {
                    stats.backend_failures_total.fetch_add(1, Ordering::Relaxed);
                    let why = format!("UDP backend failed: {e}");
                    return Ok((FlowEnd::BackendFailed, Terminal::Mine(inbound, Some((AbortReason::BackendError, why)))));
                }
            }
            _ = crate::rt::time::sleep_until(idle_at) => return Ok((FlowEnd::Idle, Terminal::Mine(inbound, None))),
            _ = stop.changed() => return Ok((FlowEnd::Stopped, Terminal::Mine(inbound, None))),
        }
    }
}

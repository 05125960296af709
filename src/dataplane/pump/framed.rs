//! The framed-session pump (extension version 2), on either backend, plaintext or TLS: raw
//! bytes on the local socket (the frontend on the server, the backend on the agent), session
//! records (`protocol::session_frame`) on the data connection, which outlives the session.
//!
//! Written once for both sides and both backends: the local socket goes through `rt::OwnedIo`
//! (ring reads on io_uring), the data connection through a [`DataLink`] (readiness I/O on the
//! worker's reactor, with its TLS session when TLS is on), so it can be handed back to an idle
//! pool as a std socket with no ring operation to drop. The record state machine lives in the
//! codec; this pump maps it to sockets:
//! - local EOF → END; a local read error → ABORT (the peer resets its side);
//! - END → write shutdown of the local socket (half-close), the other direction runs on;
//! - ABORT → the local socket is shut down both ways; this side then sends END;
//! - a local write error before this side's terminal → ABORT, later DATA dropped; after this
//!   side's END → the data connection is closed (nothing left to tell the peer); after an
//!   ABORT (either side's) → dropped too, the connection kept;
//! - a data connection error or broken framing → both sockets shut down, never reused.
//!
//! A 64-byte message costs one read and one write per hop (header and payload in one write;
//! records parsed out of one read). On a plaintext data connection with splice on, bulk moves
//! through pipes (`framed_splice`): a busy local direction's queued bytes go out as chunks
//! spliced at exactly their announced length, and a large chunk arriving is spliced into the
//! local socket; TLS bytes are always copied. It must not know hosts, pools or frames other than
//! session records.

use std::cell::Cell;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::sync::Notify;

pub use super::data_link::DataLink;
use super::framed_splice::{
    can_splice_into, splice_data_to_local, splice_local_to_data, take_pipe, SplicedIn,
    SPLICE_IN_MIN_BYTES,
};
use super::policy::{DirectionPolicy, Next};
use super::uring::Buffers;
use super::{Moved, Pools};
use crate::protocol::session_frame::{
    encode_abort, encode_data_header, encode_end, Abort, AbortReason, RecordDecoder,
    SessionRecords, Step, DATA_HEADER_LEN,
};
use crate::rt::{shutdown_write, Conn, OwnedIo};

/// How a framed session ended cleanly: both terminals crossed and the data connection is
/// healthy, so it may carry the next session (an `Err` from the pump means it must be closed).
#[derive(Debug, Default)]
pub struct FramedEnd {
    /// (local → data, data → local) payload bytes.
    pub moved: Moved,
    /// The ABORT this side sent, if any.
    pub sent_abort: Option<AbortReason>,
    /// The ABORT the peer sent, if any.
    pub received_abort: Option<Abort>,
    /// Bytes the peer sent after its terminal (the next frames; on the server, none).
    pub leftover: Vec<u8>,
}

/// Pumps one framed session between the local socket `local` and the data connection `data`.
/// `inbound` holds record bytes already read from `data`; `to_data` is local payload already
/// read (framed before anything else); `to_local` raw bytes to write to `local` first.
/// `local_failure` is the reason sent when the local socket fails. Once this side sent its
/// terminal, the peer's must come within `terminal_wait` (a peer gone silent mid-record holds
/// nothing for longer). On an `Err` both sockets are shut down and the data connection must be
/// closed.
#[allow(clippy::too_many_arguments)]
pub async fn pump_framed(
    data: &DataLink,
    local: &Conn,
    inbound: Vec<u8>,
    to_data: Vec<u8>,
    to_local: Vec<u8>,
    local_failure: AbortReason,
    terminal_wait: Duration,
    pools: &Pools,
) -> io::Result<FramedEnd> {
    let buffers = &pools.uring;
    let ends = Ends {
        local_failure,
        terminal_wait,
    };
    let ended = match local {
        Conn::Epoll(l) => framed(data, (l, local), inbound, to_data, to_local, ends, buffers).await,
        Conn::Uring(l) => framed(data, (l, local), inbound, to_data, to_local, ends, buffers).await,
    };
    if ended.is_err() {
        data.shutdown();
        local.shutdown();
    }
    ended
}

/// How a session's ends are handled.
struct Ends {
    /// The reason sent when the local socket fails.
    local_failure: AbortReason,
    /// How long the peer's terminal may take once this side sent its own.
    terminal_wait: Duration,
}

/// What the two directions share (single-threaded cells; no borrow is held across an await).
#[derive(Default)]
struct Shared {
    /// Woken when this side sent its terminal (the peer's wait is bounded from then on).
    terminal_sent: Notify,
    /// A local write failed before this side's terminal: send ABORT with this reason.
    local_failed: Cell<Option<AbortReason>>,
    /// This side sent its terminal record.
    records: Cell<SessionRecords>,
    /// The peer aborted: drop what the local socket still gives.
    peer_aborted: Cell<bool>,
}

fn closed_mid_session() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "data connection closed mid-session",
    )
}

fn broken(e: crate::protocol::session_frame::RecordError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// `local` twice: as owned-buffer I/O, and as the socket splices use.
async fn framed<L: OwnedIo>(
    data: &DataLink,
    (local, local_conn): (&L, &Conn),
    inbound: Vec<u8>,
    to_data: Vec<u8>,
    to_local: Vec<u8>,
    ends: Ends,
    buffers: &Buffers,
) -> io::Result<FramedEnd> {
    let Ends {
        local_failure,
        terminal_wait,
    } = ends;
    let shared = Shared::default();
    // Bulk zero-copy only on a plaintext data connection, with pipes (splice on).
    let pipes = buffers.pipes().filter(|_| data.is_plain());
    let splice_in = pipes.filter(|_| can_splice_into(local_conn));
    let fail = |e: io::Error| {
        data.shutdown();
        let _ = local.shutdown_how(Shutdown::Both);
        e
    };
    let receive = async {
        let mut total = 0u64;
        if !to_local.is_empty() {
            total += to_local.len() as u64;
            let (w, b) = local.write_owned(to_local).await;
            buffers.give(b);
            if let Err(e) = w {
                local_write_failed(&shared, local, local_failure, e).map_err(fail)?;
            }
        }
        let mut decoder = RecordDecoder::default();
        let mut buf = inbound;
        let result = loop {
            let mut pos = 0;
            let mut terminal = None;
            while terminal.is_none() {
                let step = match decoder.decode(&buf[pos..]) {
                    Ok(step) => step,
                    Err(e) => return Err(fail(broken(e))),
                };
                match step {
                    Step::NeedMore => break,
                    Step::Payload(p, used) => {
                        let n = p.len();
                        if n > 0 && shared.local_failed.get().is_none() {
                            let mut out = buffers.take(n > super::policy::SMALL_BUFFER_BYTES);
                            out.extend_from_slice(p);
                            let (w, b) = local.write_owned(out).await;
                            buffers.give(b);
                            match w {
                                Ok(()) => total += n as u64,
                                Err(e) => {
                                    local_write_failed(&shared, local, local_failure, e)
                                        .map_err(fail)?;
                                }
                            }
                        }
                        pos += used;
                    }
                    Step::End(used) => {
                        pos += used;
                        // After this side's own END (its local socket gave EOF) the session
                        // ends with this record and the caller's close sends the FIN: no call.
                        if shared.local_failed.get().is_none()
                            && !shared.records.get().sent_terminal
                        {
                            let _ = shutdown_write(local);
                        }
                        terminal = Some(None);
                    }
                    Step::Abort(a, used) => {
                        pos += used;
                        shared.peer_aborted.set(true);
                        let _ = local.shutdown_how(Shutdown::Both);
                        terminal = Some(Some(a));
                    }
                }
            }
            buf.drain(..pos);
            if let Some(abort) = terminal {
                let mut records = shared.records.get();
                records.received_terminal = true;
                records.aborted |= abort.is_some();
                shared.records.set(records);
                break Ok((total, abort, buf));
            }
            if buf.is_empty() && buf.capacity() > super::policy::SMALL_BUFFER_BYTES * 2 {
                // An idle session holds no read buffer.
                buf = Vec::new();
            }
            let remaining = decoder.payload_remaining();
            if let Some(pipes) = splice_in.filter(|_| {
                buf.is_empty()
                    && remaining >= SPLICE_IN_MIN_BYTES
                    && shared.local_failed.get().is_none()
            }) {
                let Some(pipe) = take_pipe(pipes) else {
                    // No pipe: copy this time.
                    match data.read_into(&mut buf, buffers).await {
                        Ok(0) => break Err(closed_mid_session()),
                        Ok(_) => continue,
                        Err(e) => break Err(e),
                    }
                };
                // Not raced against anything: an io_uring write may be in flight inside.
                match splice_data_to_local(data, local_conn, &pipe, remaining as usize).await {
                    Ok(SplicedIn::Moved(n)) => {
                        pipes.give(pipe);
                        decoder.skip_payload(n as u32);
                        total += n as u64;
                    }
                    Ok(SplicedIn::LocalFailed(n, e)) => {
                        // The pipe still holds the bytes; it goes with them.
                        decoder.skip_payload(n as u32);
                        local_write_failed(&shared, local, local_failure, e).map_err(fail)?;
                    }
                    Err(e) => break Err(e),
                }
                continue;
            }
            // Readiness reads: dropping one (the wait ended, or the terminal was sent) loses no
            // byte.
            let read = if shared.records.get().sent_terminal {
                crate::rt::time::timeout(terminal_wait, data.read_into(&mut buf, buffers))
                    .await
                    .unwrap_or_else(|_| {
                        Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "peer sent no end of session within {} ms",
                                terminal_wait.as_millis()
                            ),
                        ))
                    })
            } else {
                tokio::select! {
                    r = data.read_into(&mut buf, buffers) => r,
                    () = shared.terminal_sent.notified() => continue,
                }
            };
            match read {
                Ok(0) => break Err(closed_mid_session()),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        result.map_err(fail)
    };
    let send = async {
        let mut total = 0u64;
        if !to_data.is_empty() {
            total += to_data.len() as u64;
            let mut out = Vec::with_capacity(DATA_HEADER_LEN + to_data.len());
            crate::protocol::session_frame::encode_data(&to_data, &mut out);
            data.write(&out).await.map_err(fail)?;
        }
        let policy = DirectionPolicy::new(buffers.large_bytes(), pipes.is_some());
        let mut quiet = true;
        let mut out = Vec::new();
        loop {
            let (read, buf) = super::tls::read_next(local, buffers, quiet).await;
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    buffers.give(buf);
                    let _ = local.shutdown_how(Shutdown::Both);
                    let reason = if shared.peer_aborted.get() {
                        None
                    } else {
                        let reason = shared.local_failed.get().unwrap_or(local_failure);
                        shared.local_failed.set(Some(reason));
                        Some((reason, e.to_string()))
                    };
                    return send_terminal(data, &shared, reason, total)
                        .await
                        .map_err(fail);
                }
            };
            if n == 0 {
                buffers.give(buf);
                let reason = shared
                    .local_failed
                    .get()
                    .filter(|_| !shared.peer_aborted.get())
                    .map(|r| (r, "local socket failed".to_string()));
                return send_terminal(data, &shared, reason, total)
                    .await
                    .map_err(fail);
            }
            let next = policy.after_read(n, buf.capacity());
            quiet = next == Next::Wait;
            if shared.peer_aborted.get() || shared.local_failed.get().is_some() {
                // The session is over; its socket is shut down and reads run out.
                buffers.give(buf);
                continue;
            }
            // Header and payload in one write.
            out.clear();
            out.reserve(DATA_HEADER_LEN + n);
            encode_data_header(n as u32, &mut out);
            out.extend_from_slice(&buf[..n]);
            buffers.give(buf);
            data.write(&out).await.map_err(fail)?;
            total += n as u64;
            if out.capacity() > super::policy::SMALL_BUFFER_BYTES * 2 {
                out = Vec::new();
            }
            if next == Next::Splice {
                let Some(pipe) = pipes.and_then(take_pipe) else {
                    continue;
                };
                // Splice what is queued, then back to a small read (which also sees EOF).
                let spliced = splice_local_to_data(local_conn.as_raw_fd(), data, &pipe)
                    .await
                    .map_err(fail)?;
                quiet = true;
                match spliced {
                    Ok(moved) => {
                        if let Some(pipes) = pipes {
                            pipes.give(pipe);
                        }
                        total += moved;
                    }
                    Err((moved, e)) => {
                        total += moved;
                        drop(pipe);
                        let _ = local.shutdown_how(Shutdown::Both);
                        let reason = shared.local_failed.get().unwrap_or(local_failure);
                        shared.local_failed.set(Some(reason));
                        let abort = (!shared.peer_aborted.get()).then(|| (reason, e.to_string()));
                        return send_terminal(data, &shared, abort, total)
                            .await
                            .map_err(fail);
                    }
                }
            }
        }
    };
    let (received, sent) = tokio::join!(receive, send);
    let (from_data, abort, leftover) = received?;
    let (to_data_total, sent_abort) = sent?;
    if !shared.records.get().is_clean() {
        // Both directions returned, so both terminals crossed; anything else is a bug here,
        // and the connection must not be reused.
        return Err(fail(io::Error::other(
            "session ended without both terminals",
        )));
    }
    Ok(FramedEnd {
        moved: Moved {
            a_to_b: to_data_total,
            b_to_a: from_data,
        },
        sent_abort,
        received_abort: abort,
        leftover,
    })
}

/// A local write failed: before this side's terminal the send direction will ABORT (the local
/// socket is shut down so its read ends); after it, the data connection cannot say so: an error.
fn local_write_failed<L: OwnedIo>(
    shared: &Shared,
    local: &L,
    reason: AbortReason,
    e: io::Error,
) -> io::Result<()> {
    let _ = local.shutdown_how(Shutdown::Both);
    if shared.local_failed.get().is_some() || shared.peer_aborted.get() {
        // The session is already known dead (this side aborted for its local socket, or the
        // peer aborted): a write racing that on the same socket fails too, and its bytes are
        // dropped like any later DATA. The connection stays good.
        return Ok(());
    }
    if shared.records.get().sent_terminal {
        // After this side's END the peer's bytes were still owed to the local socket, and
        // there is nothing left to tell the peer: the connection is closed.
        return Err(e);
    }
    shared.local_failed.set(Some(reason));
    Ok(())
}

/// Sends this side's END, or ABORT with `reason`; returns the payload total and the abort sent.
async fn send_terminal(
    data: &DataLink,
    shared: &Shared,
    reason: Option<(AbortReason, String)>,
    total: u64,
) -> io::Result<(u64, Option<AbortReason>)> {
    let mut out = Vec::with_capacity(64);
    let sent = match &reason {
        Some((r, text)) => {
            encode_abort(*r, text, &mut out);
            Some(*r)
        }
        None => {
            encode_end(&mut out);
            None
        }
    };
    let mut records = shared.records.get();
    records.sent_terminal = true;
    records.aborted |= sent.is_some();
    shared.records.set(records);
    shared.terminal_sent.notify_one();
    data.write(&out).await?;
    Ok((total, sent))
}

/// Ends a framed session that has no local socket (the agent could not connect its backend):
/// sends ABORT with `reason`, drops the peer's DATA until its terminal, and returns the bytes
/// after it. The peer's terminal must come within `terminal_wait`, as in `pump_framed`. On an
/// `Err` the data connection is shut down and must be closed.
pub async fn abort_framed(
    data: &DataLink,
    inbound: Vec<u8>,
    reason: AbortReason,
    text: &str,
    terminal_wait: Duration,
    pools: &Pools,
) -> io::Result<Vec<u8>> {
    // Readiness I/O on the data link: dropping it at the deadline loses nothing that matters (the
    // connection is shut down and closed).
    let drain = abort_and_drain(data, inbound, reason, text, &pools.uring);
    let ended = crate::rt::time::timeout(terminal_wait, drain)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "peer sent no end of session within {} ms of an abort",
                    terminal_wait.as_millis()
                ),
            ))
        });
    if ended.is_err() {
        data.shutdown();
    }
    ended
}

async fn abort_and_drain(
    data: &DataLink,
    mut buf: Vec<u8>,
    reason: AbortReason,
    text: &str,
    buffers: &Buffers,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    encode_abort(reason, text, &mut out);
    data.write(&out).await?;
    let mut decoder = RecordDecoder::default();
    loop {
        let mut pos = 0;
        loop {
            match decoder.decode(&buf[pos..]).map_err(broken)? {
                Step::NeedMore => break,
                Step::Payload(_, used) => pos += used,
                Step::End(used) | Step::Abort(_, used) => {
                    buf.drain(..pos + used);
                    return Ok(buf);
                }
            }
        }
        buf.drain(..pos);
        if data.read_into(&mut buf, buffers).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "data connection closed mid-session",
            ));
        }
    }
}

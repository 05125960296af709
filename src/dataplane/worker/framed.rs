//! A framed session on the server (extension version 2): SessionStart, then the frontend's
//! bytes as session records (`pump::framed`); when both terminals have crossed, the data
//! connection goes back to this worker's idle pool for its host, newest, and heartbeats resume.
//!
//! A connection that errs, breaks framing, or sends anything but a Pong after its END is closed,
//! never reused; it carries no byte of an earlier session into the next.

use std::io;
use std::time::Duration;

use tracing::{debug, trace};

use super::proxy::Client;
use super::Worker;
use crate::dataplane::idle::IdleConn;
use crate::dataplane::pump::{pump_framed, DataLink, Moved};
use crate::dataplane::session_timeout::with_idle_timeout;
use crate::plane::counters::{bump, SessionSetup};
use crate::plane::WorkerEvent;
use crate::protocol::session_frame::{encode_data, AbortReason, DATA_HEADER_LEN};
use crate::rt::{Conn, ReadyStream};

impl Worker {
    /// Runs a framed session on `conn`; returns the bytes moved and whether the connection went
    /// back to the idle pool (else it is closed).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_framed_session(
        &self,
        conn: IdleConn,
        frontend: &Conn,
        client: &mut Client,
        cluster: &std::sync::Arc<str>,
        start_frame: Vec<u8>,
        setup: &SessionSetup,
        idle: Option<Duration>,
    ) -> (io::Result<Moved>, bool) {
        let IdleConn {
            conn_id,
            host_id,
            stream,
            peer_extension_version,
            sessions_carried,
            pending,
            outstanding_pings,
            tls,
            ..
        } = conn;
        let mut start_frame = start_frame;
        let early = client.take_early();
        let first_bytes = if early.is_empty() {
            append_first_bytes(frontend, &mut start_frame) as u64
        } else {
            0
        };
        let link = match self
            .start_framed(stream, tls, &start_frame, pending, outstanding_pings)
            .await
        {
            Ok(started) => started,
            Err(e) => return (Err(e), false),
        };
        // Not held for the session's life.
        drop(start_frame);
        let (link, rest) = link;
        setup.started();
        let ended = {
            let pump = std::pin::pin!(pump_framed(
                &link,
                frontend,
                rest,
                early,
                Vec::new(),
                AbortReason::FrontendReset,
                self.heartbeat_interval * self.heartbeat_max_missed.max(1),
                &self.buffers,
            ));
            let (ended, timed_out) = with_idle_timeout(frontend, link.stream(), idle, pump).await;
            self.count_idle_timeout(timed_out);
            ended
        };
        let end = match ended {
            Ok(end) => end,
            Err(e) => return (Err(e), false),
        };
        if let Some(reason) = end.sent_abort {
            self.count_abort(reason, true);
        }
        if let Some(abort) = &end.received_abort {
            self.count_abort(abort.reason, false);
            debug!(conn = conn_id, reason = abort.reason.label(), text = %abort.text,
                "agent aborted the session");
        }
        // The frontend's socket needs no shutdown before it is closed: the pump ended both its
        // directions (its write side after the agent's END, unless its read side had ended
        // first and the close sends the FIN; both on an abort either way).
        let mut moved = end.moved;
        moved.a_to_b += first_bytes;
        let (stream, tls) = link.into_parts();
        let lent = Lent {
            conn_id,
            host_id,
            peer_extension_version,
            sessions_carried,
        };
        let kept = self.park_after(lent, stream, end.leftover, tls, cluster);
        (Ok(moved), kept)
    }

    /// Writes the session start frame and drops pongs still due, through the connection's TLS
    /// session when it has one; returns the link and the record bytes already read.
    async fn start_framed(
        &self,
        stream: std::net::TcpStream,
        tls: Option<Box<crate::tls::TlsSession>>,
        frame: &[u8],
        pending: Vec<u8>,
        outstanding_pings: u32,
    ) -> io::Result<(DataLink, Vec<u8>)> {
        let mut channel = crate::tls::Channel::from_std(stream, tls)?;
        let started = async {
            channel.write_all(frame).await?;
            self.strip_pongs(&mut channel, pending, outstanding_pings)
                .await
        }
        .await;
        let (stream, tls) = channel.into_parts();
        match started {
            Ok(rest) => Ok((DataLink::new(stream, tls)?, rest)),
            Err(e) => {
                let _ = stream.shutdown_std();
                Err(e)
            }
        }
    }

    /// A framed connection whose session or flow ended both ways, idle again with one more
    /// session carried: `leftover` are the record bytes after the peer's terminal.
    pub(super) fn park_after(
        &self,
        lent: Lent,
        stream: ReadyStream,
        leftover: Vec<u8>,
        tls: Option<Box<crate::tls::TlsSession>>,
        cluster: &std::sync::Arc<str>,
    ) -> bool {
        match stream.into_std() {
            Ok(std) => {
                let mut idle =
                    IdleConn::new(lent.conn_id, lent.host_id, std, false, leftover, 0, tls)
                        .with_extension_version(lent.peer_extension_version);
                idle.sessions_carried = lent.sessions_carried + 1;
                self.park_again(idle, cluster)
            }
            Err(e) => {
                debug!(conn = lent.conn_id, error = %e, "cannot park the data connection again");
                false
            }
        }
    }

    /// Puts a data connection whose framed session ended cleanly back in its host's pool
    /// (newest) and tells the control path; false when it must be closed (it sent bytes that
    /// are not a Pong).
    pub(super) fn park_again(&self, mut conn: IdleConn, cluster: &std::sync::Arc<str>) -> bool {
        if self.leased.borrow().get(&conn.conn_id) == Some(&true) {
            debug!(
                conn = conn.conn_id,
                "data connection named for closing; closed after its session"
            );
            conn.shutdown();
            return false;
        }
        // What the socket holds is read at the next lease (or heartbeat), which also finds a
        // connection the agent closed meanwhile.
        if let Err(e) = conn.check_pending(self.max_frame_payload_bytes) {
            debug!(conn = conn.conn_id, reason = %e, "data connection closed after its session");
            conn.shutdown();
            return false;
        }
        let conn_id = conn.conn_id;
        trace!(
            conn = conn_id,
            sessions = conn.sessions_carried,
            "data connection idle again"
        );
        bump(&self.counters.data_connection_reuses_total);
        self.state
            .borrow_mut()
            .pools
            .entry(conn.host_id)
            .or_default()
            .idle
            .push_back(conn);
        self.events.soon(WorkerEvent::Returned {
            conn_id,
            worker: self.index,
        });
        if let Some(n) = self.waiters.borrow().get(cluster) {
            n.notify_one();
        }
        true
    }

    /// Counts an ABORT sent (`sent`) or received, by reason.
    fn count_abort(&self, reason: AbortReason, sent: bool) {
        bump(self.counters.abort_counter(reason, sent));
    }
}

/// Who a framed connection is, kept while a session or flow borrows its socket.
pub(super) struct Lent {
    pub conn_id: crate::plane::snapshot::ConnId,
    pub host_id: crate::plane::snapshot::HostId,
    pub peer_extension_version: u32,
    pub sessions_carried: u32,
}

/// Most of the frontend's first bytes sent with the session start.
const FIRST_BYTES_MAX: usize = 2048;

/// Appends the frontend's first bytes, when they are already there, to the start frame as one
/// DATA record, so that one write carries both: a client that speaks first (HTTP, TLS, most
/// request/response protocols) costs the data connection one record and the agent one read less
/// per session. One non-blocking read; nothing waits. Returns the bytes appended (0: nothing was
/// there, or the read failed or saw EOF, which the pump then sees for itself).
fn append_first_bytes(frontend: &Conn, frame: &mut Vec<u8>) -> usize {
    // On the stack of a plain function: no session future carries it.
    let mut first = [0u8; FIRST_BYTES_MAX];
    let n = frontend.try_read_drained(&mut first).unwrap_or_default();
    if n > 0 {
        frame.reserve_exact(DATA_HEADER_LEN + n);
        encode_data(&first[..n], frame);
    }
    n
}

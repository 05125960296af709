//! A UDP flow on a framed data connection (extension version 2): each datagram one whole DATA
//! record (`protocol::datagram::decode_flow_record`), the flow's end an END (or the agent's
//! ABORT) each way, then the connection goes back to this worker's idle pool for its host, as a
//! framed TCP session's does (`worker::framed`), carrying no byte of the flow into the next.
//!
//! The server ends a flow (sends END) after `udp_flow_idle_timeout_ms` without a datagram or
//! when its frontend stops; the agent's END or ABORT ends it too, answered with END at once. After
//! its own END the server still sends the agent's DATA (late replies) to the client, unless the
//! frontend closed (then they are dropped and counted, `flow_ended`), until the agent's terminal,
//! which must come within `heartbeat_interval_ms` × `heartbeat_max_missed`, else the connection
//! is closed. A
//! connection that errs or breaks framing is closed, never reused.
//!
//! Must not: hold a `RefCell` borrow across an `.await`; it reads through `tls::Channel`
//! (readiness, cancel-safe), so racing a read against the queue and the timers drops no byte.

use std::io;
use std::net::SocketAddr;

use crate::rt::time::Instant;
use tracing::{debug, trace};

use super::flow::FlowEnd;
use super::{FlowShared, UdpFrontend};
use crate::dataplane::idle::IdleConn;
use crate::dataplane::worker::framed::Lent;
use crate::dataplane::worker::Worker;
use crate::plane::counters::bump;
use crate::protocol::datagram::{
    decode_flow_record, encode_datagram_record, FlowRecord, MAX_DATAGRAM_BYTES,
};
use crate::protocol::session_frame::{encode_end, DATA_HEADER_LEN};
use crate::tls::Channel;

impl Worker {
    /// Writes `start_frame`, carries the flow on `conn` to its end, and parks the connection again
    /// when both terminals crossed; returns how the flow ended and whether the connection was
    /// kept (else it is closed).
    pub(super) async fn carry_framed_flow(
        &self,
        conn: IdleConn,
        start_frame: &[u8],
        frontend: &UdpFrontend,
        client: SocketAddr,
        flow: &FlowShared,
    ) -> (io::Result<FlowEnd>, bool) {
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
        let mut channel = match Channel::from_std(stream, tls) {
            Ok(c) => c,
            Err(e) => return (Err(e), false),
        };
        let carried = async {
            channel.write_all(start_frame).await?;
            let inbound = self
                .strip_pongs(&mut channel, pending, outstanding_pings)
                .await?;
            bump(&self.counters.udp_flows_started_total);
            self.framed_flow_loop(&mut channel, inbound, frontend, client, flow)
                .await
        }
        .await;
        let (end, leftover) = match carried {
            Ok(ended) => ended,
            Err(e) => {
                let _ = socket2::SockRef::from(&channel.stream).shutdown(std::net::Shutdown::Both);
                return (Err(e), false);
            }
        };
        let (stream, tls) = channel.into_parts();
        let lent = Lent {
            conn_id,
            host_id,
            peer_extension_version,
            sessions_carried,
        };
        let kept = self.park_after(lent, stream, leftover, tls, &frontend.cluster);
        (Ok(end), kept)
    }

    /// The started flow: queued client datagrams to the agent as records, the agent's to the
    /// client, until both terminals crossed; returns how it ended and the bytes after the agent's
    /// terminal.
    async fn framed_flow_loop(
        &self,
        channel: &mut Channel,
        mut inbound: Vec<u8>,
        frontend: &UdpFrontend,
        client: SocketAddr,
        flow: &FlowShared,
    ) -> io::Result<(FlowEnd, Vec<u8>)> {
        let idle = frontend.limits.flow_idle_timeout;
        let terminal_wait = self.heartbeat_interval * self.heartbeat_max_missed.max(1);
        let mut last_datagram = Instant::now();
        let mut out = Vec::new();
        // Why this side sent its END, and when the agent's terminal is due.
        let mut ended: Option<(FlowEnd, Instant)> = None;
        loop {
            if ended.is_none() {
                // An empty datagram cannot be a record: dropped and counted.
                self.frame_queued(flow, &mut out, |d, out| {
                    encode_datagram_record(d, out).is_ok()
                });
            }
            if !out.is_empty() {
                last_datagram = Instant::now();
                channel.write_all(&out).await?;
                out.clear();
            }
            let (delivered, terminal) = self
                .deliver_records(&mut inbound, frontend, client, ended.is_some())
                .await?;
            if delivered > 0 {
                last_datagram = Instant::now();
            }
            if let Some(abort) = terminal {
                flow.ended.set(true);
                let end = match ended {
                    Some((end, _)) => end,
                    None => {
                        encode_end(&mut out);
                        channel.write_all(&out).await?;
                        FlowEnd::AgentClosed
                    }
                };
                if let Some(abort) = abort {
                    bump(self.counters.abort_counter(abort.reason, false));
                    debug!(reason = abort.reason.label(), text = %abort.text, "agent aborted the UDP flow");
                }
                return Ok((end, inbound));
            }
            if frontend.closed.get() && ended.is_none() {
                ended = Some(
                    self.send_end(channel, flow, FlowEnd::FrontendClosed, terminal_wait)
                        .await?,
                );
                continue;
            }
            let due = ended.as_ref().map(|(_, at)| *at);
            tokio::select! {
                _ = flow.wake.notified(), if ended.is_none() => {}
                read = channel.read_into(&mut inbound) => if read? == 0 {
                    crate::log_limited!(warn!(%client, cluster = %frontend.cluster,
                        "UDP flow's data connection closed by the agent mid-flow"));
                    return Err(io::ErrorKind::UnexpectedEof.into());
                },
                _ = crate::rt::time::sleep_until(last_datagram + idle), if ended.is_none() => {
                    ended = Some(self.send_end(channel, flow, FlowEnd::Idle, terminal_wait).await?);
                }
                _ = frontend.closing.notified(), if ended.is_none() => {
                    ended = Some(self.send_end(channel, flow, FlowEnd::FrontendClosed, terminal_wait).await?);
                }
                _ = crate::rt::time::sleep_until(due.unwrap_or(last_datagram)), if due.is_some() => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, format!(
                        "agent sent no end of the UDP flow within {} ms", terminal_wait.as_millis())));
                }
            }
        }
    }

    /// Sends this side's END for `why` (the flow takes no more datagrams); the agent's terminal is
    /// due within `terminal_wait`.
    async fn send_end(
        &self,
        channel: &mut Channel,
        flow: &FlowShared,
        why: FlowEnd,
        terminal_wait: std::time::Duration,
    ) -> io::Result<(FlowEnd, Instant)> {
        trace!("UDP flow: END sent");
        // The client's next datagram starts a new flow rather than wait behind this one's end.
        flow.ended.set(true);
        let mut out = Vec::with_capacity(1);
        encode_end(&mut out);
        channel.write_all(&out).await?;
        Ok((why, Instant::now() + terminal_wait))
    }

    /// Sends every whole datagram record in `inbound` to the client up to the agent's terminal,
    /// and keeps the rest; how many were sent, and the terminal (`Some(None)` END,
    /// `Some(Some(abort))` ABORT) when it came. Replies after this side's END (`ended`) still
    /// reach the client while its frontend is open (they answer datagrams the flow carried);
    /// with the frontend closed they are dropped and counted.
    #[allow(clippy::type_complexity)]
    async fn deliver_records(
        &self,
        inbound: &mut Vec<u8>,
        frontend: &UdpFrontend,
        client: SocketAddr,
        ended: bool,
    ) -> io::Result<(u64, Option<Option<crate::protocol::session_frame::Abort>>)> {
        let mut at = 0;
        let mut sent = 0;
        let mut terminal = None;
        while terminal.is_none() {
            let record = decode_flow_record(&inbound[at..], MAX_DATAGRAM_BYTES).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("agent broke the UDP flow's records: {e}"),
                )
            })?;
            match record {
                FlowRecord::NeedMore(_) => break,
                FlowRecord::Datagram { used } => {
                    let payload = &inbound[at + DATA_HEADER_LEN..at + used];
                    at += used;
                    if ended && frontend.closed.get() {
                        bump(&self.counters.udp_dropped_flow_ended_total);
                        continue;
                    }
                    self.reply_to_client(frontend, client, payload).await;
                    sent += 1;
                }
                FlowRecord::End { used } => {
                    at += used;
                    terminal = Some(None);
                }
                FlowRecord::Abort { abort, used } => {
                    at += used;
                    terminal = Some(Some(abort));
                }
            }
        }
        inbound.drain(..at);
        Ok((sent, terminal))
    }
}

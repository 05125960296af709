//! One UDP flow from its first datagram to its end: lease a data connection whose agent speaks
//! extension version 2 or more (waiting up to `pool_wait_ms`, the datagrams queued meanwhile),
//! write `SessionStart{"protocol":"udp"}` (pongs still due stripped first), then carry
//! length-framed datagrams (`protocol::datagram`) both ways until the flow idles for
//! `udp_flow_idle_timeout_ms`, either side fails, or the agent closes the connection.
//!
//! On a framed connection (version 2) the flow travels as session records and its connection
//! returns to the pool after it (`framed_flow.rs`); otherwise it ends by closing its data
//! connection (the agent dials a replacement). The data connection is driven through `tls::Channel` (readiness; plaintext or TLS) on both
//! backends: reads are cancel-safe, so a read can be raced against the queue and the idle timer.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use crate::rt::time::Instant;
use tracing::{debug, trace};

use super::{FlowShared, UdpFrontend};
use crate::dataplane::idle::IdleConn;
use crate::dataplane::worker::lease::SessionSlot;
use crate::dataplane::worker::Worker;
use crate::plane::counters::{add, bump, drop_one};
use crate::plane::WorkerEvent;
use crate::protocol::datagram::{
    decode_datagram, encode_datagram, DatagramDecoded, DATAGRAM_HEADER_LEN, MAX_DATAGRAM_BYTES,
};
use crate::protocol::{self, Frame, SessionStart, TransportProtocol};

/// How a started flow ended without an error.
pub(super) enum FlowEnd {
    /// No datagram either way for `udp_flow_idle_timeout_ms`.
    Idle,
    /// The agent closed the data connection (its backend failed, or its own idle bound).
    AgentClosed,
    /// The frontend stopped receiving (drain, reload).
    FrontendClosed,
}

impl Worker {
    /// Runs `client`'s flow on `frontend` to its end, then forgets it.
    pub(in crate::dataplane::worker) async fn run_flow(
        self: Rc<Self>,
        frontend: Rc<UdpFrontend>,
        client: SocketAddr,
        flow: Rc<FlowShared>,
        _slot: SessionSlot,
    ) {
        let cluster = frontend.cluster.clone();
        let leased = self
            .lease_min_version(&cluster, client, protocol::UDP_FLOWS_VERSION)
            .await;
        match leased {
            None => {
                bump(&self.counters.pool_exhausted_total);
                bump(&self.cluster_stats(&cluster).pool_exhausted_total);
                debug!("no idle data connection of extension version 2 or more within pool_wait_ms; UDP flow dropped");
            }
            Some(conn) => {
                let (conn_id, host_id) = (conn.conn_id, conn.host_id);
                self.events.soon(WorkerEvent::Leased { conn_id });
                self.leased.borrow_mut().insert(conn_id, false);
                let session_id = (self.index as u64) << 48 | self.next_session.get();
                self.next_session.set(self.next_session.get() + 1);
                tracing::Span::current().record("id", session_id);
                let (ended, kept) = if conn.framed() {
                    match start_frame(session_id, &frontend, client) {
                        Ok(frame) => {
                            Box::pin(self.carry_framed_flow(conn, &frame, &frontend, client, &flow))
                                .await
                        }
                        Err(e) => {
                            conn.shutdown();
                            (Err(e), false)
                        }
                    }
                } else {
                    let ended = self
                        .carry_flow(conn, &frontend, client, &flow, session_id)
                        .await;
                    (ended, false)
                };
                match ended {
                    Ok(FlowEnd::Idle) => {
                        bump(&self.counters.udp_flows_idle_timeout_total);
                        trace!("UDP flow ended by udp_flow_idle_timeout_ms");
                    }
                    Ok(FlowEnd::AgentClosed) => trace!("UDP flow ended by the agent"),
                    Ok(FlowEnd::FrontendClosed) => trace!("UDP flow ended with its frontend"),
                    Err(e) => {
                        bump(&self.counters.udp_flow_errors_total);
                        debug!(error = %e, "UDP flow ended with error");
                    }
                }
                if let Some(pool) = self.state.borrow_mut().pools.get_mut(&host_id) {
                    pool.active = pool.active.saturating_sub(1);
                }
                self.leased.borrow_mut().remove(&conn_id);
                if !kept {
                    self.events.now(WorkerEvent::Closed { conn_id });
                }
            }
        }
        flow.ended.set(true);
        frontend.table.borrow_mut().remove(client, &flow);
        let unsent = std::mem::take(&mut *flow.queue.borrow_mut()).len();
        add(
            &self.counters.udp_dropped_no_connection_total,
            unsent as u64,
        );
        drop_one(&self.counters.active_udp_flows);
        bump(&self.counters.udp_flows_ended_total);
    }

    /// Starts the flow on `conn` and carries its datagrams until it ends; the data connection
    /// is shut down whatever the outcome.
    async fn carry_flow(
        &self,
        conn: IdleConn,
        frontend: &UdpFrontend,
        client: SocketAddr,
        flow: &FlowShared,
        session_id: u64,
    ) -> io::Result<FlowEnd> {
        let IdleConn {
            stream,
            pending,
            outstanding_pings,
            tls,
            ..
        } = conn;
        let frame = start_frame(session_id, frontend, client)?;
        let mut channel = crate::tls::Channel::from_std(stream, tls)?;
        let result = async {
            channel.write_all(&frame).await?;
            let inbound = self
                .strip_pongs(&mut channel, pending, outstanding_pings)
                .await?;
            bump(&self.counters.udp_flows_started_total);
            self.flow_loop(&mut channel, inbound, frontend, client, flow)
                .await
        }
        .await;
        let _ = socket2::SockRef::from(&channel.stream).shutdown(std::net::Shutdown::Both);
        result
    }

    /// Sends one of the agent's datagrams to the flow's client; a failed send is counted and
    /// dropped (UDP).
    pub(super) async fn reply_to_client(
        &self,
        frontend: &UdpFrontend,
        client: SocketAddr,
        payload: &[u8],
    ) {
        match frontend.socket.send_to(payload, client).await {
            Ok(_) => {
                bump(&self.counters.udp_datagrams_from_agent_total);
                add(
                    &self.counters.udp_bytes_from_agent_total,
                    payload.len() as u64,
                );
            }
            Err(e) => {
                bump(&self.counters.udp_dropped_send_failed_total);
                trace!(error = %e, "reply to the UDP client failed");
            }
        }
    }

    /// Frames the flow's queued client datagrams into `out` with `encode` (which says whether it
    /// framed one) and counts those framed. They are within MAX_DATAGRAM_BYTES: the frontend
    /// dropped longer ones.
    pub(super) fn frame_queued(
        &self,
        flow: &FlowShared,
        out: &mut Vec<u8>,
        encode: impl Fn(&[u8], &mut Vec<u8>) -> bool,
    ) {
        let mut queue = flow.queue.borrow_mut();
        while let Some(d) = queue.pop_front() {
            if encode(&d, out) {
                bump(&self.counters.udp_datagrams_to_agent_total);
                add(&self.counters.udp_bytes_to_agent_total, d.len() as u64);
            } else {
                // Within the size bound, so refused only as what a framed connection cannot
                // carry: an empty datagram.
                bump(&self.counters.udp_dropped_empty_total);
            }
        }
    }

    /// The started flow: queued client datagrams to the agent, the agent's to the client.
    async fn flow_loop(
        &self,
        channel: &mut crate::tls::Channel,
        mut inbound: Vec<u8>,
        frontend: &UdpFrontend,
        client: SocketAddr,
        flow: &FlowShared,
    ) -> io::Result<FlowEnd> {
        let idle = frontend.limits.flow_idle_timeout;
        let mut last_datagram = Instant::now();
        let mut out = Vec::new();
        let mut replies = 0u64;
        loop {
            if frontend.closed.get() {
                return Ok(FlowEnd::FrontendClosed);
            }
            self.frame_queued(flow, &mut out, |d, out| encode_datagram(d, out).is_ok());
            if !out.is_empty() {
                last_datagram = Instant::now();
                channel.write_all(&out).await?;
                out.clear();
            }
            let delivered = self.deliver(&mut inbound, frontend, client).await?;
            if delivered > 0 {
                replies += delivered;
                last_datagram = Instant::now();
            }
            tokio::select! {
                _ = flow.wake.notified() => {}
                read = channel.read_into(&mut inbound) => match read? {
                    0 if replies == 0 => {
                        crate::log_limited!(warn!(%client, cluster = %frontend.cluster,
                            "UDP flow closed by the agent before any reply"));
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    0 => return Ok(FlowEnd::AgentClosed),
                    _ => {}
                },
                _ = crate::rt::time::sleep_until(last_datagram + idle) => return Ok(FlowEnd::Idle),
                _ = frontend.closing.notified() => return Ok(FlowEnd::FrontendClosed),
            }
        }
    }

    /// Sends every whole datagram in `inbound` to the client and keeps the rest; how many.
    async fn deliver(
        &self,
        inbound: &mut Vec<u8>,
        frontend: &UdpFrontend,
        client: SocketAddr,
    ) -> io::Result<u64> {
        let mut at = 0;
        let mut sent = 0;
        loop {
            match decode_datagram(&inbound[at..], MAX_DATAGRAM_BYTES) {
                Ok(DatagramDecoded::Datagram { used }) => {
                    let payload = &inbound[at + DATAGRAM_HEADER_LEN..at + used];
                    self.reply_to_client(frontend, client, payload).await;
                    at += used;
                    sent += 1;
                }
                Ok(DatagramDecoded::NeedMore(_)) => break,
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("agent broke the datagram framing: {e}"),
                    ))
                }
            }
        }
        inbound.drain(..at);
        Ok(sent)
    }
}

/// The flow's `SessionStart{"protocol":"udp"}` frame.
fn start_frame(session_id: u64, frontend: &UdpFrontend, client: SocketAddr) -> io::Result<Vec<u8>> {
    let start = Frame::SessionStart(SessionStart {
        session_id,
        client_addr: client.to_string(),
        frontend_addr: frontend.local_addr.map(|a| a.to_string()),
        protocol: TransportProtocol::Udp,
    });
    protocol::encode_to_vec(&start).map_err(io::Error::other)
}

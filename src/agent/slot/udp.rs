//! A data slot's UDP flow: on a `SessionStart{"protocol":"udp"}` to a UDP listener, one
//! connected UDP socket to the listener's backend for this flow, and datagrams both ways — the
//! server's length-framed ones (`protocol::datagram`) sent to the backend, the backend's replies
//! framed back. It ends when the server closes the data connection, on an error of either side,
//! after the listener's `session_idle_timeout_ms` without a datagram either way, or on the
//! agent's stop. The data connection then closes and the slot dials a replacement. On a framed
//! connection (version 2) a flow travels as session records instead and its connection waits
//! for the next session after it (`udp_framed.rs`).
//!
//! A start whose protocol differs from the listener's (a UDP flow to a TCP listener, or a TCP
//! session to a UDP listener) is refused: an error logged, counted, the connection closed.
//!
//! Everything here waits by readiness (tokio sockets, `tls::Channel`), on both backends, so the
//! select on the stop signal may drop a read: nothing is in flight on an io_uring ring.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::rt::ReadyUdp;

use super::*;
use crate::config::HostingListenerConfig;
use crate::protocol::datagram::{
    decode_datagram, encode_datagram, DatagramDecoded, DATAGRAM_HEADER_LEN, MAX_DATAGRAM_BYTES,
};

/// Most bytes of backend replies gathered into one write to the server.
pub(super) const REPLY_BATCH_BYTES: usize = 64 * 1024;

/// Datagrams and bytes a flow moved, added to the worker's counters when it ends.
#[derive(Default)]
pub(super) struct Moved {
    pub(super) to_backend: u64,
    pub(super) from_backend: u64,
    pub(super) bytes_to_backend: u64,
    pub(super) bytes_from_backend: u64,
}

/// How a flow ended without an error.
pub(super) enum FlowEnd {
    ServerClosed,
    Idle,
    Stopped,
    /// The backend socket failed (a framed flow aborts, its connection stays).
    BackendFailed,
}

/// Whether `listener` takes a session start of `protocol`; logs and counts a refusal.
pub(super) fn accepts(
    local: &Local,
    listener: &HostingListenerConfig,
    start: &SessionStart,
) -> bool {
    if listener.protocol == start.protocol {
        return true;
    }
    local
        .stats
        .udp_flows_refused_total
        .fetch_add(1, Ordering::Relaxed);
    crate::log_limited!(error!(
        session = start.session_id,
        listener = %listener.name,
        "refused a {} session start: listener {:?} has protocol {:?} (set the server cluster's \
         and this listener's protocol alike)",
        start.protocol.name(),
        listener.name,
        listener.protocol.name()
    ));
    false
}

/// Runs one UDP flow. Returns true when the agent's stop ended it.
pub(super) async fn run_flow(
    shared: &Shared,
    local: &Local,
    tunnel: usize,
    mut data: Channel,
    start: SessionStart,
    inbound: Vec<u8>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let Some(listener) = shared.listener_of(tunnel) else {
        return false;
    };
    if !accepts(local, listener, &start) {
        let _ = socket2::SockRef::from(&data.stream).shutdown(std::net::Shutdown::Both);
        return false;
    }
    let stats = &local.stats;
    // Bounded like a TCP backend's connect (the name may need a lookup).
    let limit = Duration::from_millis(listener.connect_timeout_ms);
    let socket = tokio::select! {
        s = crate::rt::time::timeout(limit, backend_socket(local, listener)) => s.unwrap_or_else(|_| {
            Err(io::Error::new(io::ErrorKind::TimedOut, format!(
                "no backend address within connect_timeout_ms ({} ms)", listener.connect_timeout_ms)))
        }),
        _ = stop.changed() => return true,
    };
    let socket = match socket {
        Ok(s) => s,
        Err(e) => {
            stats.backend_failures_total.fetch_add(1, Ordering::Relaxed);
            warn!(session = start.session_id, backend = %listener.backend,
                "cannot open a UDP socket to the backend: {e}; closing the flow");
            return false;
        }
    };
    stats.udp_flows_total.fetch_add(1, Ordering::Relaxed);
    stats.active_udp_flows.fetch_add(1, Ordering::Relaxed);
    let mut moved = Moved::default();
    let idle = listener.session_idle_timeout();
    let ended = carry(&mut data, &socket, inbound, idle, stop, local, &mut moved).await;
    let _ = socket2::SockRef::from(&data.stream).shutdown(std::net::Shutdown::Both);
    let stopped = matches!(ended, Ok(FlowEnd::Stopped));
    count_flow_end(local, start.session_id, &moved, ended);
    stopped
}

/// Counts a started flow's end and what it moved.
pub(super) fn count_flow_end(
    local: &Local,
    session_id: u64,
    moved: &Moved,
    ended: io::Result<FlowEnd>,
) {
    let stats = &local.stats;
    stats.active_udp_flows.fetch_sub(1, Ordering::Relaxed);
    stats
        .udp_datagrams_to_backend_total
        .fetch_add(moved.to_backend, Ordering::Relaxed);
    stats
        .udp_datagrams_from_backend_total
        .fetch_add(moved.from_backend, Ordering::Relaxed);
    stats
        .udp_bytes_to_backend_total
        .fetch_add(moved.bytes_to_backend, Ordering::Relaxed);
    stats
        .udp_bytes_from_backend_total
        .fetch_add(moved.bytes_from_backend, Ordering::Relaxed);
    match ended {
        Ok(FlowEnd::Idle) => {
            stats
                .udp_flows_idle_timeout_total
                .fetch_add(1, Ordering::Relaxed);
            debug!(
                session = session_id,
                "UDP flow ended by session_idle_timeout_ms"
            );
        }
        Ok(FlowEnd::BackendFailed) => {
            debug!(session = session_id, "UDP flow aborted: its backend failed")
        }
        Ok(FlowEnd::ServerClosed | FlowEnd::Stopped) => {}
        Err(e) => debug!(session = session_id, error = %e, "UDP flow ended with error"),
    }
}

/// A UDP socket connected to the listener's backend (the first address of its name).
pub(super) async fn backend_socket(
    local: &Local,
    listener: &HostingListenerConfig,
) -> io::Result<ReadyUdp> {
    let addrs = local.backends.resolve(&listener.backend).await?;
    let backend = *addrs
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "backend name has no address"))?;
    let any: IpAddr = if backend.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = ReadyUdp::bind(SocketAddr::new(any, 0))?;
    let _ =
        socket2::SockRef::from(&socket).set_recv_buffer_size(crate::rt::UDP_SOCKET_BUFFER_BYTES);
    socket.connect(backend)?;
    Ok(socket)
}

/// Carries datagrams both ways until the flow ends.
async fn carry(
    data: &mut Channel,
    socket: &ReadyUdp,
    mut inbound: Vec<u8>,
    idle: Option<Duration>,
    stop: &mut watch::Receiver<bool>,
    local: &Local,
    moved: &mut Moved,
) -> io::Result<FlowEnd> {
    let far = Duration::from_secs(86_400 * 365);
    let mut last_datagram = crate::rt::time::Instant::now();
    // One datagram over the maximum is enough to know a reply is too long.
    let mut reply = vec![0u8; MAX_DATAGRAM_BYTES + 1];
    let mut out = Vec::new();
    loop {
        let mut at = 0;
        loop {
            match decode_datagram(&inbound[at..], MAX_DATAGRAM_BYTES) {
                Ok(DatagramDecoded::Datagram { used }) => {
                    let payload = &inbound[at + DATAGRAM_HEADER_LEN..at + used];
                    send_to_backend(socket, payload, local, moved).await;
                    at += used;
                    last_datagram = crate::rt::time::Instant::now();
                }
                Ok(DatagramDecoded::NeedMore(_)) => break,
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("server broke the datagram framing: {e}"),
                    ))
                }
            }
        }
        inbound.drain(..at);
        let idle_at = last_datagram + idle.unwrap_or(far);
        tokio::select! {
            read = data.read_into(&mut inbound) => {
                if read? == 0 {
                    return Ok(FlowEnd::ServerClosed);
                }
            }
            ready = socket.readable() => {
                let replies = Replies { socket, reply: &mut reply, out: &mut out };
                let failed = replies.forward(ready, data, local, moved, |d, out| {
                    encode_datagram(d, out).is_ok()
                }).await?;
                if let Some(e) = failed.error {
                    return Err(e);
                }
                if failed.got > 0 {
                    last_datagram = crate::rt::time::Instant::now();
                }
            }
            _ = crate::rt::time::sleep_until(idle_at) => return Ok(FlowEnd::Idle),
            _ = stop.changed() => return Ok(FlowEnd::Stopped),
        }
    }
}

/// Sends one datagram of the flow to its backend; a failed send is counted and dropped (UDP).
pub(super) async fn send_to_backend(
    socket: &ReadyUdp,
    payload: &[u8],
    local: &Local,
    moved: &mut Moved,
) {
    match socket.send(payload).await {
        Ok(_) => {
            moved.to_backend += 1;
            moved.bytes_to_backend += payload.len() as u64;
        }
        Err(e) => {
            local
                .stats
                .udp_dropped_send_failed_total
                .fetch_add(1, Ordering::Relaxed);
            trace!(error = %e, "datagram to the backend failed");
        }
    }
}

/// A flow's backend socket with its reply buffer and the bytes framed for the data connection.
pub(super) struct Replies<'a> {
    pub(super) socket: &'a ReadyUdp,
    pub(super) reply: &'a mut [u8],
    pub(super) out: &'a mut Vec<u8>,
}

/// What one readiness of the backend socket brought: how many replies, and the receive error
/// that fails the flow, if any (the replies before it were written).
pub(super) struct Forwarded {
    pub(super) got: usize,
    pub(super) error: Option<io::Error>,
}

impl Replies<'_> {
    /// After the socket's readiness `ready`: takes the waiting replies (`take_replies`) and
    /// writes them to `data` in one write.
    pub(super) async fn forward(
        self,
        ready: io::Result<()>,
        data: &mut Channel,
        local: &Local,
        moved: &mut Moved,
        encode: impl Fn(&[u8], &mut Vec<u8>) -> bool,
    ) -> io::Result<Forwarded> {
        let (got, error) = match ready {
            Ok(()) => take_replies(self.socket, self.reply, self.out, local, moved, encode),
            Err(e) => (0, Some(e)),
        };
        if !self.out.is_empty() {
            data.write_all(self.out).await?;
        }
        Ok(Forwarded { got, error })
    }
}

/// Frames into `out` (cleared first) the replies waiting on `socket`, up to
/// `REPLY_BATCH_BYTES`, so a burst goes in one write (`reply` is one byte longer than the
/// largest datagram, to tell an oversized one). `encode` frames one reply for the connection and
/// says whether it did; oversized and unframeable (empty) replies are dropped and counted, and
/// so is an ICMP unreachable (not an error: the flow goes on, as UDP would). Returns how many
/// replies came, and the receive error that fails the flow, if any.
pub(super) fn take_replies(
    socket: &ReadyUdp,
    reply: &mut [u8],
    out: &mut Vec<u8>,
    local: &Local,
    moved: &mut Moved,
    encode: impl Fn(&[u8], &mut Vec<u8>) -> bool,
) -> (usize, Option<io::Error>) {
    let stats = &local.stats;
    out.clear();
    let (got, failed) = socket.recv_now(reply, |datagram, _| {
        let n = datagram.len();
        if n > MAX_DATAGRAM_BYTES {
            stats
                .udp_dropped_oversized_total
                .fetch_add(1, Ordering::Relaxed);
        } else if encode(datagram, out) {
            moved.from_backend += 1;
            moved.bytes_from_backend += n as u64;
        } else {
            // Within the size bound, so refused only as what a framed connection cannot
            // carry: an empty datagram.
            stats
                .udp_dropped_empty_total
                .fetch_add(1, Ordering::Relaxed);
        }
        out.len() < REPLY_BATCH_BYTES
    });
    match failed {
        // An ICMP unreachable for an earlier datagram: the backend is not listening (yet).
        Some(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            stats
                .udp_dropped_send_failed_total
                .fetch_add(1, Ordering::Relaxed);
            (got, None)
        }
        failed => (got, failed),
    }
}

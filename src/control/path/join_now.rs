//! A freshly accepted tunnel connection's first look, on the control loop itself: a plaintext
//! ringtun data connection whose init is already in the socket (nearly all: the agent writes it
//! right after connecting, and the listener defers accept until bytes arrive) is read, joined,
//! answered and handed to a worker here and now, with no task, no timer and no reactor
//! registration. Everything else (TLS, a MOSN agent, an aside connection, an init still on its
//! way, bad bytes) goes to the handshake task (`tunnel`) with the bytes read so far; a refused
//! init and an answer that did not fit the socket buffer are finished by a small task of their
//! own, within the handshake timeout and holding the handshake slot.
//!
//! Must not: wait. Every read and write here is non-blocking, and one that cannot complete at
//! once hands the connection to a task.

use super::join::{refuse, Joined};
use super::*;
use crate::protocol::ConnectionInitInfo;

/// The first read's size: an init's JSON is a few hundred bytes; a larger one (long names or
/// credentials) is read on by the handshake task.
const FIRST_READ_BYTES: usize = 2048;

impl Control {
    /// Takes a connection the tunnel listener accepted and admitted.
    pub(super) fn accepted(
        self: &Rc<Self>,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        admission: super::admission::Admission,
    ) {
        if self.tls.is_some() {
            return self.to_task(stream, peer, admission, Vec::new());
        }
        let mut first = Vec::with_capacity(FIRST_READ_BYTES);
        if crate::rt::read_spare(&stream, &mut first).is_err() {
            // Nothing yet (or an error the task's read reports again, or EOF it sees). The
            // task reads into a buffer of its own: this one is not kept for a silent peer.
            return self.to_task(stream, peer, admission, Vec::new());
        }
        let max_payload = self.config.tunnel_listener.max_frame_payload_bytes;
        let (init, leftover) = match super::super::handshake::next_init(&first, max_payload) {
            Ok(super::super::handshake::InitProgress::Init(init, used))
                if init.ringtun().is_some_and(|e| e.role == Role::Data) =>
            {
                // Sized to the bytes after the init (usually none, no allocation): they stay
                // with the connection, the 2 KiB read buffer is freed here for the next join.
                let leftover = first[used..].to_vec();
                (init, leftover)
            }
            _ => return self.to_task(stream, peer, admission, first),
        };
        drop(first);
        let joined = match self.join(&init, peer) {
            Ok(joined) => joined,
            Err(refused) => {
                // The refusal is sent as the task path sends it: holding the handshake slot,
                // for at most the handshake timeout.
                let timeout =
                    Duration::from_millis(self.config.tunnel_listener.handshake_timeout_ms);
                let deadline = tokio::time::Instant::now() + timeout;
                match TcpStream::from_std(stream) {
                    Ok(s) => {
                        tokio::task::spawn_local(async move {
                            refuse(Channel::plain(s), refused, deadline).await;
                            drop(admission);
                        });
                    }
                    Err(e) => debug!(%peer, error = %e, "cannot send the refusal"),
                }
                return;
            }
        };
        let bytes = match protocol::encode_to_vec(&Frame::InitResponse(joined.response.clone())) {
            Ok(bytes) => bytes,
            Err(e) => {
                let e = std::io::Error::other(e);
                return self.response_failed(peer, joined.conn_id, &e);
            }
        };
        match crate::rt::send_nonblocking(&stream, &bytes) {
            Ok(sent) if sent == bytes.len() => {
                drop(admission);
                self.stats
                    .handshakes_inline_total
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.data_joined(stream, &init, peer, joined, leftover);
            }
            Ok(sent) => {
                // The agent's receive window is shut already (a rare, slow agent): the rest
                // waits in a task, bounded by the handshake timeout.
                let ctl = self.clone();
                let rest = bytes[sent..].to_vec();
                tokio::task::spawn_local(async move {
                    ctl.finish_response(stream, init, peer, joined, leftover, rest, admission)
                        .await;
                });
            }
            Err(e) => self.response_failed(peer, joined.conn_id, &e),
        }
    }

    /// The handshake task for `stream`, with `first`, the bytes already read from it.
    fn to_task(
        self: &Rc<Self>,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        admission: super::admission::Admission,
        first: Vec<u8>,
    ) {
        match TcpStream::from_std(stream) {
            Ok(s) => {
                tokio::task::spawn_local(self.clone().tunnel_conn(s, peer, admission, first));
            }
            Err(e) => {
                crate::log_limited!(warn!(%peer, error = %e, "cannot adopt tunnel connection"))
            }
        }
    }

    /// Writes the rest of a join's response, then hands the connection on.
    #[allow(clippy::too_many_arguments)]
    async fn finish_response(
        self: Rc<Self>,
        stream: std::net::TcpStream,
        init: ConnectionInitInfo,
        peer: SocketAddr,
        joined: Joined,
        leftover: Vec<u8>,
        rest: Vec<u8>,
        admission: super::admission::Admission,
    ) {
        let timeout = Duration::from_millis(self.config.tunnel_listener.handshake_timeout_ms);
        let written = match TcpStream::from_std(stream) {
            Ok(s) => match tokio::time::timeout(timeout, crate::rt::write_all(&s, &rest)).await {
                Ok(Ok(())) => s.into_std(),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
            },
            Err(e) => Err(e),
        };
        drop(admission);
        match written {
            Ok(stream) => self.data_joined(stream, &init, peer, joined, leftover),
            Err(e) => self.response_failed(peer, joined.conn_id, &e),
        }
    }

    /// A ringtun data connection whose response is sent: counted, then given to a worker.
    fn data_joined(
        &self,
        stream: std::net::TcpStream,
        init: &ConnectionInitInfo,
        peer: SocketAddr,
        joined: Joined,
        leftover: Vec<u8>,
    ) {
        self.registered(init, peer, &joined);
        self.hand_to_worker(
            stream,
            None,
            joined.conn_id,
            joined.host_id,
            &init.cluster_name,
            joined.extension,
            leftover,
        );
    }
}

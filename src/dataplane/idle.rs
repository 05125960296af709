//! An idle data connection parked on a worker: heartbeats and liveness checks by non-blocking
//! syscalls on the plain socket, so no read is ever in flight on it and it costs no buffer
//! beyond a few bytes of pending frame.

use std::io::Write;
use std::net::TcpStream;

use crate::plane::snapshot::{ConnId, HostId};
use crate::protocol::{self, Decoded, Frame, Ping, HEADER_LEN};
use crate::rt::{poll_readable_nonblocking, ReadPoll};

/// Most bytes a legacy (MOSN) agent may send before its connection is leased; the backend may
/// speak first (a greeting), but an idle connection must not become a buffer.
pub const LEGACY_PENDING_LIMIT_BYTES: usize = 64 * 1024;

/// Why an idle connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum IdleError {
    #[error("agent closed the connection")]
    Closed,
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[from] protocol::DecodeError),
    #[error("unexpected {0} frame on an idle data connection")]
    Unexpected(&'static str),
    #[error("legacy agent sent more than {LEGACY_PENDING_LIMIT_BYTES} bytes before any session")]
    LegacyOverflow,
    #[error("{0} heartbeats unanswered")]
    HeartbeatMissed(u32),
    #[error("legacy connection idle for {0} ms (legacy_idle_timeout_ms)")]
    LegacyIdle(u128),
    #[error("socket send buffer full while idle")]
    SendBufferFull,
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// One parked data connection.
#[derive(Debug)]
pub struct IdleConn {
    pub conn_id: ConnId,
    pub host_id: HostId,
    pub stream: TcpStream,
    pub legacy: bool,
    /// The extension version the agent announced (0: legacy); see `framed`. UDP flows lease
    /// only connections of `protocol::UDP_FLOWS_VERSION` or more.
    pub peer_extension_version: u32,
    /// Sessions this connection carried on this worker before it became idle again.
    pub sessions_carried: u32,
    /// ringtun: bytes of a partial frame. Legacy: raw bytes the agent sent while idle.
    pub pending: Vec<u8>,
    /// Pings sent and not yet answered.
    pub outstanding_pings: u32,
    /// The TLS session of a TLS tunnel connection (`pending` then holds plaintext).
    pub tls: Option<Box<crate::tls::TlsSession>>,
    /// When it became idle on this worker (legacy connections have an idle bound).
    pub idle_since: std::time::Instant,
    next_ping_seq: u64,
}

impl IdleConn {
    pub fn new(
        conn_id: ConnId,
        host_id: HostId,
        stream: TcpStream,
        legacy: bool,
        pending: Vec<u8>,
        outstanding_pings: u32,
        tls: Option<Box<crate::tls::TlsSession>>,
    ) -> Self {
        Self {
            conn_id,
            host_id,
            stream,
            legacy,
            peer_extension_version: 0,
            sessions_carried: 0,
            pending,
            outstanding_pings,
            tls,
            idle_since: std::time::Instant::now(),
            next_ping_seq: 1,
        }
    }

    /// This connection, its agent having announced extension `version`.
    pub fn with_extension_version(mut self, version: u32) -> Self {
        self.peer_extension_version = version;
        self
    }

    /// True when its sessions are framed: many sessions, one after another, on this connection.
    pub fn framed(&self) -> bool {
        !self.legacy
            && self.peer_extension_version.min(protocol::EXTENSION_VERSION)
                >= protocol::FRAMED_SESSIONS_VERSION
    }

    /// Reads whatever the agent sent (pongs; raw bytes for legacy agents) without waiting.
    pub fn poll(&mut self, max_frame_payload_bytes: usize) -> Result<(), IdleError> {
        let mut buf = [0u8; 512];
        loop {
            match poll_readable_nonblocking(&self.stream, &mut buf)? {
                ReadPoll::Empty => break,
                ReadPoll::Closed => return Err(IdleError::Closed),
                ReadPoll::Data(n) => {
                    match self.tls.as_mut() {
                        None => self.pending.extend_from_slice(&buf[..n]),
                        Some(tls) => {
                            let outcome = tls.decrypt_in_place(&mut buf[..n], &mut self.pending)?;
                            if outcome.eof {
                                return Err(IdleError::Closed);
                            }
                            if outcome.wants_write {
                                // A key update answer: sent whole now, like a ping.
                                let mut out = Vec::new();
                                tls.take_output(&mut out);
                                write_whole(&self.stream, &out)?;
                            }
                        }
                    }
                    if self.legacy {
                        if self.pending.len() > LEGACY_PENDING_LIMIT_BYTES {
                            return Err(IdleError::LegacyOverflow);
                        }
                    } else {
                        self.consume_frames(max_frame_payload_bytes)?;
                    }
                }
            }
        }
        if !self.legacy {
            self.consume_frames(max_frame_payload_bytes)?;
        }
        Ok(())
    }

    /// Checks only the bytes already read (those after a session's terminal), without reading
    /// the socket: a connection going back to its pool is read at its next lease or heartbeat,
    /// so a session's end costs no read that finds the socket empty.
    pub fn check_pending(&mut self, max_frame_payload_bytes: usize) -> Result<(), IdleError> {
        if self.legacy {
            if self.pending.len() > LEGACY_PENDING_LIMIT_BYTES {
                return Err(IdleError::LegacyOverflow);
            }
            return Ok(());
        }
        self.consume_frames(max_frame_payload_bytes)
    }

    fn consume_frames(&mut self, max_frame_payload_bytes: usize) -> Result<(), IdleError> {
        loop {
            match protocol::decode(&self.pending, max_frame_payload_bytes)? {
                Decoded::NeedMore(_) => {
                    if self.pending.len() > HEADER_LEN + max_frame_payload_bytes {
                        return Err(IdleError::Unexpected("oversized"));
                    }
                    return Ok(());
                }
                Decoded::Frame(Frame::Pong(_), used) => {
                    self.pending.drain(..used);
                    self.outstanding_pings = self.outstanding_pings.saturating_sub(1);
                }
                Decoded::Frame(other, _) => return Err(IdleError::Unexpected(other.flag().name())),
            }
        }
    }

    /// One heartbeat tick: close after `max_missed` unanswered pings, else send another.
    /// Legacy agents get no heartbeat; their connections are closed once idle for
    /// `legacy_idle` (`None`: never), as MOSN's own server does.
    pub fn heartbeat(
        &mut self,
        max_missed: u32,
        legacy_idle: Option<std::time::Duration>,
    ) -> Result<(), IdleError> {
        if self.legacy {
            return match legacy_idle {
                Some(limit) if self.idle_since.elapsed() >= limit => {
                    Err(IdleError::LegacyIdle(limit.as_millis()))
                }
                _ => Ok(()),
            };
        }
        if self.outstanding_pings >= max_missed {
            return Err(IdleError::HeartbeatMissed(self.outstanding_pings));
        }
        let mut frame = Vec::with_capacity(32);
        let ping = Frame::Ping(Ping {
            seq: self.next_ping_seq,
        });
        if protocol::encode(&ping, &mut frame).is_err() {
            return Ok(());
        }
        if let Some(tls) = self.tls.as_mut() {
            let mut records = Vec::with_capacity(64);
            tls.encrypt(&frame, &mut records)?;
            frame = records;
        }
        write_whole(&self.stream, &frame)?;
        self.next_ping_seq += 1;
        self.outstanding_pings += 1;
        Ok(())
    }

    /// Closes both directions now (the agent sees EOF and re-dials).
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Writes a short message on an idle connection. Its send buffer is empty, so the message is
/// written whole or not at all; a partial write would desynchronise the stream (or the TLS
/// records), so it closes the connection.
fn write_whole(stream: &TcpStream, data: &[u8]) -> Result<(), IdleError> {
    match (&*stream).write(data) {
        Ok(n) if n == data.len() => Ok(()),
        Ok(_) => Err(IdleError::SendBufferFull),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(IdleError::SendBufferFull),
        Err(e) => Err(IdleError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Pong;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (server, client)
    }

    const MAX: usize = protocol::DEFAULT_MAX_FRAME_PAYLOAD_BYTES;

    #[test]
    fn check_pending_reads_no_socket_and_takes_a_pong_already_read() {
        let (server, mut agent) = pair();
        let pong = protocol::encode_to_vec(&Frame::Pong(Pong { seq: 1 })).unwrap();
        let mut conn = IdleConn::new(1, 1, server, false, pong, 1, None);
        // Bytes in the socket are for the next lease's read, not for this check.
        agent.write_all(b"junk").unwrap();
        assert!(conn.check_pending(MAX).is_ok());
        assert!(conn.pending.is_empty());
        assert_eq!(conn.outstanding_pings, 0);
        // The lease's read finds them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match conn.poll(MAX) {
                Err(IdleError::Protocol(_)) => break,
                Ok(()) => assert!(std::time::Instant::now() < deadline, "junk never read"),
                Err(e) => panic!("unexpected {e}"),
            }
        }
    }

    #[test]
    fn check_pending_refuses_bytes_after_a_terminal_that_are_not_a_pong() {
        let (server, _agent) = pair();
        let mut conn = IdleConn::new(1, 1, server, false, b"garbage".to_vec(), 0, None);
        assert!(conn.check_pending(MAX).is_err());
    }
}

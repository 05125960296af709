//! The data connection of a framed session (`pump::framed`): a readiness socket on either
//! backend (`rt::ReadyStream`: tokio's reactor on epoll, ring polls on io_uring; a wait holds no
//! bytes, so the connection can be parked again with nothing in flight to lose), with its TLS
//! session when TLS is on, one writer at a time. On a plaintext connection bulk payloads may be
//! spliced in and out of a pipe (exact lengths). It must not know records or sessions.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;

use tokio::io::Interest;

use super::uring::Buffers;
use crate::rt::{splice_nonblocking, Pipe, ReadyStream};
use crate::tls::TlsSession;

/// The data connection of a framed session: a readiness socket and its TLS session, one writer
/// at a time.
pub struct DataLink {
    stream: ReadyStream,
    tls: RefCell<Option<Box<TlsSession>>>,
    /// TLS records owed to the peer (a key update answer), sent before the next write.
    owed: RefCell<Vec<u8>>,
    turn: super::tls::Turn,
}

impl DataLink {
    /// The data connection `stream`, encrypted by `tls` when it is `Some`; on an io_uring
    /// worker it waits on the worker's ring.
    pub fn new(stream: ReadyStream, tls: Option<Box<TlsSession>>) -> io::Result<Self> {
        Ok(Self {
            stream: stream.localize()?,
            tls: RefCell::new(tls),
            owed: RefCell::default(),
            turn: super::tls::Turn::default(),
        })
    }

    /// The socket, for idle timeouts and shutdowns.
    pub fn stream(&self) -> &ReadyStream {
        &self.stream
    }

    /// The socket and the TLS session, to park the connection again.
    pub fn into_parts(self) -> (ReadyStream, Option<Box<TlsSession>>) {
        (self.stream, self.tls.into_inner())
    }

    /// Waits for bytes (holding no buffer) and appends their plaintext to `out`; 0 when the
    /// peer closed.
    pub(super) async fn read_into(
        &self,
        out: &mut Vec<u8>,
        buffers: &Buffers,
    ) -> io::Result<usize> {
        loop {
            let stream = self.stream();
            stream.readable().await?;
            let mut scratch = buffers.take(true);
            let read = self.read_ready(&mut scratch, out);
            buffers.give(scratch);
            match read? {
                ReadReady::Got(n) => return Ok(n),
                ReadReady::Nothing => {}
                ReadReady::Owes(got) => {
                    // TLS's own answer goes out at once.
                    self.write(&[]).await?;
                    if got > 0 {
                        return Ok(got);
                    }
                }
            }
        }
    }

    /// One non-blocking read into `scratch`, its plaintext appended to `out`.
    fn read_ready(&self, scratch: &mut Vec<u8>, out: &mut Vec<u8>) -> io::Result<ReadReady> {
        let stream = self.stream();
        {
            let n = match stream.read_spare(scratch) {
                Ok(n) => n,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    return Ok(ReadReady::Nothing)
                }
                Err(e) => return Err(e),
            };
            {
                let mut tls = self.tls.borrow_mut();
                let Some(tls) = tls.as_mut() else {
                    out.extend_from_slice(&scratch[..n]);
                    return Ok(ReadReady::Got(n));
                };
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "data connection closed mid-session",
                    ));
                }
                let before = out.len();
                let outcome = tls
                    .decrypt(&scratch[..n], out)
                    .map_err(crate::tls::io_error)?;
                if outcome.eof {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TLS close_notify mid-session",
                    ));
                }
                if outcome.wants_write {
                    tls.take_output(&mut self.owed.borrow_mut());
                }
                let got = out.len() - before;
                Ok(if outcome.wants_write {
                    ReadReady::Owes(got)
                } else if got > 0 {
                    ReadReady::Got(got)
                } else {
                    ReadReady::Nothing
                })
            }
        }
    }

    /// Writes `bytes` (encrypted when TLS is on) in one write where the socket allows, in the
    /// connection's write turn.
    pub(super) async fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let _turn = self.turn.take().await;
        let records = {
            let mut tls = self.tls.borrow_mut();
            match tls.as_mut() {
                None => None,
                Some(tls) => {
                    let mut out = std::mem::take(&mut *self.owed.borrow_mut());
                    out.reserve(bytes.len() + (bytes.len() / 16_384 + 1) * 64);
                    tls.encrypt(bytes, &mut out).map_err(crate::tls::io_error)?;
                    Some(out)
                }
            }
        };
        match records {
            None => self.stream.write_all(bytes).await,
            Some(out) if out.is_empty() => Ok(()),
            Some(out) => self.stream.write_all(&out).await,
        }
    }

    /// True when the connection has no TLS (its bytes may be spliced).
    pub fn is_plain(&self) -> bool {
        self.tls.borrow().is_none()
    }

    /// Writes `header`, then exactly `len` bytes from `pipe` (holding at least that many), in
    /// the write turn. Plaintext connections only.
    pub(super) async fn write_spliced(
        &self,
        header: &[u8],
        pipe: &Pipe,
        len: usize,
    ) -> io::Result<()> {
        let _turn = self.turn.take().await;
        let stream = self.stream();
        stream.write_all(header).await?;
        let mut left = len;
        while left > 0 {
            match splice_nonblocking(pipe.read_fd(), stream.as_raw_fd(), left) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => left -= n.min(left),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The socket is full: wait for room, then splice under tokio's readiness
                    // so a socket still full clears it (`io_clearing`).
                    loop {
                        stream.writable().await?;
                        match stream.io(
                            Interest::WRITABLE,
                            || splice_nonblocking(pipe.read_fd(), stream.as_raw_fd(), left),
                            |_| false,
                        ) {
                            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                            Ok(n) => {
                                left -= n.min(left);
                                break;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits for bytes (holding no buffer) and splices at most `want` of them into `pipe`;
    /// 0 when the peer closed. Cancel-safe: the splice happens only after readiness, without
    /// an await. Plaintext connections only.
    pub(super) async fn splice_in(&self, pipe: &Pipe, want: usize) -> io::Result<usize> {
        let stream = self.stream();
        loop {
            stream.readable().await?;
            let spliced = stream.io(
                Interest::READABLE,
                || splice_nonblocking(stream.as_raw_fd(), pipe.write_fd(), want),
                |_| false,
            );
            match spliced {
                Ok(n) => return Ok(n),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Shuts the connection down both ways (it will not be reused).
    pub fn shutdown(&self) {
        crate::rt::shutdown_both(&self.stream);
    }
}

/// What one non-blocking read gave.
enum ReadReady {
    /// This many plaintext bytes (0: the peer closed a plaintext connection).
    Got(usize),
    /// Nothing yet (no bytes, or a partial TLS record).
    Nothing,
    /// This many plaintext bytes, and TLS records owed to the peer.
    Owes(usize),
}

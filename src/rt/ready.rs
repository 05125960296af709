//! A socket waited on by readiness, on whichever backend the worker runs: tokio's reactor on an
//! epoll worker, one-shot polls on the worker's own ring on an io_uring worker (so the worker
//! still blocks only in `io_uring_enter`, and no other thread is woken for its bytes).
//!
//! Readiness never holds a buffer or bytes, so every wait here may be dropped at any point and
//! the socket stays usable: this is what a data connection between sessions, which goes back
//! to its pool, is read with. A ring poll checks the socket's state when it is armed, so no
//! readiness can go stale and nothing needs clearing. This module must not know about sessions.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// A socket read and written by readiness.
#[derive(Debug)]
pub enum ReadyStream {
    Tokio(TcpStream),
    /// A non-blocking socket on an io_uring worker.
    Ring(std::net::TcpStream),
}

impl ReadyStream {
    /// `stream` as this thread waits on sockets: moved off tokio's reactor on a ring worker.
    pub fn adopt(stream: TcpStream) -> io::Result<Self> {
        if super::ring::is_current() {
            // Stays non-blocking (tokio set it so).
            Ok(ReadyStream::Ring(stream.into_std()?))
        } else {
            Ok(ReadyStream::Tokio(stream))
        }
    }

    /// The socket as a tokio socket again (to park it in an idle pool).
    pub fn into_tokio(self) -> io::Result<TcpStream> {
        match self {
            ReadyStream::Tokio(s) => Ok(s),
            ReadyStream::Ring(s) => TcpStream::from_std(s),
        }
    }

    /// Waits until a read would find bytes, EOF or an error.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            ReadyStream::Tokio(s) => s.readable().await,
            ReadyStream::Ring(s) => super::ring::poll(s.as_raw_fd(), libc::POLLIN)
                .await
                .map(|_| ()),
        }
    }

    /// Waits until a write would take bytes (or fail).
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            ReadyStream::Tokio(s) => s.writable().await,
            ReadyStream::Ring(s) => super::ring::poll(s.as_raw_fd(), libc::POLLOUT)
                .await
                .map(|_| ()),
        }
    }

    /// Runs the non-blocking call `op`; on tokio under its readiness for `interest`, cleared
    /// when `drained` says the call emptied or filled the socket (`rt::io_clearing`).
    pub fn io<R>(
        &self,
        interest: Interest,
        op: impl FnOnce() -> io::Result<R>,
        drained: impl FnOnce(&R) -> bool,
    ) -> io::Result<R> {
        match self {
            ReadyStream::Tokio(s) => super::io_clearing(s, interest, op, drained),
            ReadyStream::Ring(_) => op(),
        }
    }

    /// One read into `buf`'s spare capacity (appended), after readiness.
    pub fn read_spare(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let room = buf.capacity() - buf.len();
        let fd = self.as_raw_fd();
        self.io(
            Interest::READABLE,
            || super::io::read_spare(&Fd(fd), buf),
            |&n| n > 0 && n < room,
        )
    }

    /// Writes all of `data`, waiting for room as needed (the first send without waiting).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        let sent = super::send_nonblocking(self, data)?;
        data = &data[sent..];
        while !data.is_empty() {
            self.writable().await?;
            match self.io(
                Interest::WRITABLE,
                || super::send_nonblocking(self, data),
                |&n| n < data.len(),
            ) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl AsRawFd for ReadyStream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            ReadyStream::Tokio(s) => s.as_raw_fd(),
            ReadyStream::Ring(s) => s.as_raw_fd(),
        }
    }
}

/// A borrowed descriptor for the raw calls.
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

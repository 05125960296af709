//! Owned-buffer socket I/O as both backends can do it, and `write_all` for tokio sockets.
//!
//! io_uring needs the buffer for the duration of an operation, so reads and writes take and give
//! back owned buffers; the epoll implementation follows the same shape, so code above the seam
//! (the TLS pump, TLS channels) is written once. This module must not know about sessions.

use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Writes all of `data`, waiting for writability as needed. The first send is tried without
/// looking at readiness (most writes complete at once); once the send buffer is full, each
/// retry runs under tokio's readiness ([`io_clearing`]), so a wait sleeps until room appears.
pub async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    let sent = super::send_nonblocking(to, data)?;
    data = &data[sent..];
    while !data.is_empty() {
        to.writable().await?;
        match io_clearing(
            to,
            Interest::WRITABLE,
            || super::send_nonblocking(to, data),
            |&n| n < data.len(),
        ) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs the non-blocking call `op` under `stream`'s tokio readiness for `interest`. When
/// `drained` says the call emptied (a short read) or filled (a short send) the socket, that
/// readiness is cleared as of *before* the call: the next wait sleeps until a new edge, and an
/// edge the reactor recorded during the call is kept. That holds whichever thread runs the
/// reactor (an io_uring worker's tokio sockets are served by a background one), unlike clearing
/// after the call. `WouldBlock` when tokio holds no readiness for `interest` (`op` not run).
pub(crate) fn io_clearing<R>(
    stream: &TcpStream,
    interest: Interest,
    op: impl FnOnce() -> io::Result<R>,
    drained: impl FnOnce(&R) -> bool,
) -> io::Result<R> {
    let mut out = None;
    let ran = stream.try_io(interest, || {
        let value = op()?;
        let clear = drained(&value);
        out = Some(value);
        if clear {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match (out, ran) {
        (Some(value), _) => Ok(value),
        (None, Err(e)) => Err(e),
        (None, Ok(())) => Err(io::ErrorKind::WouldBlock.into()),
    }
}

/// One non-blocking read into `buf`'s spare capacity (appended); returns the bytes read.
pub(crate) fn read_spare(fd: &impl AsRawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: the vector owns its spare capacity, valid for writes of its length.
    let n = unsafe { recv_dontwait(fd, spare.as_mut_ptr().cast(), spare.len()) }?;
    // SAFETY: the kernel initialised `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// `recv(2)` with `MSG_DONTWAIT` into `len` bytes at `to`.
///
/// # Safety
/// `to` must be valid for writes of `len` bytes.
unsafe fn recv_dontwait(fd: &impl AsRawFd, to: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller vouches for `to`; the fd is owned by `fd`, which outlives the call.
    let n = unsafe { libc::recv(fd.as_raw_fd(), to.cast(), len, libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Reads once into `buf`'s spare capacity after readiness, clearing the readiness when the
/// read came up short (the socket is empty: the next wait sleeps without an EAGAIN read).
/// `WouldBlock` when tokio holds no readiness or the socket had nothing after all.
pub(crate) fn read_clearing(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    io_clearing(
        stream,
        Interest::READABLE,
        || read_spare(stream, buf),
        |&n| n > 0 && n < room,
    )
}

/// Owned-buffer socket I/O, as both backends can do it: the TLS pump is written once over it.
pub(crate) trait OwnedIo {
    /// Reads into `buf`'s capacity (its contents are replaced); 0 means EOF.
    async fn read_owned(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    /// Where the backend has readiness (epoll): waits until a read would find bytes (or EOF),
    /// holding no buffer, and returns true. Where it has none (io_uring learns of bytes only
    /// through a read): returns false at once; park a small read instead.
    async fn wait_readable(&self) -> io::Result<bool>;
    /// Writes all of `buf`.
    async fn write_owned(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);
    /// Where reads are ring operations: one non-blocking read appended to `buf`'s spare
    /// capacity, for bytes already queued (0 at EOF). Elsewhere `WouldBlock`.
    fn read_now(&self, _buf: &mut Vec<u8>) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    /// Where reads are ring operations and the ring has provided buffers: waits for bytes
    /// holding no buffer (the kernel picks one of the ring's when they arrive). `None` where
    /// that cannot be done now (epoll, no buffer rings, all buffers out): read another way.
    async fn read_provided(&self) -> Option<io::Result<super::ring::Provided>> {
        None
    }
    fn shutdown_how(&self, how: Shutdown) -> io::Result<()>;
}

impl OwnedIo for TcpStream {
    async fn read_owned(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        if buf.capacity() == 0 {
            buf.reserve(crate::config::defaults::PUMP_BUFFER_BYTES);
        }
        loop {
            if let Err(e) = self.readable().await {
                return (Err(e), buf);
            }
            // Reads into the spare capacity: no zeroing, no growth (the buffer is empty).
            match read_clearing(self, &mut buf) {
                Ok(n) => return (Ok(n), buf),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
    }

    async fn wait_readable(&self) -> io::Result<bool> {
        self.readable().await.map(|()| true)
    }

    async fn write_owned(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let written = write_all(self, &buf).await;
        (written, buf)
    }

    fn shutdown_how(&self, how: Shutdown) -> io::Result<()> {
        socket2::SockRef::from(self).shutdown(how)
    }
}

/// Shuts the write side down to carry a half-close across; a peer already gone (ENOTCONN) is
/// not an error.
pub(crate) fn shutdown_write(socket: &impl OwnedIo) -> io::Result<()> {
    match socket.shutdown_how(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}

/// One non-blocking read into `buf`; returns the bytes read.
pub(crate) fn read_into_slice(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    unsafe { recv_dontwait(fd, buf.as_mut_ptr(), buf.len()) }
}

/// Whether the socket is in non-blocking mode (for debug assertions).
pub(super) fn is_nonblocking(socket: &impl AsRawFd) -> bool {
    // SAFETY: F_GETFL reads the file status flags of a descriptor `socket` owns.
    let flags = unsafe { libc::fcntl(socket.as_raw_fd(), libc::F_GETFL) };
    flags >= 0 && flags & libc::O_NONBLOCK != 0
}

/// Shuts a socket down both ways (ending every operation and wait on it); errors are ignored
/// (a socket already shut down or reset).
pub fn shutdown_both(socket: &impl AsRawFd) {
    // SAFETY: the fd is owned by `socket`, which outlives the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(socket.as_raw_fd()) };
    let _ = socket2::SockRef::from(&fd).shutdown(Shutdown::Both);
}

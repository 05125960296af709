//! Owned-buffer socket I/O as both backends can do it, and `write_all` for tokio sockets.
//!
//! io_uring needs the buffer for the duration of an operation, so reads and writes take and give
//! back owned buffers; the epoll implementation follows the same shape, so code above the seam
//! (the TLS pump, TLS channels) is written once. This module must not know about sessions.

use std::io;
use std::net::Shutdown;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Writes all of `data`, waiting for writability as needed. For current-thread runtimes only
/// (every runtime ringtun runs sockets on is one): it clears readiness it has just seen go stale.
pub async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    loop {
        let sent = super::send_nonblocking(to, data)?;
        data = &data[sent..];
        if data.is_empty() {
            return Ok(());
        }
        // The send buffer is full: clear tokio's writable readiness (it may predate the full
        // buffer) so the wait below sleeps until the next edge. Safe on this current-thread
        // runtime: the reactor cannot record newer readiness between the send and this line.
        let _ = to.try_io(Interest::WRITABLE, || {
            Err::<(), io::Error>(io::ErrorKind::WouldBlock.into())
        });
        to.writable().await?;
    }
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
            let capacity = buf.capacity();
            match self.try_read_buf(&mut buf) {
                Ok(n) => {
                    if n > 0 && n < capacity {
                        // A short read emptied the socket: clear its readiness so the next wait
                        // sleeps until new bytes (current-thread runtime: no newer readiness can
                        // have been recorded in between), as `tls::Channel` does.
                        let _ = self.try_io(Interest::READABLE, || {
                            Err::<(), io::Error>(io::ErrorKind::WouldBlock.into())
                        });
                    }
                    return (Ok(n), buf);
                }
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

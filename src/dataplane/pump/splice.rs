//! The epoll pump's splice burst: a busy plaintext direction moves bytes socket → pipe → socket
//! inside the kernel, never copied into user space, until the source has nothing more now.
//!
//! A direction holds a pipe only while it splices (`rt::pipe`), so an idle session holds none. TLS
//! sessions never come here (their bytes must pass through user space). The io_uring pump splices
//! with its own calls (`pump::uring`).
//!
//! A splice into a socket whose peer has gone raises SIGPIPE (there is no MSG_NOSIGNAL for
//! splice); Rust programs ignore SIGPIPE from the start, so it arrives as an EPIPE error. A
//! program embedding this library must keep SIGPIPE ignored too.

use std::io;
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::rt::{splice_nonblocking, Pipe};

/// How a splice burst ended.
pub struct Spliced {
    /// `from` reached EOF.
    pub eof: bool,
    /// Bytes moved by this burst.
    pub moved: u64,
}

/// Moves bytes `from` → `to` through `pipe` until `from` has nothing more now, or reaches EOF.
/// Returns with the pipe empty; on an error the pipe may hold bytes and must be dropped.
pub async fn splice_until_dry(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
) -> io::Result<Spliced> {
    let mut moved = 0u64;
    loop {
        let read = from.try_io(Interest::READABLE, || {
            splice_nonblocking(from.as_raw_fd(), pipe.write_fd(), pipe.capacity_bytes())
        });
        let n = match read {
            Ok(0) => return Ok(Spliced { eof: true, moved }),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok(Spliced { eof: false, moved })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            match splice_nonblocking(pipe.read_fd(), to.as_raw_fd(), left) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The pipe holds bytes, so the socket is full: clear tokio's writable
                    // readiness (it predates the full buffer) and wait for the next edge. Safe on
                    // this current-thread runtime: nothing records newer readiness in between.
                    let _ = to.try_io(Interest::WRITABLE, || {
                        Err::<(), io::Error>(io::ErrorKind::WouldBlock.into())
                    });
                    to.writable().await?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // No short-read shortcut here (the copy pump has one): a pipe holds a page per slot, so
        // a splice can stop short on a full pipe while the socket still has bytes, and skipping
        // the read that says EAGAIN would then miss them (epoll is edge-triggered).
        moved += n as u64;
    }
}

//! Moving session bytes both ways between two sockets, on either backend.
//!
//! `epoll` and `uring` are the plaintext pumps of the two backends, `tls` the TLS pump written
//! once over owned-buffer I/O, `framed` the pump of framed sessions (extension version 2: session
//! records on a data connection that outlives the session, plaintext or TLS, both backends); all
//! follow one direction `policy` (when to wait, grow a buffer or splice) and carry a half-close
//! across (one side's EOF becomes a write shutdown on the other, or an END record). An error on
//! either side shuts both sockets down before they are dropped, so no io_uring operation is left
//! in flight. Pumps know sockets, buffers and session records, never control frames or
//! sessions' hosts.

mod data_link;
pub mod epoll;
pub mod framed;
mod framed_splice;
pub mod policy;
mod splice;
pub mod tls;
pub mod uring;

use std::io;

pub use epoll::BufferPool;
pub use framed::{abort_framed, pump_framed, DataLink, FramedEnd};
pub use tls::pump_tls;

use crate::rt::Conn;

/// Size of one pump buffer.
pub const PUMP_BUFFER_BYTES: usize = crate::config::defaults::PUMP_BUFFER_BYTES;
/// Size of the pipe a busy plaintext direction splices through.
pub const SPLICE_PIPE_BYTES: usize = crate::config::defaults::SPLICE_PIPE_BYTES;

/// Bytes moved by a finished pump.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// A worker's recycled buffers for both pumps.
#[derive(Clone)]
pub struct Pools {
    epoll: BufferPool,
    uring: uring::Buffers,
}

impl Default for Pools {
    fn default() -> Self {
        Self::new(PUMP_BUFFER_BYTES, SPLICE_PIPE_BYTES)
    }
}

impl Pools {
    /// Pools whose busy-direction buffers are `buffer_bytes` long; busy plaintext directions on
    /// either backend splice through pipes of `splice_pipe_bytes` (0: they always copy).
    pub fn new(buffer_bytes: usize, splice_pipe_bytes: usize) -> Self {
        Self {
            epoll: BufferPool::new(buffer_bytes).with_splice(splice_pipe_bytes),
            uring: uring::Buffers::new(buffer_bytes).with_splice(splice_pipe_bytes),
        }
    }
}

/// Pumps between two sockets of the same backend; when it fails, shuts both down.
pub async fn pump_conns(
    a: &Conn,
    b: &Conn,
    prefix_to_a: Vec<u8>,
    prefix_to_b: Vec<u8>,
    pools: &Pools,
) -> io::Result<Moved> {
    let moved = match (a, b) {
        (Conn::Epoll(x), Conn::Epoll(y)) => {
            epoll::pump(x, y, &prefix_to_a, &prefix_to_b, &pools.epoll).await
        }
        (Conn::Uring(x), Conn::Uring(y)) => {
            uring::pump(x, y, prefix_to_a, prefix_to_b, &pools.uring)
                .await
                .map(|(a_to_b, b_to_a)| Moved { a_to_b, b_to_a })
        }
        _ => Err(io::Error::other(
            "sockets of different I/O backends cannot be pumped together",
        )),
    };
    if moved.is_err() {
        // A failed pump may leave a direction mid-transfer (an io_uring read in flight): shutting
        // both sockets down ends it before they are dropped. A pump that finished has already
        // shut both write sides down and read both EOFs: two more calls would only fail.
        a.shutdown();
        b.shutdown();
    }
    moved
}

#[cfg(test)]
mod tests;

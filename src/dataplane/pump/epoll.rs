//! The epoll pump: session bytes both ways between two tokio sockets.
//!
//! Each direction waits for readiness *without* a buffer, takes one from the worker's pool only
//! while bytes are flowing, and returns it when the socket runs dry: an idle session holds no
//! buffer at all, a busy one reads and writes the same buffer with no copy in between. When the
//! direction policy says splice, it moves on with splice(2) through a pooled pipe, and copies
//! again once quiet. A read EOF becomes a write shutdown on the other socket (half-close); an
//! error on either side ends both. It must not be used on io_uring sockets.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::policy::{DirectionPolicy, Next};
use super::Moved;
use crate::rt::{shutdown_write, write_all, PipePool, POOL_KEEP};

/// A worker's recycled pump buffers, and its pipes when busy directions splice.
#[derive(Clone)]
pub struct BufferPool {
    policy: DirectionPolicy,
    free: Rc<RefCell<Vec<Box<[u8]>>>>,
    pipes: Option<PipePool>,
}

impl Default for BufferPool {
    fn default() -> Self {
        Self::new(crate::config::defaults::PUMP_BUFFER_BYTES)
    }
}

impl BufferPool {
    /// A pool of buffers of `buffer_bytes` each.
    pub fn new(buffer_bytes: usize) -> Self {
        Self {
            policy: DirectionPolicy::new(buffer_bytes, false),
            free: Rc::default(),
            pipes: None,
        }
    }

    /// This pool, with busy directions splicing through pipes of `pipe_bytes` (0: never).
    pub fn with_splice(mut self, pipe_bytes: usize) -> Self {
        self.pipes = (pipe_bytes > 0).then(|| PipePool::new(pipe_bytes));
        self.policy = DirectionPolicy::new(self.policy.large_bytes(), self.pipes.is_some());
        self
    }

    /// Size of one buffer.
    pub fn buffer_bytes(&self) -> usize {
        self.policy.large_bytes()
    }

    /// The pipes busy directions splice through, if splice is on.
    #[cfg(test)]
    pub(crate) fn pipes(&self) -> Option<&PipePool> {
        self.pipes.as_ref()
    }

    fn take(&self) -> Box<[u8]> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0u8; self.buffer_bytes()].into_boxed_slice())
    }

    fn give(&self, buf: Box<[u8]>) {
        let mut free = self.free.borrow_mut();
        if free.len() < POOL_KEEP {
            free.push(buf);
        }
    }
}

/// Pumps until both directions have seen EOF, or either fails. `prefix_to_a` / `prefix_to_b` are
/// bytes already read that must be delivered first.
pub async fn pump(
    a: &TcpStream,
    b: &TcpStream,
    prefix_to_a: &[u8],
    prefix_to_b: &[u8],
    pool: &BufferPool,
) -> io::Result<Moved> {
    let a_to_b = one_way(a, b, prefix_to_b, pool);
    let b_to_a = one_way(b, a, prefix_to_a, pool);
    let (x, y) = tokio::try_join!(a_to_b, b_to_a)?;
    Ok(Moved {
        a_to_b: x,
        b_to_a: y,
    })
}

async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    prefix: &[u8],
    pool: &BufferPool,
) -> io::Result<u64> {
    let mut total = 0u64;
    if !prefix.is_empty() {
        write_all(to, prefix).await?;
        total += prefix.len() as u64;
    }
    // Copying until the policy says splice, splicing until it says wait (one read and one write
    // per message while quiet, no pipe held).
    let mut splicing = false;
    loop {
        from.readable().await?;
        let eof = match pool.pipes.as_ref().filter(|_| splicing) {
            Some(pipes) => match pipes.take() {
                Ok(pipe) => {
                    let burst = super::splice::splice_until_dry(from, to, &pipe).await?;
                    pipes.give(pipe);
                    total += burst.moved;
                    splicing = pool.policy.after_splice(burst.moved) == Next::Splice;
                    burst.eof
                }
                Err(e) => {
                    // Out of descriptors for a pipe: this direction copies instead.
                    crate::log_limited!(
                        warn!(error = %e, "cannot open a pipe for splice (out of descriptors?); this session direction copies instead")
                    );
                    splicing = false;
                    continue;
                }
            },
            None => {
                let mut buf = pool.take();
                let copied = copy_until_dry(from, to, &mut buf, &pool.policy, &mut total).await;
                pool.give(buf);
                let copied = copied?;
                splicing = copied == Copied::Busy;
                copied == Copied::Eof
            }
        };
        if eof {
            // Carry the half-close across.
            shutdown_write(to)?;
            return Ok(total);
        }
    }
}

/// How a copy burst ended.
#[derive(Debug, PartialEq, Eq)]
enum Copied {
    /// The source has nothing more now.
    Dry,
    /// The policy says splice: the caller splices the rest.
    Busy,
    /// The source reached EOF.
    Eof,
}

/// Reads and forwards until the source would block, reaches EOF, or the policy says splice.
async fn copy_until_dry(
    from: &TcpStream,
    to: &TcpStream,
    buf: &mut [u8],
    policy: &DirectionPolicy,
    total: &mut u64,
) -> io::Result<Copied> {
    loop {
        match from.try_read(buf) {
            Ok(0) => return Ok(Copied::Eof),
            Ok(n) => {
                let dry = n < buf.len();
                if dry {
                    // A short read emptied the socket: clear its readiness now, without a
                    // syscall, so the next wait sleeps instead of paying one more read that
                    // returns EAGAIN. Safe on this current-thread runtime: the reactor cannot
                    // record newer readiness before this line, and bytes arriving later raise a
                    // new edge.
                    let _ = from.try_io(Interest::READABLE, || {
                        Err::<(), io::Error>(io::ErrorKind::WouldBlock.into())
                    });
                }
                write_all(to, &buf[..n]).await?;
                *total += n as u64;
                if dry {
                    return Ok(Copied::Dry);
                }
                if policy.after_read(n, buf.len()) == Next::Splice {
                    return Ok(Copied::Busy);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Copied::Dry),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

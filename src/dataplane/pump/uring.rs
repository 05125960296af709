//! The io_uring pump: session bytes both ways between two io_uring sockets, with owned buffers.
//!
//! A quiet direction waits holding no buffer: its receive names the ring's provided buffers and
//! the kernel picks one when bytes arrive (`read_quiet`; where the kernel has no buffer rings,
//! or all are out, it parks a small read instead). The direction policy moves it to a large
//! buffer while bytes flow and, with splice on, splices what is queued after a full large read.
//! An in-flight read is never dropped to cancel it (a dropped ring read may take bytes with it);
//! on an error both sockets are shut down, which completes the other direction's read. It must
//! not be used on epoll sockets.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use super::policy::{DirectionPolicy, Next, SMALL_BUFFER_BYTES};
use crate::rt::uring::Stream;
use crate::rt::uring_splice;
use crate::rt::{readable_bytes, shutdown_write, splice_nonblocking, OwnedIo, PipePool, POOL_KEEP};

/// A worker's recycled owned buffers (small and large), and its pipes when busy directions
/// splice.
#[derive(Clone)]
pub struct Buffers {
    policy: DirectionPolicy,
    small: Rc<RefCell<Vec<Vec<u8>>>>,
    large: Rc<RefCell<Vec<Vec<u8>>>>,
    pipes: Option<PipePool>,
}

impl Buffers {
    /// Pools with large buffers of `large_bytes`.
    pub fn new(large_bytes: usize) -> Self {
        Self {
            policy: DirectionPolicy::new(large_bytes, false),
            small: Rc::default(),
            large: Rc::default(),
            pipes: None,
        }
    }

    /// These buffers, with busy plaintext directions splicing through pipes of `pipe_bytes`
    /// (0: never).
    pub fn with_splice(mut self, pipe_bytes: usize) -> Self {
        self.pipes = (pipe_bytes > 0).then(|| PipePool::new(pipe_bytes));
        self.policy = DirectionPolicy::new(self.policy.large_bytes(), self.pipes.is_some());
        self
    }

    /// A small or large buffer, empty (the TLS pump takes its buffers here too).
    pub(super) fn take(&self, large: bool) -> Vec<u8> {
        let (pool, size) = if large {
            (&self.large, self.policy.large_bytes())
        } else {
            (&self.small, SMALL_BUFFER_BYTES)
        };
        pool.borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(size))
    }

    /// The pipes busy plaintext directions splice through, when splice is on.
    pub(super) fn pipes(&self) -> Option<&PipePool> {
        self.pipes.as_ref()
    }

    /// Size of a large buffer.
    pub(super) fn large_bytes(&self) -> usize {
        self.policy.large_bytes()
    }

    /// Large buffers waiting in the pool.
    #[cfg(test)]
    pub(crate) fn large_free(&self) -> usize {
        self.large.borrow().len()
    }

    /// Returns a buffer to its pool (by its capacity).
    pub(super) fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() < SMALL_BUFFER_BYTES {
            // Not one of the pool's (an empty placeholder): a read into it would see EOF.
            return;
        }
        buf.clear();
        let pool = if buf.capacity() >= self.policy.large_bytes() {
            &self.large
        } else {
            &self.small
        };
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_KEEP {
            pool.push(buf);
        }
    }

    /// Swaps `buf` for what `next` needs: a large buffer to read on, or none (a quiet read
    /// brings its own).
    fn resize_for(&self, buf: &mut Vec<u8>, next: Next) {
        let large = buf.capacity() >= self.policy.large_bytes();
        if next != Next::ReadLarge {
            self.give(std::mem::take(buf));
        } else if !large {
            self.give(std::mem::replace(buf, self.take(true)));
        }
    }
}

/// A quiet direction's wait for bytes: with the ring's provided buffers it holds none (the
/// kernel picks one when bytes arrive, and they are copied to a pooled buffer sized for them);
/// without, it parks a small read. A message that filled the provided buffer is completed with
/// one non-blocking read, so it travels whole.
pub(super) async fn read_quiet<S: OwnedIo>(
    from: &S,
    buffers: &Buffers,
) -> (io::Result<usize>, Vec<u8>) {
    match from.read_provided().await {
        Some(Ok(chunk)) => {
            let bytes = chunk.bytes();
            let n = bytes.len();
            let mut buf = buffers.take(n >= SMALL_BUFFER_BYTES);
            buf.extend_from_slice(bytes);
            let filled = chunk.filled();
            // Back to the ring before anything waits.
            drop(chunk);
            let more = if filled {
                from.read_now(&mut buf).unwrap_or(0)
            } else {
                0
            };
            (Ok(n + more), buf)
        }
        Some(Err(e)) => (Err(e), Vec::new()),
        None => {
            let (read, buf) = from.read_owned(buffers.take(false)).await;
            match read {
                Ok(n) if n > 0 && n == buf.capacity() => {
                    // The parked small read filled: the rest of the message is most likely
                    // queued already. One non-blocking read takes it now, so the message
                    // travels whole (one record, one write each hop) instead of as a 512-byte
                    // piece and its tail. An error or EOF stays in the socket for the next read.
                    let mut large = buffers.take(true);
                    large.extend_from_slice(&buf);
                    buffers.give(buf);
                    let more = from.read_now(&mut large).unwrap_or(0);
                    (Ok(n + more), large)
                }
                other => (other, buf),
            }
        }
    }
}

/// Pumps both ways until both directions saw EOF or either failed; returns bytes moved
/// (a→b, b→a). On an error both sockets are shut down so the other direction's read completes.
pub async fn pump(
    a: &Stream,
    b: &Stream,
    prefix_to_a: Vec<u8>,
    prefix_to_b: Vec<u8>,
    buffers: &Buffers,
) -> io::Result<(u64, u64)> {
    let (x, y) = tokio::join!(
        one_way(a, b, prefix_to_b, buffers),
        one_way(b, a, prefix_to_a, buffers)
    );
    Ok((x?, y?))
}

async fn one_way(
    from: &Stream,
    to: &Stream,
    prefix: Vec<u8>,
    buffers: &Buffers,
) -> io::Result<u64> {
    let fail = |e: io::Error| {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
        e
    };
    let mut total = 0u64;
    if !prefix.is_empty() {
        let len = prefix.len() as u64;
        let (written, _) = to.write_all(prefix).await;
        written.map_err(fail)?;
        total += len;
    }
    // Empty while quiet: the quiet read brings a buffer of its own.
    let mut buf = Vec::new();
    loop {
        let (read, b) = if buf.capacity() > 0 {
            from.read(buf).await
        } else {
            read_quiet(from, buffers).await
        };
        buf = b;
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                buffers.give(buf);
                return Err(fail(e));
            }
        };
        if n == 0 {
            buffers.give(buf);
            return shutdown_write(to).map(|()| total).map_err(fail);
        }
        let capacity = buf.capacity();
        // Most writes complete at once (the peer's receive window is open): one non-blocking
        // send(2) saves a ring submission and completion per hop. What it cannot write goes
        // through the ring.
        let sent = match to.send_now(&buf) {
            Ok(sent) => sent,
            Err(e) => {
                buffers.give(buf);
                return Err(fail(e));
            }
        };
        if sent < n {
            let (written, b) = to.write_rest(buf, sent).await;
            buf = b;
            if let Err(e) = written {
                buffers.give(buf);
                return Err(fail(e));
            }
        }
        total += n as u64;
        let mut next = buffers.policy.after_read(n, capacity);
        if next == Next::Splice {
            // Splice what is already queued, then go back to a ring read (which also sees EOF).
            // The socket is empty afterwards, so that read waits: it parks a small buffer (a
            // burst fills it and turns the direction busy again), so a session that goes quiet
            // after bulk pins no large buffer.
            let spliced = match &buffers.pipes {
                Some(pipes) => splice_queued(from, to, pipes).await,
                None => Ok(None),
            };
            next = match spliced {
                Ok(Some(moved)) => {
                    total += moved;
                    Next::Wait
                }
                // No pipe or no splice ring: copy on.
                Ok(None) => Next::ReadLarge,
                Err(e) => {
                    buffers.give(buf);
                    return Err(fail(e));
                }
            };
        }
        buffers.resize_for(&mut buf, next);
    }
}

/// Splices `from` → `to` while `from` has bytes queued, through a pooled pipe; returns the bytes
/// moved, with `from` empty. Nothing here waits for `from` (see `rt::uring_splice`). Without a
/// pipe it moves nothing and returns `None`: the pump copies on.
async fn splice_queued(from: &Stream, to: &Stream, pipes: &PipePool) -> io::Result<Option<u64>> {
    if !uring_splice::available() {
        return Ok(None);
    }
    let pipe = match pipes.take() {
        Ok(p) => p,
        Err(e) => {
            crate::log_limited!(
                warn!(error = %e, "cannot open a pipe for splice (out of descriptors?); this session direction copies instead")
            );
            return Ok(None);
        }
    };
    let (from_fd, to_fd) = (from.as_raw_fd(), to.as_raw_fd());
    let mut moved = 0u64;
    loop {
        let queued = readable_bytes(from_fd)?.min(pipe.capacity_bytes());
        if queued == 0 {
            break;
        }
        // The socket holds `queued` bytes, so this cannot wait even in blocking mode.
        let n = splice_nonblocking(from_fd, pipe.write_fd(), queued)?;
        if n == 0 {
            break;
        }
        // Never waits in the kernel: a full `to` is waited for on the splice ring.
        uring_splice::splice_to_socket(pipe.read_fd(), to_fd, n).await?;
        moved += n as u64;
    }
    // Reached only with the pipe empty (errors return above and drop it).
    pipes.give(pipe);
    Ok(Some(moved))
}

//! splice(2) through a pipe, for busy plaintext session directions: the pipes both backends use,
//! and the epoll drain. Bytes move socket → pipe → socket inside the kernel and are never copied
//! into user space.
//!
//! A direction holds a pipe only while it splices, and gives it back to its worker's pool when
//! the socket runs dry, as the copy pump does with its buffers: an idle session holds no pipe (no
//! descriptors, no pages). A pipe that may still hold bytes (an error mid-transfer) is closed,
//! never reused. TLS sessions never come here (their bytes must pass through user space). The
//! io_uring pump uses the same pipes with its own splice calls (`rt::uring`).
//!
//! A splice into a socket whose peer has gone raises SIGPIPE (there is no MSG_NOSIGNAL for
//! splice); Rust programs ignore SIGPIPE from the start, so it arrives as an EPIPE error. A
//! program embedding this library must keep SIGPIPE ignored too.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::rt::splice_nonblocking;

/// Pipes kept for reuse per worker; more are closed when returned.
const POOL_KEEP: usize = 32;

/// One pipe and how many bytes it holds at most (one splice moves at most that much).
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity_bytes: usize,
}

impl Pipe {
    /// The end bytes are read from.
    pub fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The end bytes are written to.
    pub fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }

    /// Most bytes it holds.
    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    /// A non-blocking pipe, grown to `want_bytes` if the kernel allows it (a pipe is a page ring;
    /// pages are taken only while bytes sit in it). It keeps whatever size the kernel gives
    /// (`fs.pipe-max-size`, `fs.pipe-user-pages-soft`).
    fn new(want_bytes: usize) -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let fd = write.as_raw_fd();
        let want = libc::c_int::try_from(want_bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: fcntl on a pipe descriptor owned here. A refusal (EPERM over the limits) leaves
        // the default size, read back below.
        let capacity = unsafe {
            libc::fcntl(fd, libc::F_SETPIPE_SZ, want);
            libc::fcntl(fd, libc::F_GETPIPE_SZ)
        };
        let capacity_bytes = usize::try_from(capacity)
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(io::Error::last_os_error)?;
        Ok(Pipe {
            read,
            write,
            capacity_bytes,
        })
    }
}

/// A worker's recycled pipes, and the size new ones are asked to have.
#[derive(Clone)]
pub struct PipePool {
    pipe_bytes: usize,
    free: Rc<RefCell<Vec<Pipe>>>,
}

impl PipePool {
    /// Pipes of `pipe_bytes` each (when the kernel allows it).
    pub fn new(pipe_bytes: usize) -> Self {
        Self {
            pipe_bytes,
            free: Rc::default(),
        }
    }

    /// A pipe from the pool, or a new one (fails when descriptors run out).
    pub fn take(&self) -> io::Result<Pipe> {
        match self.free.borrow_mut().pop() {
            Some(p) => Ok(p),
            None => Pipe::new(self.pipe_bytes),
        }
    }

    /// Pipes waiting in the pool.
    #[cfg(test)]
    pub fn free_count(&self) -> usize {
        self.free.borrow().len()
    }

    /// Takes back an *empty* pipe.
    pub fn give(&self, pipe: Pipe) {
        let mut free = self.free.borrow_mut();
        if free.len() < POOL_KEEP {
            free.push(pipe);
        }
    }
}

/// How a splice drain ended.
pub struct Drained {
    /// `from` reached EOF.
    pub eof: bool,
    /// Bytes moved by this drain.
    pub moved: u64,
}

/// Moves bytes `from` → `to` through `pipe` until `from` has nothing more now, or reaches EOF.
/// Returns with the pipe empty; on an error the pipe may hold bytes and must be dropped.
pub async fn drain(from: &TcpStream, to: &TcpStream, pipe: &Pipe) -> io::Result<Drained> {
    let mut moved = 0u64;
    loop {
        let read = from.try_io(Interest::READABLE, || {
            splice_nonblocking(
                from.as_raw_fd(),
                pipe.write.as_raw_fd(),
                pipe.capacity_bytes,
            )
        });
        let n = match read {
            Ok(0) => return Ok(Drained { eof: true, moved }),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok(Drained { eof: false, moved })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            match splice_nonblocking(pipe.read.as_raw_fd(), to.as_raw_fd(), left) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_get_the_size_asked_for() {
        let pipe = Pipe::new(256 * 1024).expect("pipe");
        assert_eq!(pipe.capacity_bytes, 256 * 1024);
        // Pipe sizes are whole pages, a power of two of them.
        let odd = Pipe::new(100_000).expect("pipe");
        assert_eq!(odd.capacity_bytes, 128 * 1024);
    }

    #[test]
    fn the_pool_reuses_returned_pipes() {
        let pool = PipePool::new(64 * 1024);
        let pipe = pool.take().expect("pipe");
        let fd = pipe.read.as_raw_fd();
        pool.give(pipe);
        assert_eq!(pool.take().expect("pipe").read.as_raw_fd(), fd);
    }
}

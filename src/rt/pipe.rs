//! Pipes for splice(2): a kernel page ring between two sockets, and a worker's pool of them.
//!
//! A pipe is a kernel object like a socket; who splices through it, and when, is the pumps'
//! business (`dataplane::pump`). A pipe that may still hold bytes (an error mid-transfer) is
//! closed, never returned to the pool. This module must not know about sessions.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use super::POOL_KEEP;

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
    pub fn new(want_bytes: usize) -> io::Result<Self> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_get_the_size_asked_for() {
        let pipe = Pipe::new(256 * 1024).expect("pipe");
        assert_eq!(pipe.capacity_bytes(), 256 * 1024);
        // Pipe sizes are whole pages, a power of two of them.
        let odd = Pipe::new(100_000).expect("pipe");
        assert_eq!(odd.capacity_bytes(), 128 * 1024);
    }

    #[test]
    fn the_pool_reuses_returned_pipes() {
        let pool = PipePool::new(64 * 1024);
        let pipe = pool.take().expect("pipe");
        let fd = pipe.read_fd();
        pool.give(pipe);
        assert_eq!(pool.take().expect("pipe").read.as_raw_fd(), fd);
    }
}

//! splice(2) for busy plaintext directions on the io_uring backend.
//!
//! Both halves are plain non-blocking calls that never wait in the kernel: socket → pipe moves
//! the bytes `FIONREAD` says are queued (so it cannot wait), pipe → socket ([`splice_to_socket`])
//! runs with the socket in non-blocking mode and, when the socket's send buffer is full, waits
//! for writability with an `IORING_OP_POLL_ADD` on the worker's ring. Nothing here waits for a
//! quiet socket: that stays a ring read in the pump.
//!
//! Why not `IORING_OP_SPLICE`: the kernel never tries a ring splice inline (`io_splice` returns
//! `-EAGAIN` to any non-blocking issue, so every one goes to an io-wq worker thread), and whether
//! a splice into a socket waits is decided by the socket's own `O_NONBLOCK` (`splice_to_socket`
//! adds `MSG_DONTWAIT` only for it; `SPLICE_F_NONBLOCK` covers the pipe alone). The ring's
//! sockets are in blocking mode, so a receiver that stopped reading would hold one io-wq thread
//! per session direction: measured on Linux 6.18, 200 stalled sessions took the process from 4
//! threads to 203 (`tests/slow_receivers.rs`). Capping io-wq (`IORING_REGISTER_IOWQ_MAX_WORKERS`)
//! does not help on its own: with the cap reached, a splice to a socket that has room queues
//! behind the blocked ones and stalls too (measured: it did not complete within 2 s behind 10
//! blocked splices with the cap at 2). A poll op never uses io-wq.
//!
//! `O_NONBLOCK` is set on the destination socket only around each splice call and restored
//! before anything can await, so the ring's other operations on that socket (the other
//! direction's reads) are always set up on the blocking socket the worker adopted.

use std::io;
use std::os::fd::RawFd;

/// Whether busy directions can splice on this thread: only a ring worker can wait for a full
/// socket without a kernel thread.
pub fn available() -> bool {
    super::ring::is_current()
}

/// Moves `len` bytes from `pipe` (its read end, holding at least `len`) into `socket`, waiting
/// on the worker's ring whenever the socket's send buffer is full. No call here blocks the
/// thread or parks a kernel thread.
pub async fn splice_to_socket(pipe: RawFd, socket: RawFd, mut len: usize) -> io::Result<()> {
    while len > 0 {
        let spliced = {
            // Cleared again at the end of this block, before the await below.
            let _nonblocking = NonBlocking::set(socket)?;
            super::splice_nonblocking(pipe, socket, len)
        };
        match spliced {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => len -= n.min(len),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Error and hang-up events complete the poll too; the next splice reports them.
                super::ring::poll(socket, libc::POLLOUT).await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A socket in non-blocking mode for as long as this lives; its flags as they were when dropped.
struct NonBlocking {
    fd: RawFd,
    flags: libc::c_int,
}

impl NonBlocking {
    fn set(fd: RawFd) -> io::Result<Self> {
        // SAFETY: fcntl on a descriptor the caller keeps open for the guard's life; it reads and
        // writes only the file's status flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, flags })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        // SAFETY: as in `set`. It cannot fail on a descriptor `set` just changed; were it to, the
        // socket would stay non-blocking, which the ring's reads and writes also handle on
        // current kernels.
        unsafe { libc::fcntl(self.fd, libc::F_SETFL, self.flags) };
    }
}

//! Bulk zero-copy for framed sessions on plaintext data connections: a busy local direction's
//! queued bytes go out as DATA chunks spliced through a pooled pipe (header written, then
//! exactly the announced length spliced), and a large chunk arriving is spliced into the local
//! socket (exactly what remains of it). Plain non-blocking splices, never a ring splice: a full
//! io_uring socket is waited for on the worker's splice ring (`rt::uring_splice`), a full tokio
//! socket on its readiness. TLS bytes never come here. It must not decode records.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::data_link::DataLink;
use crate::protocol::session_frame::{encode_data_header, MAX_SESSION_CHUNK_BYTES};
use crate::rt::uring_splice;
use crate::rt::{readable_bytes, splice_nonblocking, Conn, Pipe, PipePool};

/// A chunk at least this long still to come is spliced into the local socket, not copied.
pub(super) const SPLICE_IN_MIN_BYTES: u32 = 16 * 1024;

/// Takes a pipe, or says why not (logged, rate-limited): the caller copies instead.
pub(super) fn take_pipe(pipes: &PipePool) -> Option<Pipe> {
    match pipes.take() {
        Ok(p) => Some(p),
        Err(e) => {
            crate::log_limited!(
                warn!(error = %e, "cannot open a pipe for splice (out of descriptors?); this session direction copies instead")
            );
            None
        }
    }
}

/// Whether bytes may be spliced into `local` (an io_uring socket needs its worker's ring to
/// wait when it is full).
pub(super) fn can_splice_into(local: &Conn) -> bool {
    match local {
        Conn::Epoll(_) => true,
        Conn::Uring(_) => uring_splice::available(),
    }
}

/// Sends what `local` has queued now as spliced DATA chunks; returns the bytes moved (`local`
/// is empty afterwards), or, inside, the local socket's error with the bytes moved before it.
/// An outer `Err` is the data connection's. Nothing here waits for `local`.
pub(super) async fn splice_local_to_data(
    local_fd: RawFd,
    data: &DataLink,
    pipe: &Pipe,
) -> io::Result<Result<u64, (u64, io::Error)>> {
    let mut moved = 0u64;
    let max = pipe.capacity_bytes().min(MAX_SESSION_CHUNK_BYTES as usize);
    let mut header = Vec::with_capacity(5);
    loop {
        let queued = match readable_bytes(local_fd) {
            Ok(q) => q.min(max),
            Err(e) => return Ok(Err((moved, e))),
        };
        if queued == 0 {
            return Ok(Ok(moved));
        }
        // The socket holds `queued` bytes, so this cannot wait even on a blocking socket.
        let n = match splice_nonblocking(local_fd, pipe.write_fd(), queued) {
            Ok(0) => return Ok(Ok(moved)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Ok(moved)),
            Err(e) => return Ok(Err((moved, e))),
        };
        header.clear();
        encode_data_header(n as u32, &mut header);
        data.write_spliced(&header, pipe, n).await?;
        moved += n as u64;
    }
}

/// What a splice into the local socket did.
pub(super) enum SplicedIn {
    /// This many payload bytes went through.
    Moved(usize),
    /// This many were taken from the data connection, and writing them to the local socket
    /// failed (they are dropped with the pipe).
    LocalFailed(usize, io::Error),
}

/// Splices up to `want` payload bytes from `data` into `local` through `pipe`. An `Err` is the
/// data connection's (0 bytes: it closed); a local failure is `SplicedIn::LocalFailed`.
pub(super) async fn splice_data_to_local(
    data: &DataLink,
    local: &Conn,
    pipe: &Pipe,
    want: usize,
) -> io::Result<SplicedIn> {
    let n = data
        .splice_in(pipe, want.min(pipe.capacity_bytes()))
        .await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "data connection closed mid-session",
        ));
    }
    let written = match local {
        Conn::Epoll(s) => pipe_to_tokio(pipe, s, n).await,
        Conn::Uring(s) => uring_splice::splice_to_socket(pipe.read_fd(), s.as_raw_fd(), n).await,
    };
    Ok(match written {
        Ok(()) => SplicedIn::Moved(n),
        Err(e) => SplicedIn::LocalFailed(n, e),
    })
}

/// Moves exactly `len` bytes from `pipe` into a tokio socket, waiting for room on readiness.
async fn pipe_to_tokio(pipe: &Pipe, to: &tokio::net::TcpStream, mut len: usize) -> io::Result<()> {
    while len > 0 {
        match splice_nonblocking(pipe.read_fd(), to.as_raw_fd(), len) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => len -= n.min(len),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = to.try_io(tokio::io::Interest::WRITABLE, || {
                    Err::<(), io::Error>(io::ErrorKind::WouldBlock.into())
                });
                to.writable().await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

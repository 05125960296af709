//! The TLS handshake over a tokio `TcpStream` (epoll): readiness + `try_read` and `write_all`,
//! driving the sans-I/O [`TlsSession`], and [`Channel`], a handshaken connection read and written
//! by readiness (`rt::ReadyStream`: tokio's reactor, or the ring on an io_uring worker). Used by
//! the control path (accept), the agent's dial (connect) and slots, and workers between
//! sessions; data-plane pumps drive `TlsSession` themselves.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::net::TcpStream;

use super::{TlsError, TlsSession};
use crate::rt::{write_all, ReadyStream};

/// One [`Channel::read_into`] reads at most this much.
const CHANNEL_READ_BYTES: usize = 4096;

thread_local! {
    /// Each thread's read chunk for [`Channel::read_into`]; borrowed only between a read and the
    /// copy out of it, never across an await.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; CHANNEL_READ_BYTES].into_boxed_slice());
}

/// A completed handshake.
#[derive(Debug)]
pub struct Established {
    /// The session, ready for `decrypt` / `encrypt`.
    pub session: TlsSession,
    /// Plaintext the peer sent right behind its handshake (e.g. the agent's init frame), already
    /// decrypted; read the rest with `decrypt`.
    pub plaintext: Vec<u8>,
    /// The peer sent close_notify right behind its handshake.
    pub eof: bool,
}

/// Server side of the handshake on an accepted tunnel connection, bounded by `timeout`.
pub async fn accept(
    stream: &TcpStream,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> Result<Established, TlsError> {
    let session = TlsSession::server(config)?;
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    crate::rt::time::timeout(timeout, drive(stream, session))
        .await
        .unwrap_or(Err(TlsError::Timeout(timeout_ms)))
}

/// Client side of the handshake on a connected stream; the caller bounds it in time.
pub async fn connect(
    stream: &TcpStream,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
) -> Result<Established, TlsError> {
    drive(stream, TlsSession::client(config, server_name)?).await
}

/// Runs the handshake to completion, then decrypts whatever was read behind it.
///
/// Bytes are read into this thread's scratch buffer and offered to the session straight from it;
/// the session keeps only a record cut short, in a buffer that size. So a handshake holds no read
/// buffer of its own: thousands of connections dialled at once cost no transient 16 KiB each,
/// which the allocator would keep.
async fn drive(stream: &TcpStream, mut session: TlsSession) -> Result<Established, TlsError> {
    let mut out = Vec::new();
    let mut plaintext = Vec::new();
    let step = |session: &mut TlsSession,
                input: &[u8],
                out: &mut Vec<u8>,
                plaintext: &mut Vec<u8>|
     -> Result<bool, TlsError> {
        let progress = session.handshake_step(input, out)?;
        let rest = &input[progress.consumed..];
        if progress.done {
            // Whatever came behind the handshake (the peer's first frame) is plaintext to be.
            let outcome = session.decrypt(rest, plaintext)?;
            if outcome.wants_write {
                session.take_output(out);
            }
        } else if !rest.is_empty() {
            return Err(TlsError::Protocol(
                "the TLS handshake left input it did not take".into(),
            ));
        }
        Ok(progress.done)
    };
    let mut done = {
        let r = step(&mut session, &[], &mut out, &mut plaintext);
        flush(stream, &mut out, r.is_ok()).await?;
        r?
    };
    while !done {
        stream.readable().await?;
        let r = SCRATCH.with(|scratch| {
            let mut chunk = scratch.borrow_mut();
            match stream.try_read(&mut chunk[..]) {
                Ok(0) => Some(Err(session.peer_closed().err().unwrap_or(TlsError::Closed))),
                Ok(n) => Some(step(&mut session, &chunk[..n], &mut out, &mut plaintext)),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    None
                }
                Err(e) => Some(Err(e.into())),
            }
        });
        let Some(r) = r else { continue };
        flush(stream, &mut out, r.is_ok()).await?;
        done = r?;
    }
    Ok(Established {
        session,
        plaintext,
        eof: false,
    }
    .with_eof())
}

/// Writes what a handshake step produced; after a failed step (`ok` false) best effort only: the
/// step's error is the one to report.
async fn flush(stream: &TcpStream, out: &mut Vec<u8>, ok: bool) -> Result<(), TlsError> {
    if out.is_empty() {
        return Ok(());
    }
    let sent = write_all(stream, out).await;
    out.clear();
    if ok {
        sent?;
    }
    Ok(())
}

impl Established {
    /// Records whether close_notify already came behind the handshake.
    fn with_eof(mut self) -> Self {
        self.eof = self.session.peer_closed().is_ok();
        self
    }
}

/// A handshaken tunnel connection (control path, agent slots, a worker's session start): a
/// readiness socket, with a [`TlsSession`] when TLS is on. Reads deliver plaintext, writes take
/// plaintext; the TLS records stay inside. A short read clears the socket's readiness as of
/// before the read (`rt::io_clearing`), so it is right whichever thread runs the reactor.
#[derive(Debug)]
pub struct Channel {
    pub stream: ReadyStream,
    /// Boxed: a session is large, and most tunnel connections are plaintext.
    pub tls: Option<Box<TlsSession>>,
    /// TLS records produced while reading (a key update answer), sent before the next write.
    owed: Vec<u8>,
    /// close_notify (or TCP EOF) seen.
    eof: bool,
}

impl Channel {
    /// A plaintext connection.
    pub fn plain(stream: TcpStream) -> Self {
        Self::new(stream, None)
    }

    /// `stream`, encrypted by `tls` when it is `Some`.
    pub fn new(stream: TcpStream, tls: Option<Box<TlsSession>>) -> Self {
        Self::from_ready(ReadyStream::Tokio(stream), tls)
    }

    /// A std socket as this thread waits on sockets (on an io_uring worker, on its ring).
    pub fn from_std(stream: std::net::TcpStream, tls: Option<Box<TlsSession>>) -> io::Result<Self> {
        Ok(Self::from_ready(ReadyStream::from_std(stream)?, tls))
    }

    /// This channel waiting as this thread waits on sockets (see `ReadyStream::localize`).
    pub fn localize(mut self) -> io::Result<Self> {
        self.stream = self.stream.localize()?;
        Ok(self)
    }

    /// `stream`, encrypted by `tls` when it is `Some`.
    pub fn from_ready(stream: ReadyStream, tls: Option<Box<TlsSession>>) -> Self {
        Self {
            stream,
            tls,
            owed: Vec::new(),
            eof: false,
        }
    }

    /// The socket and the session (for a pump or a worker).
    pub fn into_parts(self) -> (ReadyStream, Option<Box<TlsSession>>) {
        (self.stream, self.tls)
    }

    /// Waits for bytes and appends their plaintext to `out`; returns how many were appended,
    /// 0 when the peer closed. Cancel-safe: nothing is lost when the future is dropped.
    ///
    /// It waits for readiness holding no buffer, then reads into this thread's scratch buffer
    /// without awaiting: an idle connection's future stays small and parks no read buffer. The
    /// wait polls the socket's readiness (no waiter future of its own): a channel is read by one
    /// task.
    pub async fn read_into(&mut self, out: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            if self.eof {
                return Ok(0);
            }
            std::future::poll_fn(|cx| self.stream.poll_read_ready(cx)).await?;
            let read = SCRATCH.with(|scratch| {
                let mut chunk = scratch.borrow_mut();
                let room = chunk.len();
                match self.stream.io(
                    tokio::io::Interest::READABLE,
                    || crate::rt::read_into_slice(&self.stream, &mut chunk[..]),
                    |&n| n > 0 && n < room,
                ) {
                    Ok(n) => self.take_read(&mut chunk[..n], out),
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::Interrupted =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            });
            if let Some(got) = read? {
                return Ok(got);
            }
        }
    }

    /// Takes freshly read bytes (`read`, empty at EOF; decrypted in place) into `out`; `None`
    /// when they held no plaintext yet (a partial TLS record, which the session keeps).
    fn take_read(&mut self, read: &mut [u8], out: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let Some(tls) = self.tls.as_mut() else {
            if read.is_empty() {
                self.eof = true;
            }
            out.extend_from_slice(read);
            return Ok(Some(read.len()));
        };
        if read.is_empty() {
            self.eof = true;
            tls.peer_closed().map_err(io_error)?;
            return Ok(Some(0));
        }
        let before = out.len();
        let outcome = tls.decrypt_in_place(read, out).map_err(io_error)?;
        if outcome.wants_write {
            tls.take_output(&mut self.owed);
        }
        if outcome.eof {
            self.eof = true;
        }
        let got = out.len() - before;
        Ok((got > 0 || outcome.eof).then_some(got))
    }

    /// Writes all of `data` (encrypted when TLS is on).
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self.tls.as_mut() {
            None => self.stream.write_all(data).await,
            Some(tls) => {
                let mut out = std::mem::take(&mut self.owed);
                tls.encrypt(data, &mut out).map_err(io_error)?;
                self.stream.write_all(&out).await
            }
        }
    }
}

/// A TLS failure as an `io::Error` (its text kept).
pub fn io_error(e: TlsError) -> io::Error {
    match e {
        TlsError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

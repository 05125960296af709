//! [`TlsSession`]: one rustls connection driven over caller-owned buffers (sans-I/O), on rustls's
//! unbuffered API, so an idle session holds no record buffer.
//!
//! The caller owns every buffer: ciphertext it read goes in as a slice and is decrypted in place
//! ([`TlsSession::decrypt_in_place`]; [`TlsSession::decrypt`] copies it into this thread's scratch
//! first), and what must be sent (handshake records, encrypted data, alerts) or delivered
//! (plaintext) is appended to `Vec`s the caller passes and reuses. The session keeps a byte only
//! when it must: the part of a record a read cut short (and, during a handshake, fragments of a
//! message that spans records), in a buffer the size of that record, freed once it is complete.
//! Everything else it holds is rustls's state (keys, the handshake's outcome).

use std::cell::RefCell;
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConfig, CommonState, ServerConfig};

use super::records::{self, drive, Ended, Sink, Want};
use super::TlsError;

/// The first byte of a ringtun/MOSN frame (magic `0x20 0x88`).
const FRAME_MAGIC_0: u8 = 0x20;

/// Most ciphertext [`TlsSession::decrypt`] copies into this thread's scratch at once.
const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    /// Each thread's copy of the ciphertext [`TlsSession::decrypt`] is given (rustls decrypts in
    /// place); borrowed only for one call.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Which end of the TLS connection this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The agent, dialling out.
    Client,
    /// The server's tunnel listener.
    Server,
}

/// What one [`TlsSession::handshake_step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeProgress {
    /// Bytes of `incoming` taken; the rest must be offered again (to `handshake_step` while not
    /// done, else to [`TlsSession::decrypt`]). Always all of them today: what follows the
    /// handshake is decrypted and delivered by the next `decrypt`.
    pub consumed: usize,
    /// The handshake is complete: switch to `decrypt`/`encrypt`. Bytes appended to `out` must
    /// still be sent (TLS 1.3 server: session tickets; client: its Finished).
    pub done: bool,
}

/// What one [`TlsSession::decrypt`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecryptOutcome {
    /// Bytes of `ciphertext` taken; offer the rest again (always all of it today, kept so a
    /// caller never has to assume that).
    pub consumed: usize,
    /// The peer sent close_notify: it will send nothing more (carry it on as a write shutdown).
    pub eof: bool,
    /// The session has records to send (an answer rustls owes the peer); call
    /// [`TlsSession::take_output`].
    pub wants_write: bool,
}

enum Conn {
    Client(UnbufferedClientConnection),
    Server(UnbufferedServerConnection),
}

/// Runs `$body` with `$c` bound to the connection's common part (the same code for both sides).
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            Conn::Client(conn) => {
                let $c = &mut **conn;
                $body
            }
            Conn::Server(conn) => {
                let $c = &mut **conn;
                $body
            }
        }
    };
}

/// One TLS connection, client or server, with no I/O of its own.
///
/// Use: while [`is_handshaking`](Self::is_handshaking), call
/// [`handshake_step`](Self::handshake_step) with the bytes read (empty for the first client step)
/// and send what it appends to `out`; then [`decrypt`](Self::decrypt) what is read and
/// [`encrypt`](Self::encrypt) what is to be sent. When a `TlsError` is returned, `out` may hold an
/// alert telling the peer why: send it (best effort) and close.
pub struct TlsSession {
    conn: Conn,
    side: Side,
    /// Bytes rustls has not discarded yet; empty (no allocation) between whole records.
    held: Vec<u8>,
    /// Where in `held` the record still incomplete starts; before it: handshake fragments
    /// rustls has processed and keeps there until their message is whole.
    held_processed: usize,
    /// Plaintext decrypted while no plaintext buffer was at hand (behind the handshake), for
    /// the next `decrypt`.
    early_plaintext: Vec<u8>,
    /// Records made while decrypting (an alert, an answer), for the next `take_output`/`encrypt`.
    owed: Vec<u8>,
    /// Plaintext given to `encrypt` before the handshake completed.
    queued: Vec<u8>,
    /// Whether any byte has come from the peer (the plaintext check looks at the first one).
    heard_from_peer: bool,
    /// close_notify received.
    eof: bool,
    /// Both ends sent close_notify.
    closed: bool,
    /// rustls failed; the session takes nothing more.
    failed: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("side", &self.side)
            .field("handshaking", &self.is_handshaking())
            .field("protocol", &self.protocol_version())
            .field("held_bytes", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl TlsSession {
    /// A client (agent) session that will verify the server as `server_name`.
    pub fn client(
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
    ) -> Result<Self, TlsError> {
        let conn = UnbufferedClientConnection::new(config, server_name)
            .map_err(|e| TlsError::from_rustls(Side::Client, e))?;
        Ok(Self::new(Conn::Client(conn), Side::Client))
    }

    /// A server session.
    pub fn server(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        let conn = UnbufferedServerConnection::new(config)
            .map_err(|e| TlsError::from_rustls(Side::Server, e))?;
        Ok(Self::new(Conn::Server(conn), Side::Server))
    }

    fn new(conn: Conn, side: Side) -> Self {
        Self {
            conn,
            side,
            held: Vec::new(),
            held_processed: 0,
            early_plaintext: Vec::new(),
            owed: Vec::new(),
            queued: Vec::new(),
            heard_from_peer: false,
            eof: false,
            closed: false,
            failed: false,
        }
    }

    fn common(&self) -> &CommonState {
        match &self.conn {
            Conn::Client(c) => c,
            Conn::Server(c) => c,
        }
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// True until the handshake is complete.
    pub fn is_handshaking(&self) -> bool {
        self.common().is_handshaking()
    }

    /// The negotiated protocol version, once known (for logs: `"TLSv1_3"`).
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.common().protocol_version()
    }

    /// Bytes the session holds back for want of the rest of their record (0 between records).
    pub fn held_bytes(&self) -> usize {
        self.held.len()
    }

    /// How many bytes the held-back buffer could take without growing (tests check it fits).
    #[cfg(test)]
    pub(super) fn held_capacity(&self) -> usize {
        self.held.capacity()
    }

    /// Feeds `incoming` (possibly empty) to the handshake and appends what must be sent to `out`.
    ///
    /// On error `out` may hold an alert for the peer.
    pub fn handshake_step(
        &mut self,
        incoming: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<HandshakeProgress, TlsError> {
        if let Some(&first) = incoming.first() {
            if !self.heard_from_peer {
                check_first_byte(first)?;
                self.heard_from_peer = true;
            }
        }
        let mut early = std::mem::take(&mut self.early_plaintext);
        let fed = if incoming.is_empty() {
            self.feed(&mut [], out, &mut early)
        } else {
            with_scratch(incoming, |chunk| self.feed(chunk, out, &mut early))
        };
        self.early_plaintext = early;
        fed?;
        Ok(HandshakeProgress {
            consumed: incoming.len(),
            done: !self.is_handshaking(),
        })
    }

    /// Decrypts `ciphertext` (possibly empty: then only plaintext already decrypted, e.g. behind
    /// the handshake, is delivered) and appends the plaintext to `plaintext_out`. Copies the
    /// ciphertext once; [`decrypt_in_place`](Self::decrypt_in_place) does not.
    ///
    /// After `eof` is reported, further input is ignored.
    pub fn decrypt(
        &mut self,
        ciphertext: &[u8],
        plaintext_out: &mut Vec<u8>,
    ) -> Result<DecryptOutcome, TlsError> {
        if ciphertext.is_empty() {
            return self.decrypt_in_place(&mut [], plaintext_out);
        }
        with_scratch(ciphertext, |chunk| {
            self.decrypt_in_place(chunk, plaintext_out).map(|_| ())
        })?;
        Ok(self.decrypted(ciphertext.len()))
    }

    /// [`decrypt`](Self::decrypt), decrypting in `ciphertext` itself (its bytes are garbage
    /// afterwards).
    pub fn decrypt_in_place(
        &mut self,
        ciphertext: &mut [u8],
        plaintext_out: &mut Vec<u8>,
    ) -> Result<DecryptOutcome, TlsError> {
        if !ciphertext.is_empty() {
            self.heard_from_peer = true;
        }
        if !self.early_plaintext.is_empty() {
            plaintext_out.extend_from_slice(&self.early_plaintext);
            self.early_plaintext = Vec::new();
        }
        let mut owed = std::mem::take(&mut self.owed);
        let fed = self.feed(ciphertext, &mut owed, plaintext_out);
        self.owed = owed;
        fed?;
        Ok(self.decrypted(ciphertext.len()))
    }

    fn decrypted(&self, consumed: usize) -> DecryptOutcome {
        DecryptOutcome {
            consumed,
            eof: self.eof,
            wants_write: !self.owed.is_empty(),
        }
    }

    /// Takes `input` (the bytes read after those before): completes the record held back, then
    /// lets rustls decrypt the rest in place and keeps what it did not take (a partial record).
    fn feed(
        &mut self,
        mut input: &mut [u8],
        records: &mut Vec<u8>,
        plaintext: &mut Vec<u8>,
    ) -> Result<(), TlsError> {
        if self.failed {
            return Err(TlsError::Protocol("the TLS session already failed".into()));
        }
        // The held record first, from the front of `input`, one record at a time (held
        // handshake fragments need the next record behind them in the same buffer).
        while !self.held.is_empty() && !input.is_empty() && !self.eof {
            let partial = &self.held[self.held_processed..];
            let had = partial.len();
            let missing = records::missing_bytes(partial).unwrap_or(records::RECORD_HEADER_BYTES);
            let take = missing.min(input.len());
            let (front, rest) = std::mem::take(&mut input).split_at_mut(take);
            input = rest;
            self.held.reserve_exact(take);
            self.held.extend_from_slice(front);
            let complete = records::missing_bytes(&self.held[self.held_processed..]) == Some(0);
            let header_now =
                had < records::RECORD_HEADER_BYTES && had + take >= records::RECORD_HEADER_BYTES;
            if !complete && !header_now {
                // More of a body rustls has seen the header of: nothing for it to do yet.
                continue;
            }
            let mut held = std::mem::take(&mut self.held);
            let ran = self.run(&mut held, Want::Nothing, records, plaintext);
            self.held = held;
            let (discard, _) = ran?;
            self.held.drain(..discard);
            self.held_processed = if complete {
                self.held.len()
            } else {
                self.held_processed.saturating_sub(discard)
            };
            if let Some(missing) = records::missing_bytes(&self.held[self.held_processed..]) {
                // The header is whole now: make room for exactly the rest of the record.
                self.held.reserve_exact(missing);
            }
            if self.held.is_empty() {
                self.held = Vec::new();
                self.held_processed = 0;
            }
        }
        if self.eof {
            // Nothing may follow close_notify; whatever did is dropped.
            self.held = Vec::new();
            self.held_processed = 0;
        } else if self.held.is_empty() {
            let tail = records::incomplete_tail(input);
            let (discard, _) = self.run(input, Want::Nothing, records, plaintext)?;
            if !self.eof && discard < input.len() {
                let kept = &input[discard..];
                let missing = records::missing_bytes(&input[tail..]).unwrap_or(0);
                let mut held = Vec::with_capacity(kept.len() + missing);
                held.extend_from_slice(kept);
                self.held = held;
                self.held_processed = tail.saturating_sub(discard);
            }
        }
        if !self.queued.is_empty() && !self.is_handshaking() {
            let queued = std::mem::take(&mut self.queued);
            self.write(Want::Encrypt(&queued), records)?;
        }
        Ok(())
    }

    /// One rustls pass over `buf` (see [`records::drive`]); records what it learnt.
    fn run(
        &mut self,
        buf: &mut [u8],
        want: Want<'_>,
        records: &mut Vec<u8>,
        plaintext: &mut Vec<u8>,
    ) -> Result<(usize, Ended), TlsError> {
        let side = self.side;
        let mut sink = Sink {
            records,
            plaintext,
            peer_closed: &mut self.eof,
        };
        let ran = on_conn!(&mut self.conn, c => drive(c, side, buf, want, &mut sink));
        match ran {
            Ok((_, Ended::Closed)) => self.closed = true,
            Ok(_) => {}
            Err(_) => self.failed = true,
        }
        ran
    }

    /// Does `want` now that rustls may send, appending its records (after any owed) to `out`.
    fn write(&mut self, want: Want<'_>, out: &mut Vec<u8>) -> Result<Ended, TlsError> {
        if self.failed {
            return Err(TlsError::Protocol("the TLS session already failed".into()));
        }
        if !self.owed.is_empty() {
            out.extend_from_slice(&self.owed);
            self.owed = Vec::new();
        }
        let mut held = std::mem::take(&mut self.held);
        let mut early = std::mem::take(&mut self.early_plaintext);
        let ran = self.run(&mut held, want, out, &mut early);
        self.held = held;
        self.early_plaintext = early;
        let (discard, ended) = ran?;
        // Everything held was processed already; nothing is discarded here but in theory.
        self.held.drain(..discard.min(self.held.len()));
        self.held_processed = self.held_processed.saturating_sub(discard);
        Ok(ended)
    }

    /// Encrypts all of `plaintext` and appends the records to `ciphertext_out`.
    ///
    /// Before the handshake is done the plaintext is kept and sent encrypted once it is.
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        ciphertext_out: &mut Vec<u8>,
    ) -> Result<(), TlsError> {
        if self.is_handshaking() && !self.failed {
            self.queued.extend_from_slice(plaintext);
            return Ok(());
        }
        match self.write(Want::Encrypt(plaintext), ciphertext_out)? {
            Ended::Ready => Ok(()),
            Ended::Handshaking | Ended::Closed => Err(TlsError::Protocol(
                "TLS session accepts no more data (closed?)".into(),
            )),
        }
    }

    /// Appends a close_notify alert (our half-close) to `out`; encrypt nothing after it. Before
    /// the handshake is done there is nothing to close: it appends nothing.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) {
        let _ = self.write(Want::CloseNotify, out);
    }

    /// Appends every pending TLS record to `out`; returns how many bytes.
    pub fn take_output(&mut self, out: &mut Vec<u8>) -> usize {
        let before = out.len();
        if self.failed {
            out.extend_from_slice(&self.owed);
            self.owed = Vec::new();
        } else {
            let _ = self.write(Want::Nothing, out);
        }
        out.len() - before
    }

    /// True when [`take_output`](Self::take_output) has something to append.
    pub fn wants_write(&self) -> bool {
        !self.owed.is_empty() || self.common().wants_write()
    }

    /// The peer's TCP connection ended (read returned 0). Ok when it sent close_notify first;
    /// otherwise the stream may have been cut short by an attacker or a crash.
    pub fn peer_closed(&self) -> Result<(), TlsError> {
        if self.eof {
            Ok(())
        } else if self.is_handshaking() {
            Err(TlsError::Closed)
        } else {
            Err(TlsError::Truncated)
        }
    }
}

/// Runs `f` over copies of `input` in this thread's scratch, in chunks of at most
/// [`SCRATCH_BYTES`].
fn with_scratch(
    input: &[u8],
    mut f: impl FnMut(&mut [u8]) -> Result<(), TlsError>,
) -> Result<(), TlsError> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        for chunk in input.chunks(SCRATCH_BYTES) {
            scratch.clear();
            scratch.extend_from_slice(chunk);
            f(&mut scratch)?;
        }
        Ok(())
    })
}

/// Refuses a first byte that cannot start a TLS record (content types 20 to 24).
fn check_first_byte(first: u8) -> Result<(), TlsError> {
    match first {
        FRAME_MAGIC_0 => Err(TlsError::Plaintext),
        0x14..=0x18 => Ok(()),
        other => Err(TlsError::NotTls(other)),
    }
}

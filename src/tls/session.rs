//! [`TlsSession`]: one rustls connection driven over caller-owned buffers (sans-I/O).
//!
//! The caller owns every buffer: ciphertext it read from the socket goes in as a slice, and what
//! must be written (handshake records, encrypted data, alerts) or delivered (plaintext) is
//! appended to `Vec`s the caller passes and reuses. The only copies are rustls's own (ciphertext
//! into its record buffer, decrypted records out of it, encrypted records out of it).

use std::io::{BufRead, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use super::TlsError;

/// The first byte of a ringtun/MOSN frame (magic `0x20 0x88`).
const FRAME_MAGIC_0: u8 = 0x20;

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
    /// done, else to [`TlsSession::decrypt`]).
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
    /// The session has records to send (a key update answer); call [`TlsSession::take_output`].
    pub wants_write: bool,
}

/// One TLS connection, client or server, with no I/O of its own.
///
/// Use: while [`is_handshaking`](Self::is_handshaking), call
/// [`handshake_step`](Self::handshake_step) with the bytes read (empty for the first client step)
/// and send what it appends to `out`; then [`decrypt`](Self::decrypt) what is read and
/// [`encrypt`](Self::encrypt) what is to be sent. When a `TlsError` is returned, `out` may hold an
/// alert telling the peer why: send it (best effort) and close.
pub struct TlsSession {
    conn: Connection,
    side: Side,
    /// Whether any byte has come from the peer (the plaintext check looks at the first one).
    heard_from_peer: bool,
    /// close_notify received and reported.
    eof: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("side", &self.side)
            .field("handshaking", &self.conn.is_handshaking())
            .field("protocol", &self.conn.protocol_version())
            .finish_non_exhaustive()
    }
}

impl TlsSession {
    /// A client (agent) session that will verify the server as `server_name`.
    pub fn client(
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
    ) -> Result<Self, TlsError> {
        let conn = ClientConnection::new(config, server_name)
            .map_err(|e| TlsError::from_rustls(Side::Client, e))?;
        Ok(Self::new(conn.into(), Side::Client))
    }

    /// A server session.
    pub fn server(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        let conn =
            ServerConnection::new(config).map_err(|e| TlsError::from_rustls(Side::Server, e))?;
        Ok(Self::new(conn.into(), Side::Server))
    }

    fn new(conn: Connection, side: Side) -> Self {
        Self {
            conn,
            side,
            heard_from_peer: false,
            eof: false,
        }
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// True until the handshake is complete.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The negotiated protocol version, once known (for logs: `"TLSv1_3"`).
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
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
        let mut consumed = 0;
        while consumed < incoming.len() && self.conn.is_handshaking() {
            let n = match self.conn.read_tls(&mut &incoming[consumed..]) {
                Ok(n) => n,
                Err(e) => {
                    self.take_output(out);
                    return Err(TlsError::Protocol(format!("TLS input refused: {e}")));
                }
            };
            consumed += n;
            if let Err(e) = self.conn.process_new_packets() {
                self.take_output(out);
                return Err(TlsError::from_rustls(self.side, e));
            }
            if n == 0 {
                break;
            }
        }
        self.take_output(out);
        Ok(HandshakeProgress {
            consumed,
            done: !self.conn.is_handshaking(),
        })
    }

    /// Decrypts `ciphertext` (possibly empty: then only plaintext already decrypted, e.g. during
    /// the handshake, is delivered) and appends the plaintext to `plaintext_out`.
    ///
    /// After `eof` is reported, further input is ignored.
    pub fn decrypt(
        &mut self,
        ciphertext: &[u8],
        plaintext_out: &mut Vec<u8>,
    ) -> Result<DecryptOutcome, TlsError> {
        if !ciphertext.is_empty() {
            self.heard_from_peer = true;
        }
        let mut consumed = 0;
        let mut eof = self.drain_plaintext(plaintext_out)?;
        while !eof && consumed < ciphertext.len() {
            let n = self
                .conn
                .read_tls(&mut &ciphertext[consumed..])
                .map_err(|e| TlsError::Protocol(format!("TLS input refused: {e}")))?;
            if n == 0 {
                break;
            }
            consumed += n;
            self.conn
                .process_new_packets()
                .map_err(|e| TlsError::from_rustls(self.side, e))?;
            eof = self.drain_plaintext(plaintext_out)?;
        }
        if eof {
            // Nothing may follow close_notify; whatever did is dropped.
            consumed = ciphertext.len();
        }
        Ok(DecryptOutcome {
            consumed,
            eof,
            wants_write: self.conn.wants_write(),
        })
    }

    /// Moves decrypted plaintext out of rustls; true once close_notify has been received and all
    /// data before it delivered.
    fn drain_plaintext(&mut self, out: &mut Vec<u8>) -> Result<bool, TlsError> {
        if self.eof {
            return Ok(true);
        }
        loop {
            let mut reader = self.conn.reader();
            match reader.fill_buf() {
                Ok([]) => {
                    self.eof = true;
                    return Ok(true);
                }
                Ok(chunk) => {
                    let n = chunk.len();
                    out.extend_from_slice(chunk);
                    reader.consume(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(TlsError::Truncated)
                }
                Err(e) => return Err(TlsError::Protocol(format!("reading TLS plaintext: {e}"))),
            }
        }
    }

    /// Encrypts all of `plaintext` and appends the records to `ciphertext_out`.
    ///
    /// Before the handshake is done the plaintext is kept and sent encrypted once it is.
    pub fn encrypt(
        &mut self,
        mut plaintext: &[u8],
        ciphertext_out: &mut Vec<u8>,
    ) -> Result<(), TlsError> {
        while !plaintext.is_empty() {
            let n = self
                .conn
                .writer()
                .write(plaintext)
                .map_err(|e| TlsError::Protocol(format!("TLS encryption failed: {e}")))?;
            plaintext = &plaintext[n..];
            let flushed = self.take_output(ciphertext_out);
            if n == 0 && flushed == 0 {
                return Err(TlsError::Protocol(
                    "TLS session accepts no more data (closed?)".into(),
                ));
            }
        }
        self.take_output(ciphertext_out);
        Ok(())
    }

    /// Appends a close_notify alert (our half-close) to `out`; encrypt nothing after it.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) {
        self.conn.send_close_notify();
        self.take_output(out);
    }

    /// Appends every pending TLS record to `out`; returns how many bytes.
    pub fn take_output(&mut self, out: &mut Vec<u8>) -> usize {
        let mut total = 0;
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total
    }

    /// True when [`take_output`](Self::take_output) has something to append.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// The peer's TCP connection ended (read returned 0). Ok when it sent close_notify first;
    /// otherwise the stream may have been cut short by an attacker or a crash.
    pub fn peer_closed(&self) -> Result<(), TlsError> {
        if self.eof {
            Ok(())
        } else if self.conn.is_handshaking() {
            Err(TlsError::Closed)
        } else {
            Err(TlsError::Truncated)
        }
    }
}

/// Refuses a first byte that cannot start a TLS record (content types 20 to 24).
fn check_first_byte(first: u8) -> Result<(), TlsError> {
    match first {
        FRAME_MAGIC_0 => Err(TlsError::Plaintext),
        0x14..=0x18 => Ok(()),
        other => Err(TlsError::NotTls(other)),
    }
}

//! One pass of rustls's unbuffered state machine over a caller's buffer: decrypts records in place,
//! appends plaintext and the TLS records to send to `Vec`s, and reports how many bytes at the
//! front of the buffer rustls is done with. Generic over the client and server connection, so
//! [`super::session`] holds the buffering rules once.
//!
//! Must not keep any byte itself: whatever rustls did not discard stays in the caller's buffer
//! (the session copies the few bytes it must keep). No I/O, no clock, no panic on peer input.

use rustls::client::ClientConnectionData;
use rustls::server::ServerConnectionData;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedConnectionCommon, UnbufferedStatus, WriteTraffic,
};

use rustls::CommonState;

use super::{Side, TlsError};

/// Bytes in a TLS record header (type, version, length).
pub(super) const RECORD_HEADER_BYTES: usize = 5;

/// Room for one record's overhead (header, content type, tag, TLS 1.2 nonce) and a key update
/// that may go out first, so an encryption rarely needs a second try.
const RECORD_OVERHEAD_BYTES: usize = 64;

/// Largest plaintext per record (rustls fragments at this size).
const RECORD_PLAINTEXT_BYTES: usize = 16 * 1024;

/// A client or a server connection, driven the same way.
pub(super) trait Drive {
    type Data;
    fn records<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn common(&self) -> &CommonState;
}

impl Drive for UnbufferedConnectionCommon<ClientConnectionData> {
    type Data = ClientConnectionData;
    fn records<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }
    fn common(&self) -> &CommonState {
        self
    }
}

impl Drive for UnbufferedConnectionCommon<ServerConnectionData> {
    type Data = ServerConnectionData;
    fn records<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }
    fn common(&self) -> &CommonState {
        self
    }
}

/// What to do once rustls may send application data.
#[derive(Clone, Copy)]
pub(super) enum Want<'a> {
    /// Nothing: stop there.
    Nothing,
    /// Encrypt these bytes into the records.
    Encrypt(&'a [u8]),
    /// Encrypt a close_notify alert.
    CloseNotify,
}

/// Where one pass puts what it produced.
pub(super) struct Sink<'a> {
    /// TLS records to send, in order.
    pub records: &'a mut Vec<u8>,
    /// Decrypted application data.
    pub plaintext: &'a mut Vec<u8>,
    /// Set when the peer's close_notify arrives.
    pub peer_closed: &'a mut bool,
}

/// How a pass ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// rustls needs more bytes (or has nothing to do); `Want` was done if it could be.
    Ready,
    /// `Want` could not be done yet: the handshake is not complete.
    Handshaking,
    /// Both ends sent close_notify: nothing more can be sent.
    Closed,
}

/// Runs rustls over `buf` until it needs more bytes, doing `want` on the way. Returns how many
/// bytes at the front of `buf` rustls is done with (the rest must be offered again, as they are
/// now: rustls may have decrypted some of them in place) and how it ended.
///
/// On an error, any alert rustls queued for the peer is appended to `sink.records`.
pub(super) fn drive<C: Drive>(
    conn: &mut C,
    side: Side,
    buf: &mut [u8],
    want: Want<'_>,
    sink: &mut Sink<'_>,
) -> Result<(usize, Ended), TlsError> {
    let mut discard = 0;
    loop {
        let UnbufferedStatus { discard: d, state } = conn.records(&mut buf[discard..]);
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                let e = TlsError::from_rustls(side, e);
                flush_alerts(conn, &mut buf[discard..], sink.records);
                return Err(e);
            }
        };
        let mut extra = 0;
        let ended = match state {
            ConnectionState::ReadTraffic(mut read) => {
                while let Some(record) = read.next_record() {
                    let record = record.map_err(|e| TlsError::from_rustls(side, e))?;
                    extra += record.discard;
                    sink.plaintext.extend_from_slice(record.payload);
                }
                None
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(&mut encode, sink.records)?;
                None
            }
            // What was encoded is in `sink.records`, which the caller sends.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                None
            }
            ConnectionState::PeerClosed => {
                *sink.peer_closed = true;
                None
            }
            ConnectionState::Closed => {
                *sink.peer_closed = true;
                Some(Ended::Closed)
            }
            ConnectionState::WriteTraffic(mut write) => {
                match want {
                    Want::Nothing => {}
                    Want::Encrypt(plaintext) => encrypt_into(&mut write, plaintext, sink.records)?,
                    Want::CloseNotify => close_notify_into(&mut write, sink.records)?,
                }
                Some(Ended::Ready)
            }
            ConnectionState::BlockedHandshake => Some(match want {
                Want::Nothing => Ended::Ready,
                _ => Ended::Handshaking,
            }),
            ConnectionState::ReadEarlyData(_) => {
                return Err(TlsError::Protocol(
                    "the agent (client) sent TLS early data, which is off here".into(),
                ))
            }
            _ => {
                return Err(TlsError::Protocol(
                    "rustls asked for a step this session does not know".into(),
                ))
            }
        };
        discard += d + extra;
        if let Some(ended) = ended {
            return Ok((discard, ended));
        }
    }
}

/// After an error: moves the alert rustls queued (if any) to `records`, best effort. Only
/// while records are queued: rustls hands those out before it looks at `buf` again (which would
/// repeat the error).
fn flush_alerts<C: Drive>(conn: &mut C, buf: &mut [u8], records: &mut Vec<u8>) {
    while conn.common().wants_write() {
        match conn.records(buf).state {
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                if encode_into(&mut encode, records).is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Appends a handshake (or alert) record rustls has ready.
fn encode_into<D>(encode: &mut EncodeTlsData<'_, D>, out: &mut Vec<u8>) -> Result<(), TlsError> {
    let start = out.len();
    let required = match encode.encode(&mut []) {
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
        Ok(_) | Err(EncodeError::AlreadyEncoded) => return Ok(()),
    };
    out.resize(start + required, 0);
    match encode.encode(&mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(TlsError::Protocol(format!(
                "TLS record encoding failed: {e}"
            )))
        }
    }
}

/// Appends the records of `plaintext` (after any record rustls must send first).
fn encrypt_into<D>(
    write: &mut WriteTraffic<'_, D>,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), TlsError> {
    let start = out.len();
    let records = plaintext.len() / RECORD_PLAINTEXT_BYTES + 1;
    out.resize(start + plaintext.len() + records * RECORD_OVERHEAD_BYTES, 0);
    let mut written = write.encrypt(plaintext, &mut out[start..]);
    if let Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) = written {
        out.resize(start + required_size, 0);
        written = write.encrypt(plaintext, &mut out[start..]);
    }
    match written {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(TlsError::Protocol(format!("TLS encryption failed: {e}")))
        }
    }
}

/// Appends a close_notify alert.
fn close_notify_into<D>(
    write: &mut WriteTraffic<'_, D>,
    out: &mut Vec<u8>,
) -> Result<(), TlsError> {
    let start = out.len();
    out.resize(start + RECORD_OVERHEAD_BYTES, 0);
    let mut written = write.queue_close_notify(&mut out[start..]);
    if let Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) = written {
        out.resize(start + required_size, 0);
        written = write.queue_close_notify(&mut out[start..]);
    }
    match written {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(TlsError::Protocol(format!("TLS close_notify failed: {e}")))
        }
    }
}

/// Where the last, incomplete record of `buf` starts (`buf.len()` when it ends on a record
/// boundary). `buf` starts on a record boundary.
pub(super) fn incomplete_tail(buf: &[u8]) -> usize {
    let mut at = 0;
    while let Some(missing) = missing_bytes(&buf[at..]) {
        if missing > 0 {
            return at;
        }
        at += record_len(&buf[at..]).unwrap_or(buf.len() - at);
    }
    at
}

/// Bytes missing to complete the record `partial` starts with: the rest of its header while it
/// is shorter than one, else the rest of its body; `Some(0)` when it is complete, `None` when
/// `partial` is empty.
pub(super) fn missing_bytes(partial: &[u8]) -> Option<usize> {
    if partial.is_empty() {
        return None;
    }
    Some(match record_len(partial) {
        None => RECORD_HEADER_BYTES - partial.len(),
        Some(len) => len.saturating_sub(partial.len()),
    })
}

/// The whole length (header and body) of the record `buf` starts with, once its header is there.
fn record_len(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..RECORD_HEADER_BYTES)?;
    Some(RECORD_HEADER_BYTES + usize::from(u16::from_be_bytes([header[3], header[4]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_boundaries() {
        let record = |len: u16| {
            let mut r = vec![23, 3, 3];
            r.extend_from_slice(&len.to_be_bytes());
            r.resize(5 + usize::from(len), 7);
            r
        };
        let mut two = record(10);
        two.extend(record(3));
        assert_eq!(incomplete_tail(&two), two.len());
        assert_eq!(incomplete_tail(&two[..20]), 15);
        assert_eq!(incomplete_tail(&two[..17]), 15);
        assert_eq!(incomplete_tail(&two[..3]), 0);
        assert_eq!(incomplete_tail(&[]), 0);
        assert_eq!(missing_bytes(&two[..2]), Some(3));
        assert_eq!(missing_bytes(&two[..7]), Some(8));
        assert_eq!(missing_bytes(&two[..15]), Some(0));
        assert_eq!(missing_bytes(&[]), None);
    }
}

//! Session records: how a session's bytes travel on a data connection when both ends speak
//! extension version 2 (framed sessions), so a session can end without ending the connection.
//!
//! After SessionStart each direction of the data connection carries records:
//!
//! ```text
//! DATA   01 | length u32 BE (1..=MAX_SESSION_CHUNK_BYTES) | payload
//! END    02                                  end of this direction (a half-close)
//! ABORT  03 | reason u8 | text length u8 | text (UTF-8, at most 255 bytes)
//! ```
//!
//! Each side sends exactly one terminal record (END or ABORT) per session and nothing after it;
//! a side that sent ABORT drops the DATA still arriving until the peer's terminal. A side is done
//! with the session, and the connection is clean for the next one, once it has sent its terminal
//! and received the peer's (`SessionRecords::is_clean`).
//!
//! Pure: no I/O, no clock. The decoder is incremental: "need more bytes" is not an error, and it
//! hands out a chunk's payload as it arrives, saying how many bytes of the chunk remain (so a
//! pump may move exactly that many bytes by other means, e.g. splice). It must not know sockets.

/// Largest DATA payload a peer may announce.
pub const MAX_SESSION_CHUNK_BYTES: u32 = 1 << 20;
/// Bytes of a DATA header (kind + length).
pub const DATA_HEADER_LEN: usize = 5;
/// Kind byte of a DATA record.
pub const KIND_DATA: u8 = 0x01;
/// Kind byte of an END record.
pub const KIND_END: u8 = 0x02;
/// Kind byte of an ABORT record.
pub const KIND_ABORT: u8 = 0x03;
/// Longest ABORT text.
pub const MAX_ABORT_TEXT_BYTES: usize = 255;

/// Why a session was aborted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AbortReason {
    /// The frontend (client) reset or failed.
    FrontendReset,
    /// The agent could not connect the backend (refused, timed out, no address).
    BackendConnect,
    /// The backend reset or failed mid-session.
    BackendError,
    /// A reason code this build does not know (kept, so nothing is lost).
    Other(u8),
}

impl AbortReason {
    /// Every known reason, for metrics.
    pub const KNOWN: [AbortReason; 3] = [
        AbortReason::FrontendReset,
        AbortReason::BackendConnect,
        AbortReason::BackendError,
    ];

    /// The wire byte.
    pub fn byte(self) -> u8 {
        match self {
            AbortReason::FrontendReset => 1,
            AbortReason::BackendConnect => 2,
            AbortReason::BackendError => 3,
            AbortReason::Other(b) => b,
        }
    }

    /// The reason for a wire byte.
    pub fn from_byte(b: u8) -> Self {
        match b {
            1 => AbortReason::FrontendReset,
            2 => AbortReason::BackendConnect,
            3 => AbortReason::BackendError,
            other => AbortReason::Other(other),
        }
    }

    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            AbortReason::FrontendReset => "frontend_reset",
            AbortReason::BackendConnect => "backend_connect",
            AbortReason::BackendError => "backend_error",
            AbortReason::Other(_) => "other",
        }
    }
}

/// A decoded ABORT record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Abort {
    pub reason: AbortReason,
    /// Short human text (invalid UTF-8 replaced).
    pub text: String,
}

/// Bytes that break the record framing; the connection must be closed, never reused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("unknown session record kind {0:#04x}")]
    UnknownKind(u8),
    #[error("session chunk of {len} bytes exceeds the limit of {max_bytes} bytes")]
    ChunkTooLarge { len: u32, max_bytes: u32 },
    #[error("empty session chunk")]
    EmptyChunk,
    #[error("bytes after the peer's end of session")]
    AfterTerminal,
}

/// One step of the decoder.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Nothing decodable yet: read more bytes.
    NeedMore,
    /// Payload bytes of the current chunk (possibly empty right after its header), and how many
    /// input bytes this step used.
    Payload(&'a [u8], usize),
    /// The peer ended its direction; input bytes used.
    End(usize),
    /// The peer aborted the session; input bytes used.
    Abort(Abort, usize),
}

/// The incremental decoder of one direction of one session.
#[derive(Clone, Debug)]
pub struct RecordDecoder {
    max_chunk_bytes: u32,
    /// Payload bytes of the current chunk not yet handed out.
    remaining: u32,
    /// The peer's terminal record was decoded.
    finished: bool,
}

impl Default for RecordDecoder {
    fn default() -> Self {
        Self::new(MAX_SESSION_CHUNK_BYTES)
    }
}

impl RecordDecoder {
    /// A decoder refusing chunks longer than `max_chunk_bytes`.
    pub fn new(max_chunk_bytes: u32) -> Self {
        Self {
            max_chunk_bytes,
            remaining: 0,
            finished: false,
        }
    }

    /// Payload bytes of the current chunk still to come (0 between records).
    pub fn payload_remaining(&self) -> u32 {
        self.remaining
    }

    /// Records that `n` payload bytes of the current chunk were moved without `decode` (spliced);
    /// `n` must not exceed `payload_remaining`.
    pub fn skip_payload(&mut self, n: u32) {
        self.remaining = self.remaining.saturating_sub(n);
    }

    /// True once the peer's terminal record was decoded.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Decodes the next step from `input`.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Step<'a>, RecordError> {
        if self.remaining > 0 {
            if input.is_empty() {
                return Ok(Step::NeedMore);
            }
            let n = input.len().min(self.remaining as usize);
            self.remaining -= n as u32;
            return Ok(Step::Payload(&input[..n], n));
        }
        let Some(&kind) = input.first() else {
            return Ok(Step::NeedMore);
        };
        if self.finished {
            return Err(RecordError::AfterTerminal);
        }
        match kind {
            KIND_DATA => {
                let Some(len) = input.get(1..DATA_HEADER_LEN) else {
                    return Ok(Step::NeedMore);
                };
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                if len == 0 {
                    return Err(RecordError::EmptyChunk);
                }
                if len > self.max_chunk_bytes {
                    return Err(RecordError::ChunkTooLarge {
                        len,
                        max_bytes: self.max_chunk_bytes,
                    });
                }
                let body = &input[DATA_HEADER_LEN..];
                let n = body.len().min(len as usize);
                self.remaining = len - n as u32;
                Ok(Step::Payload(&body[..n], DATA_HEADER_LEN + n))
            }
            KIND_END => {
                self.finished = true;
                Ok(Step::End(1))
            }
            KIND_ABORT => {
                let Some(&[reason, text_len]) = input.get(1..3) else {
                    return Ok(Step::NeedMore);
                };
                let end = 3 + usize::from(text_len);
                let Some(text) = input.get(3..end) else {
                    return Ok(Step::NeedMore);
                };
                self.finished = true;
                Ok(Step::Abort(
                    Abort {
                        reason: AbortReason::from_byte(reason),
                        text: String::from_utf8_lossy(text).into_owned(),
                    },
                    end,
                ))
            }
            other => Err(RecordError::UnknownKind(other)),
        }
    }
}

/// Appends a DATA header for a payload of `len` bytes (1..=MAX_SESSION_CHUNK_BYTES: callers
/// split longer payloads).
pub fn encode_data_header(len: u32, out: &mut Vec<u8>) {
    out.push(KIND_DATA);
    out.extend_from_slice(&len.to_be_bytes());
}

/// Appends DATA records carrying `payload` (split at the chunk limit; nothing for an empty one).
pub fn encode_data(payload: &[u8], out: &mut Vec<u8>) {
    for chunk in payload.chunks(MAX_SESSION_CHUNK_BYTES as usize) {
        encode_data_header(chunk.len() as u32, out);
        out.extend_from_slice(chunk);
    }
}

/// Appends an END record.
pub fn encode_end(out: &mut Vec<u8>) {
    out.push(KIND_END);
}

/// Appends an ABORT record; the text is cut to `MAX_ABORT_TEXT_BYTES` at a character boundary.
pub fn encode_abort(reason: AbortReason, text: &str, out: &mut Vec<u8>) {
    let mut cut = text.len().min(MAX_ABORT_TEXT_BYTES);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    out.push(KIND_ABORT);
    out.push(reason.byte());
    out.push(cut as u8);
    out.extend_from_slice(&text.as_bytes()[..cut]);
}

/// What one side knows of the current session's two terminal records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionRecords {
    /// This side sent its END or ABORT.
    pub sent_terminal: bool,
    /// The peer's END or ABORT arrived.
    pub received_terminal: bool,
    /// Either side aborted.
    pub aborted: bool,
}

impl SessionRecords {
    /// Both terminals crossed: the connection carries no byte of this session any more and may
    /// carry the next one.
    pub fn is_clean(&self) -> bool {
        self.sent_terminal && self.received_terminal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(mut input: &[u8]) -> Result<(Vec<u8>, Vec<Step<'static>>), RecordError> {
        let mut d = RecordDecoder::default();
        let mut payload = Vec::new();
        let mut ends = Vec::new();
        loop {
            match d.decode(input)? {
                Step::NeedMore => return Ok((payload, ends)),
                Step::Payload(p, used) => {
                    payload.extend_from_slice(p);
                    input = &input[used..];
                }
                Step::End(used) => {
                    ends.push(Step::End(used));
                    input = &input[used..];
                }
                Step::Abort(a, used) => {
                    ends.push(Step::Abort(a, used));
                    input = &input[used..];
                }
            }
        }
    }

    #[test]
    fn data_then_end_decodes() {
        let mut wire = Vec::new();
        encode_data(b"hello", &mut wire);
        encode_end(&mut wire);
        assert_eq!(wire, b"\x01\x00\x00\x00\x05hello\x02");
        let (payload, ends) = decode_all(&wire).unwrap();
        assert_eq!(payload, b"hello");
        assert_eq!(ends, vec![Step::End(1)]);
    }

    #[test]
    fn a_header_cut_in_half_needs_more() {
        let mut d = RecordDecoder::default();
        assert_eq!(d.decode(b"\x01\x00\x00"), Ok(Step::NeedMore));
        assert_eq!(d.decode(b"\x03\x01"), Ok(Step::NeedMore));
        assert_eq!(d.decode(b"\x03\x01\x04ab"), Ok(Step::NeedMore));
    }

    #[test]
    fn remaining_payload_is_told() {
        let mut d = RecordDecoder::default();
        assert_eq!(
            d.decode(b"\x01\x00\x00\x00\x0aabc"),
            Ok(Step::Payload(b"abc", 8))
        );
        assert_eq!(d.payload_remaining(), 7);
        d.skip_payload(5);
        assert_eq!(d.decode(b"xyz"), Ok(Step::Payload(b"xy", 2)));
        assert_eq!(d.payload_remaining(), 0);
    }

    #[test]
    fn hostile_records_are_errors() {
        let mut d = RecordDecoder::new(16);
        assert_eq!(
            d.decode(b"\x01\x00\x00\x00\x11"),
            Err(RecordError::ChunkTooLarge {
                len: 17,
                max_bytes: 16
            })
        );
        assert_eq!(
            RecordDecoder::default().decode(b"\x01\x00\x00\x00\x00"),
            Err(RecordError::EmptyChunk)
        );
        assert_eq!(
            RecordDecoder::default().decode(b"\x7f"),
            Err(RecordError::UnknownKind(0x7f))
        );
        let mut d = RecordDecoder::default();
        assert_eq!(d.decode(b"\x02x"), Ok(Step::End(1)));
        assert_eq!(d.decode(b"x"), Err(RecordError::AfterTerminal));
    }

    #[test]
    fn abort_round_trips_and_cuts_its_text() {
        let mut wire = Vec::new();
        let long = "é".repeat(200);
        encode_abort(AbortReason::BackendConnect, &long, &mut wire);
        let mut d = RecordDecoder::default();
        let Ok(Step::Abort(a, used)) = d.decode(&wire) else {
            panic!("no abort");
        };
        assert_eq!(used, wire.len());
        assert_eq!(a.reason, AbortReason::BackendConnect);
        assert_eq!(a.text, "é".repeat(127));
        assert!(d.finished());
    }

    #[test]
    fn clean_needs_both_terminals() {
        let mut s = SessionRecords::default();
        assert!(!s.is_clean());
        s.sent_terminal = true;
        assert!(!s.is_clean());
        s.received_terminal = true;
        assert!(s.is_clean());
    }
}

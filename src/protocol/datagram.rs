//! The framing of a UDP flow's datagrams on its data connection, in one of two forms:
//! - a connection without framed sessions (extension version below 2): each datagram, either
//!   way, is a big-endian `u16` length followed by that many bytes (an empty datagram is a
//!   length of 0); the connection carries one flow and the flow ends when it closes;
//! - a framed connection (version 2, `protocol::session_frame`): each datagram is one whole DATA
//!   record of its length (boundaries kept; at most [`MAX_DATAGRAM_BYTES`]; an empty datagram
//!   cannot be a record and is not carried), and the flow's end is an END or ABORT record each
//!   way, after which the connection may carry the next session ([`decode_flow_record`]).
//!
//! Pure, like the frame codec: no I/O, no clock, no state. "Need more bytes" is a normal answer,
//! not an error; a length over the receiver's limit is an error (the peer broke the protocol:
//! that one connection closes). Property-tested (`protocol/proptests.rs`) and fuzzed
//! (`fuzz/fuzz_targets/datagram_decoder.rs`, harness in `protocol/harness.rs`).

use super::session_frame::{
    encode_data_header, Abort, RecordDecoder, Step, DATA_HEADER_LEN, KIND_ABORT, KIND_DATA,
    KIND_END,
};

/// Largest payload of one UDP datagram over IPv4 (65,535 − 8 UDP − 20 IP header bytes); the
/// most a flow carries in one datagram.
pub const MAX_DATAGRAM_BYTES: usize = 65_507;
/// Bytes of the length prefix in front of each datagram.
pub const DATAGRAM_HEADER_LEN: usize = 2;

/// What the decoder found at the front of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramDecoded {
    /// At least this many more bytes are needed.
    NeedMore(usize),
    /// One datagram: its payload is `buf[DATAGRAM_HEADER_LEN..used]`; `used` bytes are taken.
    Datagram { used: usize },
}

/// A datagram that cannot be framed or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    #[error("datagram of {len} bytes is over the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
}

/// Appends `payload` framed with its length to `out`. Longer than [`MAX_DATAGRAM_BYTES`] is an
/// error and appends nothing.
pub fn encode_datagram(payload: &[u8], out: &mut Vec<u8>) -> Result<(), DatagramError> {
    if payload.len() > MAX_DATAGRAM_BYTES {
        return Err(DatagramError::TooLong {
            len: payload.len(),
            max: MAX_DATAGRAM_BYTES,
        });
    }
    // Fits: checked above, and MAX_DATAGRAM_BYTES < u16::MAX.
    let len = payload.len() as u16;
    out.reserve(DATAGRAM_HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Decodes the datagram at the front of `buf`, refusing one longer than `max_bytes` (itself at
/// most [`MAX_DATAGRAM_BYTES`]; larger is taken as that).
pub fn decode_datagram(buf: &[u8], max_bytes: usize) -> Result<DatagramDecoded, DatagramError> {
    let max = max_bytes.min(MAX_DATAGRAM_BYTES);
    let Some(header) = buf.get(..DATAGRAM_HEADER_LEN) else {
        return Ok(DatagramDecoded::NeedMore(DATAGRAM_HEADER_LEN - buf.len()));
    };
    let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
    if len > max {
        return Err(DatagramError::TooLong { len, max });
    }
    let used = DATAGRAM_HEADER_LEN + len;
    if buf.len() < used {
        return Ok(DatagramDecoded::NeedMore(used - buf.len()));
    }
    Ok(DatagramDecoded::Datagram { used })
}

/// What the record decoder of a framed UDP flow found at the front of a buffer: only whole
/// records, so a datagram is handed out in one piece.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowRecord {
    /// At least this many more bytes are needed.
    NeedMore(usize),
    /// One datagram: its payload is `buf[DATA_HEADER_LEN..used]`; `used` bytes are taken.
    Datagram { used: usize },
    /// The peer ended the flow; `used` bytes are taken.
    End { used: usize },
    /// The peer aborted the flow; `used` bytes are taken.
    Abort { abort: Abort, used: usize },
}

/// Bytes that break a framed UDP flow: the connection closes, never reused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlowRecordError {
    #[error("datagram record of {len} bytes is over the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("empty datagram record")]
    Empty,
    #[error("unknown session record kind {0:#04x}")]
    UnknownKind(u8),
}

/// Appends `payload` as one DATA record. Empty or longer than [`MAX_DATAGRAM_BYTES`] is an error
/// and appends nothing (an empty datagram cannot be a record).
pub fn encode_datagram_record(payload: &[u8], out: &mut Vec<u8>) -> Result<(), FlowRecordError> {
    if payload.is_empty() {
        return Err(FlowRecordError::Empty);
    }
    if payload.len() > MAX_DATAGRAM_BYTES {
        return Err(FlowRecordError::TooLong {
            len: payload.len(),
            max: MAX_DATAGRAM_BYTES,
        });
    }
    out.reserve(DATA_HEADER_LEN + payload.len());
    // Fits: MAX_DATAGRAM_BYTES < u32::MAX.
    encode_data_header(payload.len() as u32, out);
    out.extend_from_slice(payload);
    Ok(())
}

/// Decodes the whole record at the front of `buf` of a framed UDP flow, refusing a datagram
/// longer than `max_bytes` (itself at most [`MAX_DATAGRAM_BYTES`]; larger is taken as that).
pub fn decode_flow_record(buf: &[u8], max_bytes: usize) -> Result<FlowRecord, FlowRecordError> {
    let max = max_bytes.min(MAX_DATAGRAM_BYTES);
    let Some(&kind) = buf.first() else {
        return Ok(FlowRecord::NeedMore(1));
    };
    match kind {
        KIND_DATA => {
            let Some(header) = buf.get(1..DATA_HEADER_LEN) else {
                return Ok(FlowRecord::NeedMore(DATA_HEADER_LEN - buf.len()));
            };
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len == 0 {
                return Err(FlowRecordError::Empty);
            }
            if len > max {
                return Err(FlowRecordError::TooLong { len, max });
            }
            let used = DATA_HEADER_LEN + len;
            if buf.len() < used {
                return Ok(FlowRecord::NeedMore(used - buf.len()));
            }
            Ok(FlowRecord::Datagram { used })
        }
        KIND_END | KIND_ABORT => match RecordDecoder::default().decode(buf) {
            Ok(Step::End(used)) => Ok(FlowRecord::End { used }),
            Ok(Step::Abort(abort, used)) => Ok(FlowRecord::Abort { abort, used }),
            // An ABORT cut short: its fixed part, then its text length, tell what is missing.
            _ => Ok(FlowRecord::NeedMore(match buf.get(2) {
                Some(&text_len) => 3 + usize::from(text_len) - buf.len(),
                None => 3 - buf.len(),
            })),
        },
        other => Err(FlowRecordError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_is_its_length_then_its_bytes() {
        let mut out = Vec::new();
        encode_datagram(b"abc", &mut out).unwrap();
        encode_datagram(b"", &mut out).unwrap();
        assert_eq!(out, [0, 3, b'a', b'b', b'c', 0, 0]);
        assert_eq!(
            decode_datagram(&out, MAX_DATAGRAM_BYTES),
            Ok(DatagramDecoded::Datagram { used: 5 })
        );
        assert_eq!(
            decode_datagram(&out[5..], MAX_DATAGRAM_BYTES),
            Ok(DatagramDecoded::Datagram { used: 2 })
        );
    }

    #[test]
    fn short_input_needs_more_and_long_is_refused() {
        assert_eq!(decode_datagram(&[], 10), Ok(DatagramDecoded::NeedMore(2)));
        assert_eq!(decode_datagram(&[0], 10), Ok(DatagramDecoded::NeedMore(1)));
        assert_eq!(
            decode_datagram(&[0, 4, 1], 10),
            Ok(DatagramDecoded::NeedMore(3))
        );
        assert_eq!(
            decode_datagram(&[0, 11], 10),
            Err(DatagramError::TooLong { len: 11, max: 10 })
        );
        assert_eq!(
            decode_datagram(&[0xff, 0xff], usize::MAX),
            Err(DatagramError::TooLong {
                len: 65_535,
                max: MAX_DATAGRAM_BYTES
            })
        );
        let mut out = vec![7];
        assert!(encode_datagram(&vec![0; MAX_DATAGRAM_BYTES + 1], &mut out).is_err());
        assert_eq!(out, [7]);
        encode_datagram(&vec![0; MAX_DATAGRAM_BYTES], &mut out).unwrap();
        assert_eq!(out.len(), 1 + 2 + MAX_DATAGRAM_BYTES);
    }

    #[test]
    fn a_framed_datagram_is_one_whole_record() {
        use crate::protocol::session_frame::{encode_abort, encode_end, AbortReason};
        let mut out = Vec::new();
        encode_datagram_record(b"abc", &mut out).unwrap();
        encode_end(&mut out);
        encode_abort(AbortReason::BackendError, "gone", &mut out);
        assert_eq!(&out[..9], b"\x01\x00\x00\x00\x03abc\x02");
        assert_eq!(
            decode_flow_record(&out, MAX_DATAGRAM_BYTES),
            Ok(FlowRecord::Datagram { used: 8 })
        );
        for cut in 0..8 {
            assert!(matches!(
                decode_flow_record(&out[..cut], MAX_DATAGRAM_BYTES),
                Ok(FlowRecord::NeedMore(n)) if n >= 1 && cut + n <= 8
            ));
        }
        assert_eq!(
            decode_flow_record(&out[8..], MAX_DATAGRAM_BYTES),
            Ok(FlowRecord::End { used: 1 })
        );
        for cut in 0..7 {
            assert!(matches!(
                decode_flow_record(&out[9..9 + cut], MAX_DATAGRAM_BYTES),
                Ok(FlowRecord::NeedMore(n)) if n >= 1 && cut + n <= 7
            ));
        }
        let Ok(FlowRecord::Abort { abort, used: 7 }) =
            decode_flow_record(&out[9..], MAX_DATAGRAM_BYTES)
        else {
            panic!("no abort");
        };
        assert_eq!(abort.reason, AbortReason::BackendError);
        assert_eq!(abort.text, "gone");
    }

    #[test]
    fn hostile_flow_records_are_errors() {
        assert_eq!(
            encode_datagram_record(b"", &mut Vec::new()),
            Err(FlowRecordError::Empty)
        );
        assert!(encode_datagram_record(&vec![0; MAX_DATAGRAM_BYTES + 1], &mut Vec::new()).is_err());
        assert_eq!(
            decode_flow_record(b"\x01\x00\x00\x00\x00", 10),
            Err(FlowRecordError::Empty)
        );
        assert_eq!(
            decode_flow_record(b"\x01\x00\x00\x00\x0b", 10),
            Err(FlowRecordError::TooLong { len: 11, max: 10 })
        );
        assert_eq!(
            decode_flow_record(b"\x01\x00\x01\x00\x00", usize::MAX),
            Err(FlowRecordError::TooLong {
                len: 65_536,
                max: MAX_DATAGRAM_BYTES
            })
        );
        assert_eq!(
            decode_flow_record(b"\x7f", 10),
            Err(FlowRecordError::UnknownKind(0x7f))
        );
    }
}

//! The framing of a UDP flow's datagrams on its data connection: each datagram, either way, is a
//! big-endian `u16` length followed by that many bytes (an empty datagram is a length of 0). The
//! data connection carries one flow after its `SessionStart{"protocol":"udp"}`; the flow ends
//! when the connection closes.
//!
//! Pure, like the frame codec: no I/O, no clock, no state. "Need more bytes" is a normal answer,
//! not an error; a length over the receiver's limit is an error (the peer broke the protocol:
//! that one connection closes). Property-tested (`protocol/proptests.rs`) and fuzzed
//! (`fuzz/fuzz_targets/datagram_decoder.rs`, harness in `protocol/harness.rs`).

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
}

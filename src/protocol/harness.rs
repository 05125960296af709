//! The fuzz harnesses of the frame decoder (`fuzz/fuzz_targets/frame_decoder.rs`), of the
//! PROXY header decoder (`fuzz/fuzz_targets/proxy_header.rs`), of the session record decoder
//! (`fuzz/fuzz_targets/session_records.rs`) and of the UDP flow's two datagram decoders
//! (`fuzz/fuzz_targets/datagram_decoder.rs`), shared with the property tests
//! (so CI, which cannot run cargo-fuzz, runs the same checks on random inputs).
//!
//! Panics only when an invariant of the codec is broken; that is what the fuzzer looks for.

use super::proxy::{decode_proxy_header, encode_proxy_header, ProxyDecoded};
use super::{decode, encode_to_vec, Decoded, EncodeError, MAX_WIRE_PAYLOAD_BYTES};

/// Decodes `data` frame after frame under a limit taken from its first byte; every decoded frame
/// must re-encode and decode back to itself, and no input may panic the decoder.
pub fn decode_round_trip(data: &[u8]) {
    let Some((&limit_byte, mut rest)) = data.split_first() else {
        return;
    };
    // Small limits reach the "payload too large" path; 255 means the wire maximum.
    let max = if limit_byte == u8::MAX {
        MAX_WIRE_PAYLOAD_BYTES
    } else {
        usize::from(limit_byte) * 64
    };
    loop {
        match decode(rest, max) {
            Ok(Decoded::NeedMore(n)) => {
                assert!(n >= 1, "NeedMore(0)");
                return;
            }
            Ok(Decoded::Frame(frame, used)) => {
                assert!(
                    used >= super::HEADER_LEN && used <= rest.len(),
                    "used {used}"
                );
                match encode_to_vec(&frame) {
                    Ok(bytes) => match decode(&bytes, MAX_WIRE_PAYLOAD_BYTES) {
                        Ok(Decoded::Frame(again, len)) => {
                            assert_eq!(len, bytes.len(), "re-encoded frame not used whole");
                            assert_eq!(again, frame, "frame changed in a round trip");
                        }
                        other => panic!("re-encoded {frame:?} decodes as {other:?}"),
                    },
                    // JSON re-serialized can be longer than what was received (escapes).
                    Err(EncodeError::PayloadTooLarge { .. }) => {}
                    Err(e) => panic!("decoded {frame:?} does not encode: {e}"),
                }
                rest = &rest[used..];
            }
            Err(_) => return,
        }
    }
}

/// Decodes `data[1..]` as a PROXY header under a limit taken from `data[0]`. No input may panic
/// the decoder; a decoded header must re-encode and decode back to itself, and every prefix of
/// the bytes it used must be "need more" (so reading it in pieces gives the same answer).
pub fn proxy_header_round_trip(data: &[u8]) {
    let Some((&limit_byte, rest)) = data.split_first() else {
        return;
    };
    let max = usize::from(limit_byte) * 16;
    match decode_proxy_header(rest, max) {
        Ok(ProxyDecoded::NeedMore(n)) => assert!(n >= 1, "NeedMore(0)"),
        Ok(ProxyDecoded::Header(header, version, used)) => {
            assert!(used >= 15 && used <= rest.len(), "used {used}");
            for cut in 0..used {
                match decode_proxy_header(&rest[..cut], max) {
                    Ok(ProxyDecoded::NeedMore(n)) => assert!(n >= 1 && cut + n <= used),
                    other => panic!("prefix of {cut} of {used} bytes gave {other:?}"),
                }
            }
            let bytes = encode_proxy_header(version, &header);
            assert_eq!(
                decode_proxy_header(&bytes, max),
                Ok(ProxyDecoded::Header(header, version, bytes.len())),
                "re-encoded header does not decode to itself"
            );
        }
        Err(_) => {}
    }
}

/// Decodes `data[2..]` as one direction of session records (chunk limit from `data[0]`), once
/// whole and once fed in pieces of `data[1]` bytes (at least 1): both must hand out the same
/// payload bytes, terminal and error; no input may panic the decoder; a decoded stream must
/// re-encode to records that decode to the same payload.
pub fn session_records_round_trip(data: &[u8]) {
    use super::session_frame::{encode_data, RecordDecoder, Step};
    let [limit, piece, rest @ ..] = data else {
        return;
    };
    let max = u32::from(*limit).max(1) * 64;
    let whole = feed_records(RecordDecoder::new(max), rest, rest.len().max(1));
    let pieces = feed_records(RecordDecoder::new(max), rest, usize::from(*piece).max(1));
    assert_eq!(whole, pieces, "piecewise decoding differs");
    let (payload, _, _) = whole;
    let mut again = Vec::new();
    encode_data(&payload, &mut again);
    let mut d = RecordDecoder::new(super::session_frame::MAX_SESSION_CHUNK_BYTES);
    let mut got = Vec::new();
    let mut input = &again[..];
    loop {
        match d.decode(input) {
            Ok(Step::Payload(p, used)) => {
                got.extend_from_slice(p);
                input = &input[used..];
            }
            Ok(Step::NeedMore) => break,
            other => panic!("re-encoded payload decodes as {other:?}"),
        }
    }
    assert_eq!(got, payload, "payload changed in a round trip");
}

/// What a record decoder made of `input` fed `piece` bytes at a time: the payload, the terminal
/// (as text) and the error (as text).
fn feed_records(
    mut d: super::session_frame::RecordDecoder,
    input: &[u8],
    piece: usize,
) -> (Vec<u8>, Option<String>, Option<String>) {
    use super::session_frame::Step;
    let mut payload = Vec::new();
    let mut terminal = None;
    let mut pending: Vec<u8> = Vec::new();
    for chunk in input.chunks(piece) {
        pending.extend_from_slice(chunk);
        loop {
            match d.decode(&pending) {
                Ok(Step::NeedMore) => break,
                Ok(Step::Payload(p, used)) => {
                    assert!(used >= p.len() && used <= pending.len(), "used {used}");
                    payload.extend_from_slice(p);
                    if used == 0 {
                        break;
                    }
                    pending.drain(..used);
                }
                Ok(Step::End(used)) => {
                    terminal = Some("end".to_string());
                    pending.drain(..used);
                }
                Ok(Step::Abort(a, used)) => {
                    terminal = Some(format!("{a:?}"));
                    pending.drain(..used);
                }
                Err(e) => return (payload, terminal, Some(e.to_string())),
            }
        }
    }
    (payload, terminal, None)
}

/// Decodes `data[1..]` as a stream of framed datagrams under a limit taken from `data[0]`. No
/// input may panic the decoder; each decoded datagram must re-encode to the bytes it came from,
/// and every prefix of those bytes must be "need more" with a count that does not overshoot.
pub fn datagram_round_trip(data: &[u8]) {
    use super::datagram::{decode_datagram, encode_datagram, DatagramDecoded, DATAGRAM_HEADER_LEN};
    let Some((&limit_byte, mut rest)) = data.split_first() else {
        return;
    };
    let max = if limit_byte == u8::MAX {
        super::datagram::MAX_DATAGRAM_BYTES
    } else {
        usize::from(limit_byte) * 2
    };
    loop {
        match decode_datagram(rest, max) {
            Ok(DatagramDecoded::NeedMore(n)) => {
                assert!(n >= 1, "NeedMore(0)");
                return;
            }
            Ok(DatagramDecoded::Datagram { used }) => {
                assert!(
                    used >= DATAGRAM_HEADER_LEN && used <= rest.len(),
                    "used {used}"
                );
                assert!(used - DATAGRAM_HEADER_LEN <= max, "over the limit");
                let mut again = Vec::new();
                encode_datagram(&rest[DATAGRAM_HEADER_LEN..used], &mut again)
                    .expect("a decoded datagram encodes");
                assert_eq!(
                    &again[..],
                    &rest[..used],
                    "datagram changed in a round trip"
                );
                for cut in 0..used {
                    match decode_datagram(&rest[..cut], max) {
                        Ok(DatagramDecoded::NeedMore(n)) => assert!(n >= 1 && cut + n <= used),
                        other => panic!("prefix of {cut} of {used} bytes gave {other:?}"),
                    }
                }
                rest = &rest[used..];
            }
            Err(_) => return,
        }
    }
}

/// Decodes `data[1..]` as a framed UDP flow's records under a limit taken from `data[0]`. No
/// input may panic the decoder; each decoded datagram must re-encode to the bytes it came from,
/// and every prefix of a record (END and ABORT too) must be "need more" without overshooting.
pub fn flow_record_round_trip(data: &[u8]) {
    use super::datagram::{decode_flow_record, encode_datagram_record, FlowRecord};
    use super::session_frame::DATA_HEADER_LEN;
    let Some((&limit_byte, mut rest)) = data.split_first() else {
        return;
    };
    let max = if limit_byte == u8::MAX {
        super::datagram::MAX_DATAGRAM_BYTES
    } else {
        usize::from(limit_byte) * 2
    };
    loop {
        let used = match decode_flow_record(rest, max) {
            Ok(FlowRecord::NeedMore(n)) => {
                assert!(n >= 1, "NeedMore(0)");
                return;
            }
            Ok(FlowRecord::Datagram { used }) => {
                assert!(used > DATA_HEADER_LEN && used <= rest.len(), "used {used}");
                assert!(used - DATA_HEADER_LEN <= max, "over the limit");
                let mut again = Vec::new();
                encode_datagram_record(&rest[DATA_HEADER_LEN..used], &mut again)
                    .expect("a decoded datagram encodes");
                assert_eq!(
                    &again[..],
                    &rest[..used],
                    "datagram changed in a round trip"
                );
                used
            }
            Ok(FlowRecord::End { used }) | Ok(FlowRecord::Abort { used, .. }) => {
                assert!(used >= 1 && used <= rest.len(), "used {used}");
                used
            }
            Err(_) => return,
        };
        for cut in 0..used {
            match decode_flow_record(&rest[..cut], max) {
                Ok(FlowRecord::NeedMore(n)) => assert!(n >= 1 && cut + n <= used),
                other => panic!("prefix of {cut} of {used} bytes gave {other:?}"),
            }
        }
        rest = &rest[used..];
    }
}

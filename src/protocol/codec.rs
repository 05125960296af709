//! Encoding frames into bytes and decoding bytes into frames.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::frame::{Flag, Frame};
use super::{HEADER_LEN, MAGIC, MAX_WIRE_PAYLOAD_BYTES, TYPE_REQUEST, TYPE_RESPONSE, VERSION};

/// What the decoder found at the start of a buffer.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// The buffer holds a valid prefix of a frame; read at least this many more bytes.
    NeedMore(usize),
    /// A whole frame, and how many bytes of the buffer it used. Bytes after it are not looked at
    /// (after a session start they are the session's raw bytes).
    Frame(Frame, usize),
}

/// Bytes that can never become a valid frame. The connection that sent them must be closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("wrong magic bytes {0:02x?} (expected 20 88): not a ringtun/MOSN tunnel peer")]
    WrongMagic([u8; 2]),
    #[error("unsupported protocol version {0:#04x} (expected 0x01)")]
    UnsupportedVersion(u8),
    #[error("unknown frame flag {0:#04x}")]
    UnknownFlag(u8),
    #[error("frame type {found:02x?} does not match flag {flag} (expected {expected:02x?})")]
    WrongType {
        flag: &'static str,
        found: [u8; 2],
        expected: [u8; 2],
    },
    #[error("frame payload of {len} bytes exceeds the limit of {max_bytes} bytes")]
    PayloadTooLarge { len: usize, max_bytes: usize },
    #[error("invalid JSON in {flag} payload: {reason}")]
    BadJson { flag: &'static str, reason: String },
}

/// A frame that cannot be put on the wire.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("{flag} payload of {len} bytes does not fit the 16-bit length field")]
    PayloadTooLarge { flag: &'static str, len: usize },
    #[error("cannot serialize {flag} payload: {reason}")]
    Json { flag: &'static str, reason: String },
}

/// Appends the encoded frame to `out`. On error `out` is left as it was.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let flag = frame.flag();
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(flag.byte());
    out.extend_from_slice(if flag.is_response() {
        &TYPE_RESPONSE
    } else {
        &TYPE_REQUEST
    });
    out.extend_from_slice(&[0, 0]);
    let written = match frame {
        Frame::Init(p) => write_json(flag, p, out),
        Frame::InitResponse(p) => write_json(flag, p, out),
        Frame::GracefulClose(p) => write_json(flag, p, out),
        Frame::SessionStart(p) => write_json(flag, p, out),
        Frame::Ping(p) => write_json(flag, p, out),
        Frame::Pong(p) => write_json(flag, p, out),
        Frame::WeightUpdate(p) => write_json(flag, p, out),
        Frame::Drain(p) => write_json(flag, p, out),
        Frame::PoolRequest(p) => write_json(flag, p, out),
    };
    if let Err(e) = written {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start - HEADER_LEN;
    let Ok(len16) = u16::try_from(len) else {
        out.truncate(start);
        return Err(EncodeError::PayloadTooLarge {
            flag: flag.name(),
            len,
        });
    };
    out[start + 6..start + 8].copy_from_slice(&len16.to_be_bytes());
    Ok(())
}

/// Encodes one frame into a new buffer.
pub fn encode_to_vec(frame: &Frame) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    encode(frame, &mut out)?;
    Ok(out)
}

fn write_json<T: Serialize>(flag: Flag, payload: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    serde_json::to_writer(&mut *out, payload).map_err(|e| EncodeError::Json {
        flag: flag.name(),
        reason: e.to_string(),
    })
}

/// Decodes the frame at the start of `buf`, accepting payloads of at most `max_payload_bytes`.
///
/// Header fields are checked as soon as their bytes are present, so garbage is refused after its
/// first wrong byte rather than after a full header's worth.
pub fn decode(buf: &[u8], max_payload_bytes: usize) -> Result<Decoded, DecodeError> {
    for (i, expected) in MAGIC.iter().enumerate() {
        match buf.get(i) {
            None => return Ok(Decoded::NeedMore(HEADER_LEN - buf.len())),
            Some(b) if b != expected => {
                return Err(DecodeError::WrongMagic([
                    buf[0],
                    buf.get(1).copied().unwrap_or(0),
                ]))
            }
            Some(_) => {}
        }
    }
    let Some(&version) = buf.get(2) else {
        return Ok(Decoded::NeedMore(HEADER_LEN - buf.len()));
    };
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let Some(&flag_byte) = buf.get(3) else {
        return Ok(Decoded::NeedMore(HEADER_LEN - buf.len()));
    };
    let flag = Flag::from_byte(flag_byte).ok_or(DecodeError::UnknownFlag(flag_byte))?;
    if buf.len() < HEADER_LEN {
        return Ok(Decoded::NeedMore(HEADER_LEN - buf.len()));
    }
    let found = [buf[4], buf[5]];
    let expected = if flag.is_response() {
        TYPE_RESPONSE
    } else {
        TYPE_REQUEST
    };
    if found != expected {
        return Err(DecodeError::WrongType {
            flag: flag.name(),
            found,
            expected,
        });
    }
    let len = usize::from(u16::from_be_bytes([buf[6], buf[7]]));
    let max_bytes = max_payload_bytes.min(MAX_WIRE_PAYLOAD_BYTES);
    if len > max_bytes {
        return Err(DecodeError::PayloadTooLarge { len, max_bytes });
    }
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Ok(Decoded::NeedMore(total - buf.len()));
    }
    let payload = &buf[HEADER_LEN..total];
    let frame = match flag {
        Flag::Init => Frame::Init(read_json(flag, payload)?),
        Flag::InitResponse => Frame::InitResponse(read_json(flag, payload)?),
        Flag::GracefulClose => Frame::GracefulClose(read_json(flag, payload)?),
        Flag::SessionStart => Frame::SessionStart(read_json(flag, payload)?),
        Flag::Ping => Frame::Ping(read_json(flag, payload)?),
        Flag::Pong => Frame::Pong(read_json(flag, payload)?),
        Flag::WeightUpdate => Frame::WeightUpdate(read_json(flag, payload)?),
        Flag::Drain => Frame::Drain(read_json(flag, payload)?),
        Flag::PoolRequest => Frame::PoolRequest(read_json(flag, payload)?),
    };
    Ok(Decoded::Frame(frame, total))
}

fn read_json<T: DeserializeOwned>(flag: Flag, payload: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(payload).map_err(|e| DecodeError::BadJson {
        flag: flag.name(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::*;
    use crate::protocol::DEFAULT_MAX_FRAME_PAYLOAD_BYTES as MAX;
    use crate::secret::Secret;

    #[test]
    fn success_response_is_byte_exact_with_mosn() {
        let bytes = encode_to_vec(&Frame::InitResponse(ConnectionInitResponse::status(
            Status::SUCCESS,
        )))
        .unwrap();
        let mut expected = vec![0x20, 0x88, 0x01, 0x02, 0x02, 0x00, 0x00, 0x0c];
        expected.extend_from_slice(br#"{"status":1}"#);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn mosn_init_decodes_from_literal_bytes() {
        let payload = br#"{"cluster_name":"test_c1","weight":10,"host_name":"test100","credential_policy":"","credential":"","extra":null}"#;
        let mut bytes = vec![0x20, 0x88, 0x01, 0x01, 0x01, 0x00];
        bytes.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        bytes.extend_from_slice(payload);
        let Decoded::Frame(Frame::Init(init), used) = decode(&bytes, MAX).unwrap() else {
            panic!("expected an init frame");
        };
        assert_eq!(used, bytes.len());
        assert_eq!(init.cluster_name, "test_c1");
        assert_eq!(init.weight, 10);
        assert_eq!(init.host_name, "test100");
        assert!(init.ringtun().is_none());
        // And we write the same bytes MOSN's Go encoder does.
        assert_eq!(encode_to_vec(&Frame::Init(init)).unwrap(), bytes);
    }

    #[test]
    fn mosn_graceful_close_round_trips_without_ringtun_fields() {
        let frame = Frame::GracefulClose(GracefulCloseOnewayRequest {
            addresses: vec!["10.0.0.1:5000".into()],
            cluster_name: "c".into(),
            connection_ids: vec![],
        });
        let bytes = encode_to_vec(&frame).unwrap();
        assert_eq!(&bytes[..6], &[0x20, 0x88, 0x01, 0x03, 0x01, 0x00]);
        assert_eq!(
            &bytes[8..],
            br#"{"addresses":["10.0.0.1:5000"],"cluster_name":"c"}"#
        );
    }

    #[test]
    fn ringtun_extension_is_carried_in_extra() {
        let init = ConnectionInitInfo {
            cluster_name: "edge-web".into(),
            weight: 3,
            host_name: "edge-01".into(),
            credential_policy: "token".into(),
            credential: Secret::new("s3cret"),
            extra: Some(InitExtra {
                ringtun: Some(RingtunInit {
                    version: 1,
                    role: Role::Data,
                    agent_id: "a1".into(),
                    max_connection_num: None,
                }),
                other: Default::default(),
            }),
        };
        let bytes = encode_to_vec(&Frame::Init(init.clone())).unwrap();
        let text = std::str::from_utf8(&bytes[8..]).unwrap();
        assert!(text.contains(r#""extra":{"ringtun":{"version":1,"role":"data","agent_id":"a1"}}"#));
        assert_eq!(
            decode(&bytes, MAX).unwrap(),
            Decoded::Frame(Frame::Init(init), bytes.len())
        );
    }

    #[test]
    fn session_start_leaves_following_raw_bytes_alone() {
        let mut bytes = encode_to_vec(&Frame::SessionStart(SessionStart {
            session_id: 7,
            client_addr: "127.0.0.1:5555".into(),
            frontend_addr: None,
            protocol: Default::default(),
        }))
        .unwrap();
        let frame_len = bytes.len();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        match decode(&bytes, MAX).unwrap() {
            Decoded::Frame(Frame::SessionStart(s), used) => {
                assert_eq!(s.session_id, 7);
                assert_eq!(used, frame_len);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn session_start_frontend_addr_is_optional_both_ways() {
        let old = encode_to_vec(&Frame::SessionStart(SessionStart {
            session_id: 1,
            client_addr: "[::1]:9".into(),
            frontend_addr: None,
            protocol: Default::default(),
        }))
        .unwrap();
        assert_eq!(&old[8..], br#"{"session_id":1,"client_addr":"[::1]:9"}"#);
        let new = br#"{"session_id":1,"client_addr":"[::1]:9","frontend_addr":"[::1]:80"}"#;
        let mut bytes = vec![0x20, 0x88, 0x01, 0x10, 0x01, 0x00, 0x00, new.len() as u8];
        bytes.extend_from_slice(new);
        match decode(&bytes, MAX).unwrap() {
            Decoded::Frame(Frame::SessionStart(s), _) => {
                assert_eq!(s.frontend_addr.as_deref(), Some("[::1]:80"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_udp_session_start_says_so_and_a_tcp_one_is_unchanged() {
        let udp = encode_to_vec(&Frame::SessionStart(SessionStart {
            session_id: 1,
            client_addr: "[::1]:9".into(),
            frontend_addr: None,
            protocol: crate::protocol::TransportProtocol::Udp,
        }))
        .unwrap();
        assert_eq!(
            &udp[8..],
            br#"{"session_id":1,"client_addr":"[::1]:9","protocol":"udp"}"#
        );
        match decode(&udp, MAX).unwrap() {
            Decoded::Frame(Frame::SessionStart(s), _) => {
                assert_eq!(s.protocol, crate::protocol::TransportProtocol::Udp)
            }
            other => panic!("unexpected {other:?}"),
        }
        let tcp = br#"{"session_id":1,"client_addr":"[::1]:9","protocol":"tcp"}"#;
        let mut bytes = vec![0x20, 0x88, 0x01, 0x10, 0x01, 0x00, 0x00, tcp.len() as u8];
        bytes.extend_from_slice(tcp);
        match decode(&bytes, MAX).unwrap() {
            Decoded::Frame(Frame::SessionStart(s), _) => assert!(s.protocol.is_tcp()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn every_prefix_needs_more() {
        let bytes = encode_to_vec(&Frame::Ping(Ping { seq: 42 })).unwrap();
        for cut in 0..bytes.len() {
            match decode(&bytes[..cut], MAX).unwrap() {
                Decoded::NeedMore(n) => assert!(n >= 1 && cut + n <= bytes.len().max(HEADER_LEN)),
                other => panic!("prefix of {cut} bytes gave {other:?}"),
            }
        }
    }

    #[test]
    fn hostile_headers_are_errors() {
        assert_eq!(
            decode(b"GET / HTTP/1.1", MAX),
            Err(DecodeError::WrongMagic([b'G', b'E']))
        );
        assert!(matches!(
            decode(&[0x21], MAX),
            Err(DecodeError::WrongMagic(_))
        ));
        assert_eq!(
            decode(&[0x20, 0x88, 0x02], MAX),
            Err(DecodeError::UnsupportedVersion(2))
        );
        assert_eq!(
            decode(&[0x20, 0x88, 0x01, 0x7f], MAX),
            Err(DecodeError::UnknownFlag(0x7f))
        );
        assert!(matches!(
            decode(&[0x20, 0x88, 0x01, 0x01, 0x02, 0x00, 0x00, 0x02], MAX),
            Err(DecodeError::WrongType { .. })
        ));
        assert_eq!(
            decode(&[0x20, 0x88, 0x01, 0x01, 0x01, 0x00, 0xff, 0xff], 1024),
            Err(DecodeError::PayloadTooLarge {
                len: 65535,
                max_bytes: 1024
            })
        );
        let mut bad_json = vec![0x20, 0x88, 0x01, 0x01, 0x01, 0x00, 0x00, 0x03];
        bad_json.extend_from_slice(b"{x}");
        assert!(matches!(
            decode(&bad_json, MAX),
            Err(DecodeError::BadJson {
                flag: "ConnectionInitInfo",
                ..
            })
        ));
    }

    #[test]
    fn status_meanings() {
        assert_eq!(
            Status::CLUSTER_NOT_EXIST.meaning(),
            "cluster does not exist"
        );
        assert_eq!(Status(99).meaning(), "unrecognised status");
    }
}

//! Property tests: every frame and every PROXY header round-trips, and no byte string makes
//! either decoder panic.

use proptest::prelude::*;

use super::*;
use crate::secret::Secret;

fn text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[ -~é中\"\\\\]{0,24}").expect("valid regex")
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Data), Just(Role::Aside)]
}

fn init() -> impl Strategy<Value = ConnectionInitInfo> {
    (
        text(),
        any::<i64>(),
        text(),
        text(),
        text(),
        proptest::option::of((role(), text(), proptest::option::of(any::<u32>()))),
    )
        .prop_map(
            |(cluster, weight, host, policy, cred, ext)| ConnectionInitInfo {
                cluster_name: cluster,
                weight,
                host_name: host,
                credential_policy: policy,
                credential: Secret::new(cred),
                extra: ext.map(|(role, agent_id, max)| InitExtra {
                    ringtun: Some(RingtunInit {
                        version: 1,
                        role,
                        agent_id,
                        max_connection_num: max,
                    }),
                    other: Default::default(),
                }),
            },
        )
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        init().prop_map(Frame::Init),
        (
            any::<i64>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(s, c, h, v)| Frame::InitResponse(ConnectionInitResponse {
                status: Status(s),
                connection_id: c,
                heartbeat_interval_ms: h,
                extension_version: v,
            })),
        (
            proptest::collection::vec(text(), 0..4),
            text(),
            proptest::collection::vec(any::<u64>(), 0..4)
        )
            .prop_map(
                |(a, c, ids)| Frame::GracefulClose(GracefulCloseOnewayRequest {
                    addresses: a,
                    cluster_name: c,
                    connection_ids: ids,
                })
            ),
        (
            any::<u64>(),
            text(),
            proptest::option::of(text()),
            any::<bool>()
        )
            .prop_map(|(id, addr, front, udp)| {
                Frame::SessionStart(SessionStart {
                    session_id: id,
                    client_addr: addr,
                    frontend_addr: front,
                    protocol: if udp {
                        TransportProtocol::Udp
                    } else {
                        TransportProtocol::Tcp
                    },
                })
            }),
        any::<u64>().prop_map(|seq| Frame::Ping(Ping { seq })),
        any::<u64>().prop_map(|seq| Frame::Pong(Pong { seq })),
        (text(), any::<i64>()).prop_map(|(c, w)| Frame::WeightUpdate(WeightUpdate {
            cluster_name: c,
            weight: w
        })),
        any::<u64>().prop_map(|g| Frame::Drain(Drain { grace_ms: g })),
        (text(), any::<u32>()).prop_map(|(c, n)| Frame::PoolRequest(PoolRequest {
            cluster_name: c,
            count: n
        })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_frame_round_trips(f in frame(), tail in proptest::collection::vec(any::<u8>(), 0..16)) {
        let mut bytes = encode_to_vec(&f).expect("encodes");
        let len = bytes.len();
        bytes.extend_from_slice(&tail);
        prop_assert_eq!(decode(&bytes, MAX_WIRE_PAYLOAD_BYTES), Ok(Decoded::Frame(f, len)));
    }

    #[test]
    fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        match decode(&bytes, 128) {
            Ok(Decoded::NeedMore(n)) => prop_assert!(n >= 1),
            Ok(Decoded::Frame(_, used)) => prop_assert!(used <= bytes.len()),
            Err(_) => {}
        }
    }

    #[test]
    fn valid_header_with_random_payload_never_panics(
        flag in proptest::sample::select(Flag::ALL.to_vec()),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = vec![0x20, 0x88, 0x01, flag.byte()];
        bytes.extend_from_slice(if flag.is_response() { &TYPE_RESPONSE } else { &TYPE_REQUEST });
        bytes.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&payload);
        let _ = decode(&bytes, MAX_WIRE_PAYLOAD_BYTES);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The `frame_decoder` fuzz target's harness on random bytes.
    #[test]
    fn fuzz_harness_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        harness::decode_round_trip(&bytes);
    }

    /// ... and on streams of valid frames with random bytes after them.
    #[test]
    fn fuzz_harness_on_valid_frames(
        limit in any::<u8>(),
        frames in proptest::collection::vec(frame(), 1..4),
        tail in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut data = vec![limit];
        for f in &frames {
            data.extend(encode_to_vec(f).expect("encodes"));
        }
        data.extend_from_slice(&tail);
        harness::decode_round_trip(&data);
    }
}

mod proxy_header {
    use std::net::{IpAddr, SocketAddr};

    use proptest::prelude::*;

    use crate::protocol::harness;
    use crate::protocol::proxy::*;

    fn endpoints() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        prop_oneof![
            (
                any::<[u8; 4]>(),
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<u16>()
            )
                .prop_map(|(s, d, sp, dp)| (
                    SocketAddr::new(IpAddr::from(s), sp),
                    SocketAddr::new(IpAddr::from(d), dp)
                )),
            (
                any::<[u8; 16]>(),
                any::<[u8; 16]>(),
                any::<u16>(),
                any::<u16>()
            )
                .prop_map(|(s, d, sp, dp)| (
                    SocketAddr::new(IpAddr::from(s), sp),
                    SocketAddr::new(IpAddr::from(d), dp)
                )),
        ]
    }

    fn header() -> impl Strategy<Value = ProxyHeader> {
        prop_oneof![
            Just(ProxyHeader::Local),
            endpoints().prop_map(|(source, destination)| ProxyHeader::Proxy {
                source,
                destination
            }),
        ]
    }

    fn version() -> impl Strategy<Value = ProxyVersion> {
        prop_oneof![Just(ProxyVersion::V1), Just(ProxyVersion::V2)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn every_header_round_trips(
            h in header(),
            v in version(),
            tail in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut bytes = encode_proxy_header(v, &h);
            let len = bytes.len();
            prop_assert!(len <= V1_MAX_LEN);
            bytes.extend_from_slice(&tail);
            prop_assert_eq!(
                decode_proxy_header(&bytes, DEFAULT_MAX_PROXY_HEADER_BYTES),
                Ok(ProxyDecoded::Header(h, v, len))
            );
        }

        #[test]
        fn any_bytes_give_a_header_need_more_or_an_error(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            max in 0usize..4096,
        ) {
            match decode_proxy_header(&bytes, max) {
                Ok(ProxyDecoded::NeedMore(n)) => prop_assert!(n >= 1),
                Ok(ProxyDecoded::Header(_, _, used)) => prop_assert!(used <= bytes.len()),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        /// Signatures followed by random bytes reach the deeper paths of both versions.
        #[test]
        fn valid_starts_with_random_bodies_never_panic(
            v2 in any::<bool>(),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = if v2 { V2_SIGNATURE.to_vec() } else { b"PROXY ".to_vec() };
            bytes.extend_from_slice(&body);
            let _ = decode_proxy_header(&bytes, DEFAULT_MAX_PROXY_HEADER_BYTES);
        }

        /// The `proxy_header` fuzz target's harness on random bytes ...
        #[test]
        fn fuzz_harness_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            harness::proxy_header_round_trip(&bytes);
        }

        /// ... and on valid headers with random bytes after them.
        #[test]
        fn fuzz_harness_on_valid_headers(
            limit in any::<u8>(),
            h in header(),
            v in version(),
            tail in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut data = vec![limit];
            data.extend(encode_proxy_header(v, &h));
            data.extend_from_slice(&tail);
            harness::proxy_header_round_trip(&data);
        }

        /// v2 headers with TLVs and random version/family bytes.
        #[test]
        fn fuzz_harness_on_v2_shapes(
            ver_cmd in prop_oneof![Just(0x20u8), Just(0x21u8), any::<u8>()],
            fam in prop_oneof![Just(0x11u8), Just(0x21u8), Just(0x00u8), any::<u8>()],
            body in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut data = vec![255];
            data.extend_from_slice(&V2_SIGNATURE);
            data.extend_from_slice(&[ver_cmd, fam]);
            data.extend_from_slice(&(body.len() as u16).to_be_bytes());
            data.extend_from_slice(&body);
            harness::proxy_header_round_trip(&data);
        }
    }
}

mod session_records {
    //! Session records: any stream of records decodes to what was encoded, fed in any pieces,
    //! and random bytes never panic the decoder.
    use proptest::prelude::*;

    use crate::protocol::harness;
    use crate::protocol::session_frame::*;

    fn record() -> impl Strategy<Value = (u8, Vec<u8>)> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..300).prop_map(|p| (KIND_DATA, p)),
            Just((KIND_END, Vec::new())),
            (any::<u8>(), "[ -~é]{0,40}")
                .prop_map(|(r, t)| (KIND_ABORT, [vec![r], t.into_bytes()].concat())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The `session_records` fuzz target's harness on random bytes.
        #[test]
        fn fuzz_harness_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            harness::session_records_round_trip(&bytes);
        }

        /// Chunks then a terminal decode, in any pieces, to the same payload and terminal.
        #[test]
        fn records_round_trip_in_pieces(
            chunks in proptest::collection::vec(record(), 0..6),
            piece in 1usize..64,
        ) {
            let mut wire = Vec::new();
            let mut payload = Vec::new();
            let mut terminal = None;
            for (kind, body) in &chunks {
                match *kind {
                    KIND_DATA => {
                        encode_data(body, &mut wire);
                        payload.extend_from_slice(body);
                    }
                    KIND_END => {
                        encode_end(&mut wire);
                        terminal = Some(None);
                        break;
                    }
                    _ => {
                        let text = String::from_utf8_lossy(&body[1..]).into_owned();
                        let reason = AbortReason::from_byte(body[0]);
                        encode_abort(reason, &text, &mut wire);
                        terminal = Some(Some(Abort { reason, text }));
                        break;
                    }
                }
            }
            let mut d = RecordDecoder::default();
            let mut got = Vec::new();
            let mut got_terminal = None;
            let mut pending = Vec::new();
            for part in wire.chunks(piece) {
                pending.extend_from_slice(part);
                loop {
                    match d.decode(&pending).expect("valid records") {
                        Step::NeedMore => break,
                        Step::Payload(p, used) => {
                            got.extend_from_slice(p);
                            pending.drain(..used);
                        }
                        Step::End(used) => {
                            got_terminal = Some(None);
                            pending.drain(..used);
                        }
                        Step::Abort(a, used) => {
                            got_terminal = Some(Some(a));
                            pending.drain(..used);
                        }
                    }
                }
            }
            prop_assert_eq!(got, payload);
            prop_assert_eq!(got_terminal, terminal);
            prop_assert!(pending.is_empty());
        }
    }
}

mod datagram {
    use proptest::prelude::*;

    use crate::protocol::datagram::*;
    use crate::protocol::harness;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Datagrams framed one after another decode back to themselves, in order, whatever
        /// the split of the stream into reads.
        #[test]
        fn datagrams_round_trip_across_any_split(
            datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cut in any::<usize>(),
        ) {
            let mut stream = Vec::new();
            for d in &datagrams {
                encode_datagram(d, &mut stream).expect("fits");
            }
            let cut = if stream.is_empty() { 0 } else { cut % stream.len() };
            let mut buf = stream[..cut].to_vec();
            let mut rest = &stream[cut..];
            let mut got = Vec::new();
            loop {
                match decode_datagram(&buf, MAX_DATAGRAM_BYTES).expect("valid") {
                    DatagramDecoded::Datagram { used } => {
                        got.push(buf[DATAGRAM_HEADER_LEN..used].to_vec());
                        buf.drain(..used);
                    }
                    DatagramDecoded::NeedMore(n) => {
                        prop_assert!(n >= 1);
                        if rest.is_empty() {
                            break;
                        }
                        buf.extend_from_slice(rest);
                        rest = &[];
                    }
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, datagrams);
        }

        /// The `datagram_decoder` fuzz target's harness on random bytes.
        #[test]
        fn fuzz_harness_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            harness::datagram_round_trip(&bytes);
            harness::flow_record_round_trip(&bytes);
        }

        /// Datagrams as records on a framed connection, then END, decode back to themselves in
        /// order and whole, whatever the split of the stream into reads.
        #[test]
        fn datagram_records_round_trip_across_any_split(
            datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
            cut in any::<usize>(),
        ) {
            use crate::protocol::session_frame::{encode_end, DATA_HEADER_LEN};
            let mut stream = Vec::new();
            for d in &datagrams {
                encode_datagram_record(d, &mut stream).expect("fits");
            }
            encode_end(&mut stream);
            stream.push(0x20); // the next frame's first byte: not the flow's
            let cut = cut % stream.len();
            let mut buf = stream[..cut].to_vec();
            let mut rest = &stream[cut..];
            let mut got = Vec::new();
            loop {
                match decode_flow_record(&buf, MAX_DATAGRAM_BYTES).expect("valid") {
                    FlowRecord::Datagram { used } => {
                        got.push(buf[DATA_HEADER_LEN..used].to_vec());
                        buf.drain(..used);
                    }
                    FlowRecord::End { used } => {
                        buf.drain(..used);
                        break;
                    }
                    FlowRecord::Abort { .. } => prop_assert!(false, "no abort was sent"),
                    FlowRecord::NeedMore(n) => {
                        prop_assert!(n >= 1);
                        prop_assert!(!rest.is_empty());
                        buf.extend_from_slice(rest);
                        rest = &[];
                    }
                }
            }
            buf.extend_from_slice(rest);
            prop_assert_eq!(buf, vec![0x20]);
            prop_assert_eq!(got, datagrams);
        }
    }
}

//! Property tests: every frame round-trips, and no byte string makes the decoder panic.

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
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(s, c, h)| Frame::InitResponse(ConnectionInitResponse {
                status: Status(s),
                connection_id: c,
                heartbeat_interval_ms: h,
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
        (any::<u64>(), text()).prop_map(|(id, addr)| Frame::SessionStart(SessionStart {
            session_id: id,
            client_addr: addr
        })),
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

//! Property tests of the server handshake path: the same harness as the `server_handshake` fuzz
//! target, on random bytes and on valid inits (every policy, right and wrong credentials, hmac
//! replay and skew) split into random reads and followed by random bytes.

use proptest::prelude::*;

use super::auth::reason;
use super::harness::{server_handshake, NOW};
use crate::credential::{self, HmacSubject, NONCE_LEN};
use crate::protocol::{
    encode_to_vec, ConnectionInitInfo, Frame, InitExtra, RingtunInit, Role, Status,
    EXTENSION_VERSION,
};
use crate::secret::Secret;

/// What credential an init carries.
#[derive(Clone, Copy, Debug)]
enum Cred {
    None,
    RightToken,
    WrongToken,
    RightHmac,
    WrongSecretHmac,
    SkewedHmac,
    Garbage,
}

fn cred() -> impl Strategy<Value = Cred> {
    prop_oneof![
        Just(Cred::None),
        Just(Cred::RightToken),
        Just(Cred::WrongToken),
        Just(Cred::RightHmac),
        Just(Cred::WrongSecretHmac),
        Just(Cred::SkewedHmac),
        Just(Cred::Garbage),
    ]
}

fn init_for(cluster: &str, host: &str, agent: &str, c: Cred, nonce: u8) -> ConnectionInitInfo {
    let subject = HmacSubject {
        cluster,
        host_name: host,
        agent_id: agent,
    };
    let hmac = |secret: &str, ts: u64| {
        credential::make(&Secret::new(secret), &subject, ts, [nonce; NONCE_LEN]).unwrap_or_default()
    };
    let credential = match c {
        Cred::None => Secret::default(),
        Cred::RightToken => Secret::new("t2"),
        Cred::WrongToken => Secret::new("t3"),
        Cred::RightHmac => hmac("s1", NOW - 10),
        Cred::WrongSecretHmac => hmac("s2", NOW),
        Cred::SkewedHmac => hmac("s1", NOW - 301),
        Cred::Garbage => Secret::new("v1:::"),
    };
    ConnectionInitInfo {
        cluster_name: cluster.into(),
        weight: 10,
        host_name: host.into(),
        credential_policy: String::new(),
        credential,
        extra: Some(InitExtra {
            ringtun: Some(RingtunInit {
                version: EXTENSION_VERSION,
                role: Role::Data,
                agent_id: agent.into(),
                max_connection_num: None,
            }),
            other: Default::default(),
        }),
    }
}

/// The status (and, for hmac, the reason) the harness must decide.
fn expected(cluster: &str, c: Cred) -> (Status, Option<&'static str>) {
    match (cluster, c) {
        ("open", _) => (Status::SUCCESS, None),
        ("tok", Cred::RightToken) => (Status::SUCCESS, None),
        ("tok", _) => (Status::AUTH_FAILED, None),
        ("mac", Cred::RightHmac) => (Status::SUCCESS, None),
        ("mac", Cred::None) => (Status::AUTH_FAILED, Some(reason::NO_CREDENTIAL)),
        ("mac", Cred::SkewedHmac) => (Status::AUTH_FAILED, Some(reason::HMAC_SKEW)),
        ("mac", Cred::WrongSecretHmac) => (Status::AUTH_FAILED, Some(reason::HMAC_MISMATCH)),
        ("mac", _) => (Status::AUTH_FAILED, Some(reason::HMAC_MALFORMED)),
        _ => (Status::CLUSTER_NOT_EXIST, None),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn any_bytes_go_through_the_handshake_without_panic(
        data in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        server_handshake(&data);
    }

    #[test]
    fn bytes_after_a_valid_header_go_through_without_panic(
        chunk in any::<u8>(),
        payload in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut data = vec![chunk, 0x20, 0x88, 0x01, 0x01, 0x01, 0x00];
        data.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        data.extend_from_slice(&payload);
        server_handshake(&data);
    }

    #[test]
    fn valid_inits_are_decided_by_the_cluster_policy(
        cluster in prop_oneof![Just("open"), Just("tok"), Just("mac"), Just("nope")],
        host in "[a-z0-9.-]{1,20}",
        agent in "[a-f0-9]{0,16}",
        c in cred(),
        nonce in any::<u8>(),
        chunk in any::<u8>(),
        tail in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let init = init_for(cluster, &host, &agent, c, nonce);
        let mut data = vec![chunk];
        data.extend(encode_to_vec(&Frame::Init(init)).expect("encodes"));
        data.extend_from_slice(&tail);
        let decisions = server_handshake(&data);
        prop_assert!(!decisions.is_empty());
        let (status, why) = expected(cluster, c);
        prop_assert_eq!(decisions[0].status, status);
        if let Some(why) = why {
            prop_assert_eq!(decisions[0].reason, why);
        }
    }

    #[test]
    fn the_same_hmac_init_twice_is_a_replay(
        host in "[a-z0-9.-]{1,20}",
        nonce in any::<u8>(),
        chunk in any::<u8>(),
    ) {
        let frame = encode_to_vec(&Frame::Init(init_for("mac", &host, "a1", Cred::RightHmac, nonce)))
            .expect("encodes");
        let mut data = vec![chunk];
        data.extend_from_slice(&frame);
        data.extend_from_slice(&frame);
        let decisions = server_handshake(&data);
        prop_assert_eq!(decisions.len(), 2);
        prop_assert_eq!(decisions[0].status, Status::SUCCESS);
        prop_assert_eq!(decisions[1].status, Status::AUTH_FAILED);
        prop_assert_eq!(decisions[1].reason, reason::HMAC_REPLAY);
    }
}

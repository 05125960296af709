//! Deciding a handshake: does the cluster exist, and does the agent's credential satisfy the
//! policy the *server's* cluster config names? Pure: no I/O, no clock (the caller passes the
//! time), no logging (the caller logs the [`Decision`]'s reason, never a credential).

use super::replay::{Insert, ReplayCache, ReplayKey};
use crate::config::{ClusterConfig, CredentialPolicy};
use crate::credential::{self, HmacSubject};
use crate::protocol::{ConnectionInitInfo, Status};

/// How far an `hmac` credential's timestamp may be from the server's clock, in seconds.
pub const HMAC_MAX_SKEW_SECS: u64 = 300;

/// The answer to an init and, for a refusal, why (for the log; never contains a credential).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub status: Status,
    pub reason: &'static str,
}

impl Decision {
    fn new(status: Status, reason: &'static str) -> Self {
        Self { status, reason }
    }
}

/// The reasons [`decide`] gives (also listed in docs/troubleshooting.md).
pub mod reason {
    pub const OK: &str = "ok";
    pub const NO_CLUSTER: &str = "no such cluster";
    pub const OTHER_POLICY: &str = "the agent announced another credential policy";
    pub const NO_VALIDATOR: &str =
        "the MOSN agent announced a credential policy this server has no validator for";
    pub const NO_CREDENTIAL: &str = "no credential sent";
    pub const TOKEN_MISMATCH: &str = "the token matches none of the cluster's credentials";
    pub const HMAC_MALFORMED: &str = "the hmac credential is malformed";
    pub const HMAC_SKEW: &str = "the hmac timestamp is more than 300 s off the server's clock";
    pub const HMAC_MISMATCH: &str =
        "the hmac does not match (wrong secret, or cluster, host_name or agent id altered)";
    pub const HMAC_REPLAY: &str = "the hmac credential was already used (replay)";
    pub const HMAC_REPLAY_CACHE_FULL: &str =
        "the hmac replay cache is full (tunnel_listener.hmac_replay_cache_entries): refused rather than forget a live credential";
}

/// The status to answer `init` with, given the cluster it names (None: no such cluster), the
/// current time in unix seconds and the replay cache of `hmac` credentials (an accepted `hmac`
/// credential is recorded in it).
///
/// A legacy (MOSN) agent is answered in MOSN's order where that does not weaken the cluster's
/// rule: a policy this server has no validator for (anything but `token` and `hmac`) is 3
/// before the cluster is looked up, as MOSN's server does (filter.go:76-90). Deliberate
/// differences: a cluster that requires a credential still requires it from an agent that
/// announces no policy (MOSN skips authentication then), and a policy-less cluster accepts an
/// agent announcing `token` or `hmac` without checking anything (there is nothing to check).
pub fn decide(
    cluster: Option<&ClusterConfig>,
    init: &ConnectionInitInfo,
    now_secs: u64,
    replay: &mut ReplayCache,
) -> Decision {
    let announced = init.credential_policy.as_str();
    let legacy = init.ringtun().is_none();
    let known = |p: &str| {
        [CredentialPolicy::Token, CredentialPolicy::Hmac]
            .iter()
            .any(|k| k.name() == p)
    };
    if legacy && !announced.is_empty() && !known(announced) {
        return Decision::new(Status::VALIDATOR_NOT_FOUND, reason::NO_VALIDATOR);
    }
    let Some(cluster) = cluster else {
        return Decision::new(Status::CLUSTER_NOT_EXIST, reason::NO_CLUSTER);
    };
    let required = cluster.credential_policy;
    if required == CredentialPolicy::None {
        // The server decides: an agent announcing a policy to a cluster without one is welcome.
        return Decision::new(Status::SUCCESS, reason::OK);
    }
    if !announced.is_empty() && announced != required.name() {
        return Decision::new(Status::VALIDATOR_NOT_FOUND, reason::OTHER_POLICY);
    }
    let given = init.credential.expose();
    if given.is_empty() {
        return Decision::new(Status::AUTH_FAILED, reason::NO_CREDENTIAL);
    }
    match required {
        CredentialPolicy::Token => {
            // Compare against every credential so timing does not reveal which one matched.
            let matched = cluster
                .credentials
                .iter()
                .fold(false, |acc, c| c.constant_time_eq(given) | acc);
            if matched {
                Decision::new(Status::SUCCESS, reason::OK)
            } else {
                Decision::new(Status::AUTH_FAILED, reason::TOKEN_MISMATCH)
            }
        }
        CredentialPolicy::Hmac => decide_hmac(cluster, init, now_secs, replay),
        CredentialPolicy::None => Decision::new(Status::SUCCESS, reason::OK),
    }
}

fn decide_hmac(
    cluster: &ClusterConfig,
    init: &ConnectionInitInfo,
    now_secs: u64,
    replay: &mut ReplayCache,
) -> Decision {
    let refused = |why| Decision::new(Status::AUTH_FAILED, why);
    let Ok(cred) = credential::parse(init.credential.expose()) else {
        return refused(reason::HMAC_MALFORMED);
    };
    if cred.timestamp.abs_diff(now_secs) > HMAC_MAX_SKEW_SECS {
        return refused(reason::HMAC_SKEW);
    }
    let subject = HmacSubject {
        cluster: &init.cluster_name,
        host_name: &init.host_name,
        agent_id: init.ringtun().map_or("", |e| e.agent_id.as_str()),
    };
    // Every secret is tried so timing does not reveal which one matched.
    let matched = cluster.credentials.iter().fold(false, |acc, secret| {
        credential::verify(secret, &subject, &cred) | acc
    });
    if !matched {
        return refused(reason::HMAC_MISMATCH);
    }
    // Only verified values are remembered, so garbage cannot flush the cache. A value is refused
    // by the skew check once its timestamp is more than the skew in the past: forget it then.
    let mut key: ReplayKey = [0; 16];
    key.copy_from_slice(&cred.mac[..16]);
    let expires_at = cred.timestamp.saturating_add(HMAC_MAX_SKEW_SECS + 1);
    match replay.insert_new(key, now_secs, expires_at) {
        Insert::New => Decision::new(Status::SUCCESS, reason::OK),
        Insert::Replay => refused(reason::HMAC_REPLAY),
        // Not an authentication failure: the agent retries with backoff (status 0).
        Insert::Full => Decision::new(Status::UNKNOWN_FAILURE, reason::HMAC_REPLAY_CACHE_FULL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::NONCE_LEN;
    use crate::protocol::{InitExtra, RingtunInit, Role, EXTENSION_VERSION};
    use crate::secret::Secret;

    const NOW: u64 = 1_700_000_000;

    fn cluster(policy: CredentialPolicy, creds: &[&str]) -> ClusterConfig {
        let mut c: ClusterConfig = serde_json::from_str(r#"{"name":"c"}"#).unwrap();
        c.credential_policy = policy;
        c.credentials = creds.iter().map(|c| Secret::new(*c)).collect();
        c
    }

    fn init(policy: &str, cred: &str) -> ConnectionInitInfo {
        ConnectionInitInfo {
            cluster_name: "c".into(),
            host_name: "edge-01".into(),
            credential_policy: policy.into(),
            credential: Secret::new(cred),
            extra: Some(InitExtra {
                ringtun: Some(RingtunInit {
                    version: EXTENSION_VERSION,
                    role: Role::Data,
                    agent_id: "agent-1".into(),
                    max_connection_num: None,
                }),
                other: Default::default(),
            }),
            ..Default::default()
        }
    }

    fn status(cluster: Option<&ClusterConfig>, init: &ConnectionInitInfo) -> Status {
        decide(cluster, init, NOW, &mut ReplayCache::new(16)).status
    }

    /// An hmac init made the way the agent makes it.
    fn hmac_init(secret: &str, timestamp: u64, nonce: u8) -> ConnectionInitInfo {
        let mut i = init("hmac", "");
        let subject = HmacSubject {
            cluster: "c",
            host_name: "edge-01",
            agent_id: "agent-1",
        };
        i.credential = credential::make(
            &Secret::new(secret),
            &subject,
            timestamp,
            [nonce; NONCE_LEN],
        )
        .unwrap();
        i
    }

    #[test]
    fn unknown_cluster_is_status_4() {
        assert_eq!(status(None, &init("", "")), Status::CLUSTER_NOT_EXIST);
    }

    #[test]
    fn open_cluster_accepts_anyone() {
        let c = cluster(CredentialPolicy::None, &[]);
        assert_eq!(status(Some(&c), &init("", "")), Status::SUCCESS);
        assert_eq!(status(Some(&c), &init("token", "x")), Status::SUCCESS);
    }

    #[test]
    fn token_cluster_requires_a_listed_token_even_if_agent_names_no_policy() {
        let c = cluster(CredentialPolicy::Token, &["a", "b"]);
        assert_eq!(status(Some(&c), &init("token", "b")), Status::SUCCESS);
        assert_eq!(status(Some(&c), &init("", "a")), Status::SUCCESS);
        assert_eq!(status(Some(&c), &init("", "")), Status::AUTH_FAILED);
        assert_eq!(
            status(Some(&c), &init("token", "wrong")),
            Status::AUTH_FAILED
        );
    }

    fn legacy(policy: &str, cred: &str) -> ConnectionInitInfo {
        ConnectionInitInfo {
            extra: None,
            ..init(policy, cred)
        }
    }

    #[test]
    fn mosn_agents_get_mosns_order_where_it_does_not_weaken_the_cluster() {
        let open = cluster(CredentialPolicy::None, &[]);
        let token = cluster(CredentialPolicy::Token, &["a"]);
        // No validator of that name: 3, before the cluster (MOSN's order), even on an open
        // cluster; a ringtun agent cannot announce such a policy, and keeps the old answer.
        assert_eq!(
            status(None, &legacy("test", "x")),
            Status::VALIDATOR_NOT_FOUND
        );
        assert_eq!(
            status(Some(&open), &legacy("test", "x")),
            Status::VALIDATOR_NOT_FOUND
        );
        assert_eq!(status(Some(&open), &init("test", "x")), Status::SUCCESS);
        assert_eq!(status(None, &init("test", "x")), Status::CLUSTER_NOT_EXIST);
        // A known validator cannot check anything without the cluster's credentials: 4.
        assert_eq!(
            status(None, &legacy("token", "a")),
            Status::CLUSTER_NOT_EXIST
        );
        // Deliberately not MOSN: a token cluster still requires the token (MOSN: 1).
        assert_eq!(status(Some(&token), &legacy("", "")), Status::AUTH_FAILED);
        assert_eq!(status(Some(&token), &legacy("token", "a")), Status::SUCCESS);
        assert_eq!(status(Some(&open), &legacy("", "")), Status::SUCCESS);
        assert_eq!(status(Some(&open), &legacy("token", "x")), Status::SUCCESS);
    }

    #[test]
    fn other_announced_policy_is_status_3() {
        let c = cluster(CredentialPolicy::Token, &["a"]);
        assert_eq!(
            status(Some(&c), &init("custom", "a")),
            Status::VALIDATOR_NOT_FOUND
        );
        let h = cluster(CredentialPolicy::Hmac, &["a"]);
        assert_eq!(
            status(Some(&h), &init("token", "a")),
            Status::VALIDATOR_NOT_FOUND
        );
    }

    #[test]
    fn hmac_right_secret_is_accepted_with_any_listed_secret() {
        let c = cluster(CredentialPolicy::Hmac, &["old", "new"]);
        let d = decide(
            Some(&c),
            &hmac_init("new", NOW, 1),
            NOW,
            &mut ReplayCache::new(16),
        );
        assert_eq!(d, Decision::new(Status::SUCCESS, reason::OK));
        let d = decide(
            Some(&c),
            &hmac_init("old", NOW, 1),
            NOW,
            &mut ReplayCache::new(16),
        );
        assert_eq!(d.status, Status::SUCCESS);
    }

    #[test]
    fn hmac_wrong_or_missing_or_malformed_is_status_2_with_its_reason() {
        let c = cluster(CredentialPolicy::Hmac, &["s"]);
        let mut cache = ReplayCache::new(16);
        let mut check = |i: &ConnectionInitInfo, why| {
            assert_eq!(
                decide(Some(&c), i, NOW, &mut cache),
                Decision::new(Status::AUTH_FAILED, why)
            );
        };
        check(&hmac_init("wrong", NOW, 1), reason::HMAC_MISMATCH);
        check(&init("hmac", ""), reason::NO_CREDENTIAL);
        check(&init("", ""), reason::NO_CREDENTIAL);
        check(&init("hmac", "s"), reason::HMAC_MALFORMED);
        check(&init("hmac", "v1:x:y:z"), reason::HMAC_MALFORMED);
        // The MAC covers who the agent says it is.
        let mut moved = hmac_init("s", NOW, 1);
        moved.host_name = "edge-02".into();
        check(&moved, reason::HMAC_MISMATCH);
        let mut other_agent = hmac_init("s", NOW, 1);
        if let Some(r) = other_agent.extra.as_mut().and_then(|e| e.ringtun.as_mut()) {
            r.agent_id = "agent-2".into();
        }
        check(&other_agent, reason::HMAC_MISMATCH);
        assert!(cache.is_empty(), "refused values are not remembered");
    }

    #[test]
    fn hmac_replay_is_refused_but_a_new_nonce_in_the_same_second_is_not() {
        let c = cluster(CredentialPolicy::Hmac, &["s"]);
        let mut cache = ReplayCache::new(16);
        let first = hmac_init("s", NOW, 1);
        assert_eq!(
            decide(Some(&c), &first, NOW, &mut cache).status,
            Status::SUCCESS
        );
        assert_eq!(
            decide(Some(&c), &first, NOW + 10, &mut cache),
            Decision::new(Status::AUTH_FAILED, reason::HMAC_REPLAY)
        );
        let second = hmac_init("s", NOW, 2);
        assert_eq!(
            decide(Some(&c), &second, NOW, &mut cache).status,
            Status::SUCCESS
        );
        // Once outside the window the value is refused for skew, and forgotten.
        assert_eq!(
            decide(Some(&c), &first, NOW + 301, &mut cache).reason,
            reason::HMAC_SKEW
        );
    }

    #[test]
    fn a_full_replay_cache_refuses_new_hmac_credentials_and_every_replay_stays_refused() {
        let c = cluster(CredentialPolicy::Hmac, &["s"]);
        let mut cache = ReplayCache::new(4);
        let inits: Vec<_> = (0..4).map(|n| hmac_init("s", NOW, n)).collect();
        for init in &inits {
            assert_eq!(
                decide(Some(&c), init, NOW, &mut cache).status,
                Status::SUCCESS
            );
        }
        // Full of live entries: a new credential is refused (status 0, not an auth failure) ...
        assert_eq!(
            decide(Some(&c), &hmac_init("s", NOW, 99), NOW + 1, &mut cache),
            Decision::new(Status::UNKNOWN_FAILURE, reason::HMAC_REPLAY_CACHE_FULL)
        );
        // ... and every accepted one is still a replay, however many new ones were tried.
        for n in 100..200 {
            decide(Some(&c), &hmac_init("s", NOW, n), NOW + 2, &mut cache);
        }
        for init in &inits {
            assert_eq!(
                decide(Some(&c), init, NOW + 3, &mut cache),
                Decision::new(Status::AUTH_FAILED, reason::HMAC_REPLAY)
            );
        }
        // Room comes back once the entries are out of the window.
        assert_eq!(
            decide(
                Some(&c),
                &hmac_init("s", NOW + 301, 7),
                NOW + 301,
                &mut cache
            )
            .status,
            Status::SUCCESS
        );
    }

    #[test]
    fn hmac_clock_skew_over_300_s_is_refused_either_way() {
        let c = cluster(CredentialPolicy::Hmac, &["s"]);
        let mut cache = ReplayCache::new(16);
        for (ts, ok) in [
            (NOW - 300, true),
            (NOW + 300, true),
            (NOW - 301, false),
            (NOW + 301, false),
            (0, false),
        ] {
            let d = decide(Some(&c), &hmac_init("s", ts, 9), NOW, &mut cache);
            if ok {
                assert_eq!(d.status, Status::SUCCESS, "{ts}");
            } else {
                assert_eq!(
                    d,
                    Decision::new(Status::AUTH_FAILED, reason::HMAC_SKEW),
                    "{ts}"
                );
            }
        }
    }
}

//! The credential an agent puts in its init, made at dial time: the configured secret as is
//! (`token`, or no policy), or a fresh `hmac` credential (timestamp, random nonce, MAC keyed by
//! the secret) so that every connection sends a different value.
//!
//! Never logs, and never puts the secret itself on the wire under `hmac`.

use crate::credential::{self, HmacSubject, NONCE_LEN};
use crate::secret::Secret;

/// The credential for an init announcing `policy`, made now from `secret`.
///
/// Under `hmac` a secret that cannot be used (cannot happen for valid config) yields an empty
/// credential, which the server refuses with status 2 and the agent retries with backoff.
pub fn init_credential(policy: &str, secret: Option<&Secret>, subject: &HmacSubject<'_>) -> Secret {
    match (policy, secret) {
        ("hmac", Some(secret)) => {
            credential::make(secret, subject, crate::credential::unix_now_secs(), nonce())
                .unwrap_or_default()
        }
        (_, secret) => secret.cloned().unwrap_or_default(),
    }
}

/// 16 random bytes from the TLS crypto provider's CSPRNG (a fast PRNG should it ever fail: the
/// nonce must be unique, not secret).
fn nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    let provider = rustls::crypto::ring::default_provider();
    if provider.secure_random.fill(&mut nonce).is_err() {
        nonce = fastrand::u128(..).to_le_bytes();
    }
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECT: HmacSubject<'static> = HmacSubject {
        cluster: "c",
        host_name: "h",
        agent_id: "a",
    };

    #[test]
    fn token_sends_the_secret_and_hmac_does_not() {
        let secret = Secret::new("hunter2");
        assert_eq!(
            init_credential("token", Some(&secret), &SUBJECT).expose(),
            "hunter2"
        );
        assert_eq!(
            init_credential("", Some(&secret), &SUBJECT).expose(),
            "hunter2"
        );
        assert!(init_credential("token", None, &SUBJECT).is_empty());
        let h = init_credential("hmac", Some(&secret), &SUBJECT);
        assert!(h.expose().starts_with("v1:"));
        assert!(!h.expose().contains("hunter2"));
        assert!(init_credential("hmac", None, &SUBJECT).is_empty());
    }

    #[test]
    fn two_hmac_credentials_in_the_same_second_differ() {
        let secret = Secret::new("s");
        let a = init_credential("hmac", Some(&secret), &SUBJECT);
        let b = init_credential("hmac", Some(&secret), &SUBJECT);
        assert_ne!(a, b);
    }

    /// What this side makes, the server's `decide` accepts (the two sides share nothing else).
    #[test]
    fn hmac_from_this_side_is_accepted_by_the_server() {
        use crate::control::auth::decide;
        use crate::control::replay::ReplayCache;
        use crate::protocol::{
            ConnectionInitInfo, InitExtra, RingtunInit, Role, Status, EXTENSION_VERSION,
        };
        let mut c: crate::config::ClusterConfig =
            serde_json::from_str(r#"{"name":"c"}"#).expect("cluster");
        c.credential_policy = crate::config::CredentialPolicy::Hmac;
        c.credentials = vec![Secret::new("s")];
        let subject = HmacSubject {
            cluster: "c",
            host_name: "edge-01",
            agent_id: "agent-1",
        };
        let init = ConnectionInitInfo {
            cluster_name: "c".into(),
            host_name: "edge-01".into(),
            credential_policy: "hmac".into(),
            credential: init_credential("hmac", Some(&Secret::new("s")), &subject),
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
        };
        let now = crate::credential::unix_now_secs();
        let decision = decide(Some(&c), &init, now, &mut ReplayCache::new(4));
        assert_eq!(decision.status, Status::SUCCESS);
    }
}

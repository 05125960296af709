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
}

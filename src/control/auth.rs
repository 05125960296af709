//! Deciding a handshake: does the cluster exist, and does the agent's credential satisfy the
//! policy the *server's* cluster config names? Pure: no I/O.

use crate::config::{ClusterConfig, CredentialPolicy};
use crate::protocol::{ConnectionInitInfo, Status};

/// The status to answer `init` with, given the cluster it names (None: no such cluster).
pub fn decide(cluster: Option<&ClusterConfig>, init: &ConnectionInitInfo) -> Status {
    let Some(cluster) = cluster else {
        return Status::CLUSTER_NOT_EXIST;
    };
    let required = cluster.credential_policy;
    if required == CredentialPolicy::None {
        // The server decides: an agent announcing a policy to a cluster without one is welcome.
        return Status::SUCCESS;
    }
    let announced = init.credential_policy.as_str();
    if !announced.is_empty() && announced != required.name() {
        return Status::VALIDATOR_NOT_FOUND;
    }
    match required {
        CredentialPolicy::Token => {
            let given = init.credential.expose();
            // Compare against every credential so timing does not reveal which one matched.
            let matched = cluster
                .credentials
                .iter()
                .fold(false, |acc, c| c.constant_time_eq(given) | acc);
            if matched && !given.is_empty() {
                Status::SUCCESS
            } else {
                Status::AUTH_FAILED
            }
        }
        // Refused by config validation; answered as "no validator" should one ever get here.
        CredentialPolicy::Hmac | CredentialPolicy::None => Status::VALIDATOR_NOT_FOUND,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn cluster(policy: CredentialPolicy, creds: &[&str]) -> ClusterConfig {
        let mut c: ClusterConfig = serde_json::from_str(r#"{"name":"c"}"#).unwrap();
        c.credential_policy = policy;
        c.credentials = creds.iter().map(|c| Secret::new(*c)).collect();
        c
    }

    fn init(policy: &str, cred: &str) -> ConnectionInitInfo {
        ConnectionInitInfo {
            cluster_name: "c".into(),
            credential_policy: policy.into(),
            credential: Secret::new(cred),
            ..Default::default()
        }
    }

    #[test]
    fn unknown_cluster_is_status_4() {
        assert_eq!(decide(None, &init("", "")), Status::CLUSTER_NOT_EXIST);
    }

    #[test]
    fn open_cluster_accepts_anyone() {
        let c = cluster(CredentialPolicy::None, &[]);
        assert_eq!(decide(Some(&c), &init("", "")), Status::SUCCESS);
        assert_eq!(decide(Some(&c), &init("token", "x")), Status::SUCCESS);
    }

    #[test]
    fn token_cluster_requires_a_listed_token_even_if_agent_names_no_policy() {
        let c = cluster(CredentialPolicy::Token, &["a", "b"]);
        assert_eq!(decide(Some(&c), &init("token", "b")), Status::SUCCESS);
        assert_eq!(decide(Some(&c), &init("", "a")), Status::SUCCESS);
        assert_eq!(decide(Some(&c), &init("", "")), Status::AUTH_FAILED);
        assert_eq!(
            decide(Some(&c), &init("token", "wrong")),
            Status::AUTH_FAILED
        );
    }

    #[test]
    fn other_announced_policy_is_status_3() {
        let c = cluster(CredentialPolicy::Token, &["a"]);
        assert_eq!(
            decide(Some(&c), &init("custom", "a")),
            Status::VALIDATOR_NOT_FOUND
        );
    }
}

//! The server handshake's fuzz harness, shared by `fuzz/fuzz_targets/server_handshake.rs` and the
//! property tests in `control::proptests` (CI cannot run cargo-fuzz; it runs these on random
//! inputs instead).
//!
//! Runs what the control path does with an agent's first bytes (`handshake::next_init`, chunk by
//! chunk as reads deliver them) and decides each init with `auth::decide` against fixed clusters
//! of every credential policy. Panics only when an invariant is broken.

use super::auth::{self, Decision};
use super::handshake::{next_init, InitProgress};
use super::replay::ReplayCache;
use crate::config::{ClusterConfig, CredentialPolicy};
use crate::protocol::Status;
use crate::secret::Secret;

/// The clock the harness decides at (unix seconds).
pub const NOW: u64 = 1_700_000_000;
/// Frame limit of the harness (the server default).
pub const MAX_PAYLOAD: usize = crate::protocol::DEFAULT_MAX_FRAME_PAYLOAD_BYTES;

/// The clusters: `open` (no policy), `tok` (tokens `t1`, `t2`), `mac` (hmac secret `s1`).
pub fn clusters() -> Vec<ClusterConfig> {
    let cluster = |name: &str, policy, creds: &[&str]| ClusterConfig {
        name: name.into(),
        lb_type: Default::default(),
        credential_policy: policy,
        credentials: creds.iter().map(|c| Secret::new(*c)).collect(),
        frontends: vec![],
        pool_wait_ms: 0,
        max_data_connections_per_agent: 16_384,
        max_data_connections: 65_536,
        max_sessions: 100_000,
        session_idle_timeout_ms: 0,
        max_hosts: 10_000,
        max_aside_connections_per_agent: 4,
        protocol: Default::default(),
        udp_flow_idle_timeout_ms: 60_000,
        max_udp_datagram_bytes: 65_507,
        max_udp_flows_per_client_ip: 256,
        max_udp_queued_datagrams_per_flow: 256,
    };
    vec![
        cluster("open", CredentialPolicy::None, &[]),
        cluster("tok", CredentialPolicy::Token, &["t1", "t2"]),
        cluster("mac", CredentialPolicy::Hmac, &["s1"]),
    ]
}

/// Feeds `data[1..]` to the handshake decoder in reads of `data[0] % 64 + 1` bytes (at most what
/// the decoder asks for), deciding every init found; after an init the rest is treated as the
/// next connection's bytes. Returns the decisions.
pub fn server_handshake(data: &[u8]) -> Vec<Decision> {
    let clusters = clusters();
    let mut replay = ReplayCache::new(64);
    let mut decisions = Vec::new();
    let Some((&chunk_byte, stream)) = data.split_first() else {
        return decisions;
    };
    let chunk = usize::from(chunk_byte % 64) + 1;
    let mut buf = Vec::new();
    let mut pos = 0;
    loop {
        match next_init(&buf, MAX_PAYLOAD) {
            Ok(InitProgress::Init(init, used)) => {
                assert!(used <= buf.len(), "used {used} of {}", buf.len());
                let cluster = clusters.iter().find(|c| c.name == init.cluster_name);
                let d = auth::decide(cluster, &init, NOW, &mut replay);
                assert!(
                    matches!(
                        d.status,
                        Status::SUCCESS
                            | Status::AUTH_FAILED
                            | Status::VALIDATOR_NOT_FOUND
                            | Status::CLUSTER_NOT_EXIST
                    ),
                    "{d:?}"
                );
                assert!(
                    !d.reason.contains(init.credential.expose()) || init.credential.is_empty(),
                    "a reason must not echo the credential"
                );
                decisions.push(d);
                buf.drain(..used);
            }
            Ok(InitProgress::GracefulClose(_, used)) => {
                assert!(used <= buf.len(), "used {used} of {}", buf.len());
                buf.drain(..used);
            }
            Ok(InitProgress::NeedMore(n)) => {
                assert!(n >= 1);
                if pos >= stream.len() {
                    return decisions;
                }
                let take = chunk.min(n).min(stream.len() - pos);
                buf.extend_from_slice(&stream[pos..pos + take]);
                pos += take;
            }
            // The server closes such a connection; the fuzzer learns nothing more from it.
            Err(_) => return decisions,
        }
    }
}

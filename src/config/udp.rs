//! The UDP options of a server cluster (`clusters[].udp_flow_idle_timeout_ms`,
//! `max_udp_datagram_bytes`, `max_udp_flows_per_client_ip`, `max_udp_queued_datagrams_per_flow`):
//! their defaults and their rules. A listener's `protocol` rule lives with the agent file. It
//! parses; it starts nothing.

use std::path::Path;

use super::{defaults, ClusterConfig, ConfigError};

pub(super) fn default_udp_flow_idle_timeout_ms() -> u64 {
    defaults::UDP_FLOW_IDLE_TIMEOUT_MS
}

pub(super) fn default_max_udp_datagram_bytes() -> usize {
    defaults::MAX_UDP_DATAGRAM_BYTES
}

pub(super) fn default_max_udp_flows_per_client_ip() -> u32 {
    defaults::MAX_UDP_FLOWS_PER_CLIENT_IP
}

pub(super) fn default_max_udp_queued_datagrams_per_flow() -> usize {
    defaults::MAX_UDP_QUEUED_DATAGRAMS_PER_FLOW
}

/// The UDP rules of a cluster (checked for TCP clusters too: a file stays valid when its
/// `protocol` changes).
pub(super) fn validate_cluster(
    path: &Path,
    at: &dyn Fn(&str) -> String,
    c: &ClusterConfig,
) -> Result<(), ConfigError> {
    let err = |field: String, msg: String| Err(ConfigError::new(path, field, msg));
    if !(100..=86_400_000).contains(&c.udp_flow_idle_timeout_ms) {
        return err(
            at("udp_flow_idle_timeout_ms"),
            format!("{} is outside 100..=86400000", c.udp_flow_idle_timeout_ms),
        );
    }
    let max = crate::protocol::datagram::MAX_DATAGRAM_BYTES;
    if !(1..=max).contains(&c.max_udp_datagram_bytes) {
        return err(
            at("max_udp_datagram_bytes"),
            format!("{} is outside 1..={max}", c.max_udp_datagram_bytes),
        );
    }
    if !(1..=1_000_000).contains(&c.max_udp_flows_per_client_ip) {
        return err(
            at("max_udp_flows_per_client_ip"),
            format!("{} is outside 1..=1000000", c.max_udp_flows_per_client_ip),
        );
    }
    if !(1..=65_536).contains(&c.max_udp_queued_datagrams_per_flow) {
        return err(
            at("max_udp_queued_datagrams_per_flow"),
            format!(
                "{} is outside 1..=65536",
                c.max_udp_queued_datagrams_per_flow
            ),
        );
    }
    if c.protocol == crate::protocol::TransportProtocol::Udp {
        if let Some(j) = c.frontends.iter().position(|f| f.accept_proxy_protocol) {
            return err(
                at(&format!("frontends[{j}].accept_proxy_protocol")),
                "a UDP cluster's frontends cannot read a PROXY header".into(),
            );
        }
    }
    Ok(())
}

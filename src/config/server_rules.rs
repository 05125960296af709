//! The rules of a server config file that serde cannot express (`ServerConfig::validate`): one
//! error per rule, naming the file and the field. It must not read files or bind sockets.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::server::{socket_addr, valid_name, CredentialPolicy, ServerConfig};
use super::ConfigError;
use crate::secret::Secret;

impl ServerConfig {
    /// Checks every rule that serde cannot express.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |field: String, msg: String| Err(ConfigError::new(path, field, msg));
        super::validate_runtime_options(
            path,
            self.uring_entries,
            self.pump_buffer_bytes,
            self.splice_pipe_bytes,
        )?;
        if self.drain_timeout_ms > 3_600_000 {
            return err(
                "drain_timeout_ms".into(),
                format!("{} is more than 3600000", self.drain_timeout_ms),
            );
        }
        if self.workers > 1024 {
            return err(
                "workers".into(),
                format!("{} is more than 1024", self.workers),
            );
        }
        if !(100..=3_600_000).contains(&self.heartbeat_interval_ms) {
            return err(
                "heartbeat_interval_ms".into(),
                format!("{} is outside 100..=3600000", self.heartbeat_interval_ms),
            );
        }
        if !(1..=100).contains(&self.heartbeat_max_missed) {
            return err(
                "heartbeat_max_missed".into(),
                format!("{} is outside 1..=100", self.heartbeat_max_missed),
            );
        }
        let tl = &self.tunnel_listener;
        // Every fixed listen address so far, with its field, to catch overlapping binds.
        let mut bound: Vec<(String, SocketAddr)> = Vec::new();
        let tunnel_addr = socket_addr(path, "tunnel_listener.address", &tl.address)?;
        bound.push(("tunnel_listener.address".into(), tunnel_addr));
        if !(1..=1_000_000).contains(&tl.max_concurrent_handshakes) {
            return err(
                "tunnel_listener.max_concurrent_handshakes".into(),
                format!("{} is outside 1..=1000000", tl.max_concurrent_handshakes),
            );
        }
        if !(1..=1_000_000).contains(&tl.max_handshakes_per_ip) {
            return err(
                "tunnel_listener.max_handshakes_per_ip".into(),
                format!("{} is outside 1..=1000000", tl.max_handshakes_per_ip),
            );
        }
        for (field, value) in [
            ("max_hosts_per_ip", tl.max_hosts_per_ip),
            (
                "max_aside_connections_per_ip",
                tl.max_aside_connections_per_ip,
            ),
        ] {
            if !(1..=1_000_000).contains(&value) {
                return err(
                    format!("tunnel_listener.{field}"),
                    format!("{value} is outside 1..=1000000"),
                );
            }
        }
        if !(1..=16_777_216).contains(&tl.hmac_replay_cache_entries) {
            return err(
                "tunnel_listener.hmac_replay_cache_entries".into(),
                format!("{} is outside 1..=16777216", tl.hmac_replay_cache_entries),
            );
        }
        if !(100..=600_000).contains(&tl.handshake_timeout_ms) {
            return err(
                "tunnel_listener.handshake_timeout_ms".into(),
                format!("{} is outside 100..=600000", tl.handshake_timeout_ms),
            );
        }
        if tl.legacy_idle_timeout_ms != 0
            && !(1000..=86_400_000).contains(&tl.legacy_idle_timeout_ms)
        {
            return err(
                "tunnel_listener.legacy_idle_timeout_ms".into(),
                format!(
                    "{} is neither 0 nor within 1000..=86400000",
                    tl.legacy_idle_timeout_ms
                ),
            );
        }
        if !(1..=4096).contains(&tl.max_legacy_asides_per_ip) {
            return err(
                "tunnel_listener.max_legacy_asides_per_ip".into(),
                format!("{} is outside 1..=4096", tl.max_legacy_asides_per_ip),
            );
        }
        if tl.legacy_lease_delay_ms > 10_000 {
            return err(
                "tunnel_listener.legacy_lease_delay_ms".into(),
                format!("{} is outside 0..=10000", tl.legacy_lease_delay_ms),
            );
        }
        if !(256..=crate::protocol::MAX_WIRE_PAYLOAD_BYTES).contains(&tl.max_frame_payload_bytes) {
            return err(
                "tunnel_listener.max_frame_payload_bytes".into(),
                format!("{} is outside 256..=65535", tl.max_frame_payload_bytes),
            );
        }
        if let Some(tls) = &tl.tls_context {
            for (field, value) in [
                ("cert_chain_file", Some(&tls.cert_chain_file)),
                ("private_key_file", Some(&tls.private_key_file)),
                ("ca_file", tls.ca_file.as_ref()),
            ] {
                if value.is_some_and(String::is_empty) {
                    return err(
                        format!("tunnel_listener.tls_context.{field}"),
                        "is empty".into(),
                    );
                }
            }
        }
        if let Some(admin) = &self.admin {
            admin.validate(path)?;
            let addr = socket_addr(path, "admin.address", &admin.address)?;
            check_overlap(path, &mut bound, "admin.address".into(), addr)?;
        }
        if self.clusters.is_empty() {
            return err("clusters".into(), "at least one cluster is required".into());
        }
        let mut names = HashSet::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let at = |f: &str| format!("clusters[{i}].{f}");
            if !valid_name(&c.name) {
                return err(
                    at("name"),
                    format!(
                        "{:?} is not a valid name (1 to 128 of A-Z a-z 0-9 . _ -)",
                        c.name
                    ),
                );
            }
            if !names.insert(c.name.as_str()) {
                return err(
                    at("name"),
                    format!("{:?} is used by another cluster", c.name),
                );
            }
            match c.credential_policy {
                CredentialPolicy::None => {
                    if !c.credentials.is_empty() {
                        // Credentials that are silently ignored would let anyone register.
                        return err(
                            at("credentials"),
                            "credentials are set but credential_policy is \"\" (none); \
                             set credential_policy to \"token\" or remove them"
                                .into(),
                        );
                    }
                }
                CredentialPolicy::Token | CredentialPolicy::Hmac => {
                    if c.credentials.is_empty() {
                        return err(
                            at("credentials"),
                            format!(
                                "credential_policy {:?} needs at least one credential",
                                c.credential_policy.name()
                            ),
                        );
                    }
                    if let Some(k) = c.credentials.iter().position(Secret::is_empty) {
                        return err(at(&format!("credentials[{k}]")), "is empty".into());
                    }
                }
            }
            if !(1..=65_536).contains(&c.max_data_connections_per_agent) {
                return err(
                    at("max_data_connections_per_agent"),
                    format!("{} is outside 1..=65536", c.max_data_connections_per_agent),
                );
            }
            if !(1..=10_000_000).contains(&c.max_data_connections) {
                return err(
                    at("max_data_connections"),
                    format!("{} is outside 1..=10000000", c.max_data_connections),
                );
            }
            if !(1..=10_000_000).contains(&c.max_sessions) {
                return err(
                    at("max_sessions"),
                    format!("{} is outside 1..=10000000", c.max_sessions),
                );
            }
            super::validate_session_idle_timeout(
                path,
                &at("session_idle_timeout_ms"),
                c.session_idle_timeout_ms,
            )?;
            if !(1..=1_000_000).contains(&c.max_hosts) {
                return err(
                    at("max_hosts"),
                    format!("{} is outside 1..=1000000", c.max_hosts),
                );
            }
            if !(1..=1024).contains(&c.max_aside_connections_per_agent) {
                return err(
                    at("max_aside_connections_per_agent"),
                    format!("{} is outside 1..=1024", c.max_aside_connections_per_agent),
                );
            }
            if c.pool_wait_ms > 600_000 {
                return err(
                    at("pool_wait_ms"),
                    format!("{} is more than 600000", c.pool_wait_ms),
                );
            }
            super::udp::validate_cluster(path, &at, c)?;
            for (j, f) in c.frontends.iter().enumerate() {
                let field = at(&format!("frontends[{j}].address"));
                let addr = socket_addr(path, &field, &f.address)?;
                check_overlap(path, &mut bound, field, addr)?;
                super::proxy::validate_frontend(path, &at(&format!("frontends[{j}]")), f)?;
            }
        }
        Ok(())
    }
}

/// Two listen addresses overlap when they share a port (not 0) and one IP, or one of them is a
/// wildcard covering the other: `0.0.0.0` covers IPv4, `[::]` (dual-stack) covers both families.
/// Binding both would fail or split connections between them.
pub(super) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    fn covers(wild: IpAddr, other: IpAddr) -> bool {
        wild.is_unspecified() && (wild.is_ipv6() || other.is_ipv4())
    }
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip()))
}

/// Errors when `addr` overlaps a listen address already in `bound`, else records it.
fn check_overlap(
    path: &Path,
    bound: &mut Vec<(String, SocketAddr)>,
    field: String,
    addr: SocketAddr,
) -> Result<(), ConfigError> {
    if let Some((other, other_addr)) = bound.iter().find(|(_, b)| overlaps(addr, *b)) {
        return Err(ConfigError::new(
            path,
            field,
            format!("{addr} overlaps {other} ({other_addr})"),
        ));
    }
    bound.push((field, addr));
    Ok(())
}

//! The rules of an agent config file that serde cannot express (`AgentConfig::validate`): one
//! error per rule, naming the file and the field. It must not read files or resolve names.

use crate::secret::Secret;
use std::collections::{HashMap, HashSet};
use std::net::Ipv6Addr;
use std::path::Path;

use super::agent::{AgentConfig, AgentTlsConfig, DynamicServerListConfig, MAX_WEIGHT};
use super::server::valid_name;
use super::ConfigError;

impl AgentConfig {
    /// Checks every rule that serde cannot express.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |field: String, msg: String| Err(ConfigError::new(path, field, msg));
        if !self.agent_id.is_empty() && !valid_agent_id(&self.agent_id) {
            return err(
                "agent_id".into(),
                format!(
                    "{:?} is not a valid agent id (1 to 128 of A-Z a-z 0-9 . _ - :)",
                    self.agent_id
                ),
            );
        }
        super::validate_runtime_options(
            path,
            self.uring_entries,
            self.pump_buffer_bytes,
            self.splice_pipe_bytes,
        )?;
        if self.host_name.is_empty() {
            return err("host_name".into(), "is empty".into());
        }
        if self.host_name.len() > 255 {
            return err(
                "host_name".into(),
                format!("is {} bytes, more than 255", self.host_name.len()),
            );
        }
        if self.host_name.chars().any(char::is_control) {
            return err(
                "host_name".into(),
                format!("{:?} contains a control character", self.host_name),
            );
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return err(
                "weight".into(),
                format!("{} is outside 1..={MAX_WEIGHT}", self.weight),
            );
        }
        if self.workers > 1024 {
            return err(
                "workers".into(),
                format!("{} is more than 1024", self.workers),
            );
        }
        if let Some(admin) = &self.admin {
            admin.validate(path)?;
            super::server::socket_addr(path, "admin.address", &admin.address)?;
        }
        let mut names = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = |f: &str| format!("listeners[{i}].{f}");
            if !valid_name(&l.name) {
                return err(
                    at("name"),
                    format!(
                        "{:?} is not a valid name (1 to 128 of A-Z a-z 0-9 . _ -)",
                        l.name
                    ),
                );
            }
            if !names.insert(l.name.as_str()) {
                return err(
                    at("name"),
                    format!("{:?} is used by another listener", l.name),
                );
            }
            if let Err(why) = host_port(&l.backend) {
                return err(at("backend"), format!("{:?} {why}", l.backend));
            }
            super::validate_session_idle_timeout(
                path,
                &at("session_idle_timeout_ms"),
                l.session_idle_timeout_ms,
            )?;
            if l.protocol == crate::protocol::TransportProtocol::Udp
                && l.send_proxy_protocol.version().is_some()
            {
                return err(
                    at("send_proxy_protocol"),
                    "a UDP listener cannot send a PROXY header".into(),
                );
            }
            if !(1..=600_000).contains(&l.connect_timeout_ms) {
                return err(
                    at("connect_timeout_ms"),
                    format!("{} is outside 1..=600000", l.connect_timeout_ms),
                );
            }
        }
        if self.tunnels.is_empty() {
            return err("tunnels".into(), "at least one tunnel is required".into());
        }
        // (cluster, server) -> the tunnel that first named it.
        let mut servers: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, t) in self.tunnels.iter().enumerate() {
            let at = |f: &str| format!("tunnels[{i}].{f}");
            if !valid_name(&t.cluster) {
                return err(
                    at("cluster"),
                    format!("{:?} is not a valid cluster name", t.cluster),
                );
            }
            if !names.contains(t.hosting_listener.as_str()) {
                return err(
                    at("hosting_listener"),
                    format!("{:?} names no listener", t.hosting_listener),
                );
            }
            if !(1..=1024).contains(&t.connection_num) {
                return err(
                    at("connection_num"),
                    format!("{} is outside 1..=1024", t.connection_num),
                );
            }
            if let Some(max) = t.max_connection_num {
                if max < t.connection_num || max > 65_536 {
                    return err(
                        at("max_connection_num"),
                        format!("{max} is outside connection_num..=65536"),
                    );
                }
            }
            let lister = match &t.dynamic_server_list_config {
                None => "",
                Some(d) => {
                    validate_lister(path, &at("dynamic_server_list_config"), d)?;
                    d.dynamic_server_lister.as_str()
                }
            };
            if t.server_list.is_empty() && lister.is_empty() {
                return err(
                    at("server_list"),
                    "is empty and no dynamic_server_lister is set".into(),
                );
            }
            for (j, s) in t.server_list.iter().enumerate() {
                let field = at(&format!("server_list[{j}]"));
                if let Err(why) = host_port(s) {
                    return err(field, format!("{s:?} {why}"));
                }
                if let Some(k) = servers.insert((t.cluster.as_str(), s.as_str()), i) {
                    return err(
                        field,
                        format!(
                            "{s:?} is already a server of cluster {:?} (tunnels[{k}])",
                            t.cluster
                        ),
                    );
                }
            }
            if t.connect_retry_times < -1 {
                return err(
                    at("connect_retry_times"),
                    format!("{} is less than -1", t.connect_retry_times),
                );
            }
            if !(1..=3_600_000).contains(&t.reconnect_base_duration_ms) {
                return err(
                    at("reconnect_base_duration_ms"),
                    format!("{} is outside 1..=3600000", t.reconnect_base_duration_ms),
                );
            }
            if t.reconnect_max_duration_ms < t.reconnect_base_duration_ms
                || t.reconnect_max_duration_ms > 3_600_000
            {
                return err(
                    at("reconnect_max_duration_ms"),
                    format!(
                        "{} is outside reconnect_base_duration_ms..=3600000",
                        t.reconnect_max_duration_ms
                    ),
                );
            }
            if !(100..=3_600_000).contains(&t.extra_connection_idle_duration_ms) {
                return err(
                    at("extra_connection_idle_duration_ms"),
                    format!(
                        "{} is outside 100..=3600000",
                        t.extra_connection_idle_duration_ms
                    ),
                );
            }
            if !(1..=600_000).contains(&t.connect_timeout_duration_ms) {
                return err(
                    at("connect_timeout_duration_ms"),
                    format!("{} is outside 1..=600000", t.connect_timeout_duration_ms),
                );
            }
            if t.graceful_close_max_wait_duration_ms > 3_600_000 {
                return err(
                    at("graceful_close_max_wait_duration_ms"),
                    format!(
                        "{} is more than 3600000",
                        t.graceful_close_max_wait_duration_ms
                    ),
                );
            }
            let sources = [
                t.credential.is_some(),
                t.credential_file.is_some(),
                t.credential_env.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() > 1 {
                return err(
                    at("credential"),
                    "set at most one of credential, credential_file, credential_env".into(),
                );
            }
            if t.credential.as_ref().is_some_and(Secret::is_empty) {
                return err(at("credential"), "is empty".into());
            }
            if t.credential_file.as_deref() == Some("") {
                return err(at("credential_file"), "is empty".into());
            }
            if t.credential_env.as_deref() == Some("") {
                return err(at("credential_env"), "is empty".into());
            }
            match t.credential_policy.as_str() {
                "" => {}
                policy @ ("token" | "hmac") => {
                    if !sources.contains(&true) {
                        return err(
                            at("credential"),
                            format!(
                                "credential_policy {policy:?} needs one of credential, \
                                 credential_file, credential_env"
                            ),
                        );
                    }
                }
                other => {
                    return err(
                        at("credential_policy"),
                        format!("{other:?} is not a policy (expected \"\", \"token\" or \"hmac\")"),
                    );
                }
            }
            if let Some(tls) = &t.tls_context {
                validate_tls(path, &at("tls_context"), tls)?;
            }
        }
        Ok(())
    }
}

/// The rules of an agent `tls_context` (files are read when TLS is set up, not here).
fn validate_tls(path: &Path, at: &str, tls: &AgentTlsConfig) -> Result<(), ConfigError> {
    let err = |f: &str, msg: &str| Err(ConfigError::new(path, format!("{at}.{f}"), msg));
    for (field, value) in [
        ("ca_file", &tls.ca_file),
        ("server_name", &tls.server_name),
        ("cert_chain_file", &tls.cert_chain_file),
        ("private_key_file", &tls.private_key_file),
    ] {
        if value.as_deref() == Some("") {
            return err(field, "is empty");
        }
    }
    if let Some(name) = &tls.server_name {
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            return Err(ConfigError::new(
                path,
                format!("{at}.server_name"),
                format!("{name:?} is not a DNS name or an IP address"),
            ));
        }
    }
    match (&tls.cert_chain_file, &tls.private_key_file) {
        (Some(_), None) => err(
            "private_key_file",
            "is required with cert_chain_file (mutual TLS needs both)",
        ),
        (None, Some(_)) => err(
            "cert_chain_file",
            "is required with private_key_file (mutual TLS needs both)",
        ),
        _ => Ok(()),
    }
}

/// The shape of a `dynamic_server_list_config`.
fn validate_lister(path: &Path, at: &str, d: &DynamicServerListConfig) -> Result<(), ConfigError> {
    let err = |f: &str, msg: String| Err(ConfigError::new(path, format!("{at}.{f}"), msg));
    let lister = d.dynamic_server_lister.as_str();
    if !matches!(lister, "" | "dns" | "file") {
        return err(
            "dynamic_server_lister",
            format!("{lister:?} is not a lister (expected \"\", \"dns\" or \"file\")"),
        );
    }
    match (&d.dns_name, lister) {
        (None, "dns") => return err("dns_name", "is required with lister \"dns\"".into()),
        (Some(name), "dns") => {
            if let Err(why) = host_port(name) {
                return err("dns_name", format!("{name:?} {why}"));
            }
        }
        (Some(_), _) => {
            return err(
                "dns_name",
                format!("is set but dynamic_server_lister is {lister:?}, not \"dns\""),
            )
        }
        (None, _) => {}
    }
    match (&d.path, lister) {
        (None, "file") => return err("path", "is required with lister \"file\"".into()),
        (Some(p), "file") if p.is_empty() => return err("path", "is empty".into()),
        (Some(_), "file") | (None, _) => {}
        (Some(_), _) => {
            return err(
                "path",
                format!("is set but dynamic_server_lister is {lister:?}, not \"file\""),
            )
        }
    }
    if !(100..=3_600_000).contains(&d.refresh_interval_ms) {
        return err(
            "refresh_interval_ms",
            format!("{} is outside 100..=3600000", d.refresh_interval_ms),
        );
    }
    Ok(())
}

/// A configured `agent_id`: short, printable, safe in logs and metric labels.
fn valid_agent_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// Checks `host:port` without resolving it: a DNS name or IPv4 address, or an IPv6 address in
/// brackets, and a port from 1 to 65535.
pub(super) fn host_port(value: &str) -> Result<(), &'static str> {
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err("is not host:port (e.g. 127.0.0.1:8080)");
    };
    if !matches!(port.parse::<u16>(), Ok(1..)) {
        return Err("has no valid port (1-65535)");
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
            Some(Ok(_)) => Ok(()),
            _ => Err("has no valid IPv6 address inside [...]"),
        };
    }
    if host.is_empty() {
        return Err("has no host");
    }
    if host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return Err("has no valid host (a DNS name, an IPv4 address or [IPv6])");
    }
    if host.contains(':') {
        return Err("needs brackets around an IPv6 address (e.g. [::1]:8080)");
    }
    Ok(())
}

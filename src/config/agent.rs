//! The agent's config file. `tunnels[]` entries are MOSN's `AgentBootstrapConfig`.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::server::valid_name;
use super::{default_true, parse, read, AdminConfig, ConfigError, IoBackend};
use crate::secret::Secret;

/// `ringtun agent --config FILE`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This agent's name in every cluster it joins. Default: the machine's host name.
    #[serde(default)]
    pub host_name: String,
    /// Share of a cluster's sessions this agent takes relative to other hosts. Default 10.
    #[serde(default = "default_weight")]
    pub weight: i64,
    /// Threads running sessions. Default 1; `0` means one per CPU core.
    #[serde(default = "default_agent_workers")]
    pub workers: usize,
    /// I/O backend: `auto` (default), `uring` or `epoll`.
    #[serde(default)]
    pub io_backend: IoBackend,
    /// Admin HTTP endpoint. Default: none.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Named local targets that sessions are handed to.
    #[serde(default)]
    pub listeners: Vec<HostingListenerConfig>,
    /// One entry per cluster this agent serves.
    #[serde(default)]
    pub tunnels: Vec<TunnelConfig>,
}

/// A hosting listener: where a tunnel's sessions go at the edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostingListenerConfig {
    /// Name that `tunnels[].hosting_listener` refers to. Required.
    pub name: String,
    /// `host:port` of the edge service. Required.
    pub backend: String,
    /// Time to connect to the backend, in milliseconds. Default 5000.
    #[serde(default = "default_backend_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

/// MOSN's `AgentBootstrapConfig`, with ringtun's additions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// A disabled tunnel is skipped. Default true.
    #[serde(default = "default_true")]
    pub enable: bool,
    /// Idle data connections kept to each server. Default 4.
    #[serde(default = "default_connection_num")]
    pub connection_num: u32,
    /// Most data connections to one server when it asks for more. Default: 4 × `connection_num`.
    #[serde(default)]
    pub max_connection_num: Option<u32>,
    /// The server-side cluster to join. Required.
    pub cluster: String,
    /// The `listeners[].name` that sessions are handed to. Required.
    pub hosting_listener: String,
    /// Servers as `host:port`; every address a name resolves to is a server.
    #[serde(default)]
    pub server_list: Vec<String>,
    /// Dynamic server discovery. Default: none.
    #[serde(default)]
    pub dynamic_server_list_config: Option<DynamicServerListConfig>,
    /// Attempts per connection before giving up; `-1` or `0` retry forever (default -1).
    #[serde(default = "default_connect_retry_times")]
    pub connect_retry_times: i64,
    /// First retry delay, doubled per failure, in milliseconds. Default 1000.
    #[serde(default = "default_reconnect_base_duration_ms")]
    pub reconnect_base_duration_ms: u64,
    /// Cap of the retry delay, in milliseconds. Default 30000.
    #[serde(default = "default_reconnect_max_duration_ms")]
    pub reconnect_max_duration_ms: u64,
    /// Time to connect and complete the init handshake, in milliseconds. Default 5000.
    #[serde(default = "default_connect_timeout_duration_ms")]
    pub connect_timeout_duration_ms: u64,
    /// Credential policy announced in the init (the server's cluster decides what it requires).
    #[serde(default)]
    pub credential_policy: String,
    /// The credential itself. At most one of `credential`, `credential_file`, `credential_env`.
    #[serde(default)]
    pub credential: Option<Secret>,
    /// A file whose contents (trimmed) are the credential.
    #[serde(default)]
    pub credential_file: Option<String>,
    /// An environment variable holding the credential.
    #[serde(default)]
    pub credential_env: Option<String>,
    /// Time in-flight sessions get to finish when the agent stops, in milliseconds. Default 15000.
    #[serde(default = "default_graceful_close_max_wait_duration_ms")]
    pub graceful_close_max_wait_duration_ms: u64,
    /// TLS to the servers. Default: plaintext.
    #[serde(default)]
    pub tls_context: Option<AgentTlsConfig>,
}

/// Dynamic server discovery: `{"dynamic_server_lister": ""}` (none), `"dns"` or `"file"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicServerListConfig {
    #[serde(default)]
    pub dynamic_server_lister: String,
    /// `host:port` to resolve (lister `dns`).
    #[serde(default)]
    pub dns_name: Option<String>,
    /// JSON array of `host:port` (lister `file`).
    #[serde(default)]
    pub path: Option<String>,
    /// Re-resolve / re-read interval, in milliseconds. Default 5000.
    #[serde(default = "default_refresh_interval_ms")]
    pub refresh_interval_ms: u64,
}

/// Agent-side TLS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTlsConfig {
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub cert_chain_file: Option<String>,
    #[serde(default)]
    pub private_key_file: Option<String>,
}

fn default_weight() -> i64 {
    10
}
fn default_agent_workers() -> usize {
    1
}
fn default_backend_connect_timeout_ms() -> u64 {
    5_000
}
fn default_connection_num() -> u32 {
    4
}
fn default_connect_retry_times() -> i64 {
    -1
}
fn default_reconnect_base_duration_ms() -> u64 {
    1_000
}
fn default_reconnect_max_duration_ms() -> u64 {
    30_000
}
fn default_connect_timeout_duration_ms() -> u64 {
    5_000
}
fn default_graceful_close_max_wait_duration_ms() -> u64 {
    15_000
}
fn default_refresh_interval_ms() -> u64 {
    5_000
}

/// Most a weight may be; keeps weighted balancing arithmetic small.
pub const MAX_WEIGHT: i64 = 10_000;

impl AgentConfig {
    /// Reads, parses and validates an agent config file, resolving credentials from files and
    /// environment variables.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_str(path, &read(path)?)
    }

    /// Parses and validates `text`; `path` is used in error messages.
    pub fn from_str(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut config: Self = parse(path, text)?;
        if config.host_name.is_empty() {
            config.host_name = machine_host_name();
        }
        config.validate(path)?;
        config.resolve_credentials(path)?;
        Ok(config)
    }

    /// Checks every rule that serde cannot express.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |field: String, msg: String| Err(ConfigError::new(path, field, msg));
        if self.host_name.is_empty() || self.host_name.len() > 255 {
            return err("host_name".into(), "must be 1 to 255 bytes".into());
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
            super::server::socket_addr(path, "admin.address", &admin.address)?;
        }
        let mut names = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = |f: &str| format!("listeners[{i}].{f}");
            if !valid_name(&l.name) {
                return err(at("name"), format!("{:?} is not a valid name", l.name));
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
                if max < t.connection_num || max > 4096 {
                    return err(
                        at("max_connection_num"),
                        format!("{max} is outside connection_num..=4096"),
                    );
                }
            }
            let lister = t
                .dynamic_server_list_config
                .as_ref()
                .map(|d| d.dynamic_server_lister.as_str())
                .unwrap_or("");
            match lister {
                "" => {}
                "dns" | "file" => {
                    return err(
                        at("dynamic_server_list_config.dynamic_server_lister"),
                        format!("{lister:?} is not supported by this version of ringtun yet"),
                    )
                }
                other => {
                    return err(
                        at("dynamic_server_list_config.dynamic_server_lister"),
                        format!("{other:?} is not a lister (expected \"\", \"dns\" or \"file\")"),
                    )
                }
            }
            if t.server_list.is_empty() {
                return err(
                    at("server_list"),
                    "is empty and no dynamic_server_lister is set".into(),
                );
            }
            for (j, s) in t.server_list.iter().enumerate() {
                if let Err(why) = host_port(s) {
                    return err(at(&format!("server_list[{j}]")), format!("{s:?} {why}"));
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
            if !matches!(t.credential_policy.as_str(), "" | "token" | "hmac") {
                return err(
                    at("credential_policy"),
                    format!(
                        "{:?} is not a policy (expected \"\", \"token\" or \"hmac\")",
                        t.credential_policy
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
            if t.tls_context.is_some() {
                return err(
                    at("tls_context"),
                    "TLS is not supported by this version of ringtun yet".into(),
                );
            }
        }
        Ok(())
    }

    /// Replaces `credential_file` / `credential_env` by the credential they hold.
    fn resolve_credentials(&mut self, path: &Path) -> Result<(), ConfigError> {
        for (i, t) in self.tunnels.iter_mut().enumerate() {
            if let Some(file) = &t.credential_file {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    ConfigError::new(
                        path,
                        format!("tunnels[{i}].credential_file"),
                        format!("cannot read {file:?}: {e}"),
                    )
                })?;
                t.credential = Some(Secret::new(text.trim()));
            } else if let Some(var) = &t.credential_env {
                let value = std::env::var(var).map_err(|_| {
                    ConfigError::new(
                        path,
                        format!("tunnels[{i}].credential_env"),
                        format!("environment variable {var:?} is not set"),
                    )
                })?;
                t.credential = Some(Secret::new(value.trim()));
            }
        }
        Ok(())
    }
}

impl TunnelConfig {
    /// Attempts before a connection slot gives up; `None` means forever.
    pub fn retry_limit(&self) -> Option<u64> {
        u64::try_from(self.connect_retry_times)
            .ok()
            .filter(|n| *n > 0)
    }

    /// The effective `max_connection_num`.
    pub fn max_connections(&self) -> u32 {
        self.max_connection_num
            .unwrap_or(self.connection_num.saturating_mul(4))
    }
}

/// Checks `host:port` without resolving it.
fn host_port(value: &str) -> Result<(), &'static str> {
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err("is not host:port");
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("has no host");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("has no valid port (1-65535)"),
        Ok(_) => Ok(()),
    }
}

fn machine_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "ringtun-agent".to_string())
}

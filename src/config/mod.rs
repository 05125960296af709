//! Server and agent configuration: the JSON file contract (`docs/config.md`), its defaults
//! (`defaults`), and its validation.
//!
//! Field names are user interface and must not change. Unknown fields are errors. Every error names
//! the file and the field (`agent.json: tunnels[0].hosting_listener: "web2" names no listener`).
//! This module reads files and checks them; it starts nothing.

mod admin;
pub mod agent;
mod agent_rules;
pub mod defaults;
mod error;
pub mod mosn;
mod proxy;
mod server;
mod server_rules;
mod udp;

pub use admin::AdminConfig;
pub use agent::{
    AgentConfig, AgentTlsConfig, DynamicServerListConfig, HostingListenerConfig, ServerType,
    TunnelConfig,
};
pub use error::ConfigError;
pub use proxy::{trusted_networks, SendProxyProtocol};
pub use server::{
    ClusterConfig, CredentialPolicy, FrontendConfig, LbType, ServerConfig, ServerTlsConfig,
    TlsMinVersion, TunnelListenerConfig,
};

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Which I/O backend the workers use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoBackend {
    /// Probe io_uring and fall back to epoll when it is unavailable (default).
    #[default]
    Auto,
    /// io_uring; refuse to start where it is unavailable.
    Uring,
    /// epoll (a tokio current-thread runtime per worker).
    Epoll,
}

/// Either kind of config file, as `ringtun check` sees it.
#[derive(Debug)]
pub enum AnyConfig {
    Server(ServerConfig),
    Agent(AgentConfig),
}

/// Reads and validates a file of either kind: a file with `tunnels` is an agent's, a file with
/// `clusters` or `tunnel_listener` a server's.
pub fn load_any(path: &Path) -> Result<AnyConfig, ConfigError> {
    let text = read(path)?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ConfigError::json(path, "", &e))?;
    let Some(object) = value.as_object() else {
        return Err(ConfigError::new(path, "", "expected a JSON object"));
    };
    if object.contains_key("tunnels") {
        AgentConfig::from_str(path, &text).map(AnyConfig::Agent)
    } else if object.contains_key("clusters") || object.contains_key("tunnel_listener") {
        ServerConfig::from_str(path, &text).map(AnyConfig::Server)
    } else if object.contains_key("extends") || object.contains_key("servers") {
        Err(ConfigError::new(
            path,
            "",
            "a MOSN config, not a ringtun one: convert its `tunnel_agent` block with `ringtun import-mosn FILE`",
        ))
    } else {
        Err(ConfigError::new(
            path,
            "",
            "neither a server config (no `clusters`/`tunnel_listener`) nor an agent config (no `tunnels`)",
        ))
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, "", format!("cannot read file: {e}")))
}

/// Parses `text` into `T`, naming the JSON path of the first error.
fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        ConfigError::json(path, &field, e.inner())
    })
}

fn default_true() -> bool {
    true
}

fn default_uring_entries() -> u32 {
    defaults::URING_ENTRIES
}

fn default_pump_buffer_bytes() -> usize {
    defaults::PUMP_BUFFER_BYTES
}

fn default_splice_pipe_bytes() -> usize {
    defaults::SPLICE_PIPE_BYTES
}

fn default_session_idle_timeout_ms() -> u64 {
    defaults::SESSION_IDLE_TIMEOUT_MS
}

/// A `*_idle_timeout_ms` value as a bound (`None`: 0, never).
fn idle_timeout(ms: u64) -> Option<std::time::Duration> {
    (ms > 0).then(|| std::time::Duration::from_millis(ms))
}

/// The rule of both files' `session_idle_timeout_ms`: 0, or 100 to 86400000.
fn validate_session_idle_timeout(path: &Path, field: &str, ms: u64) -> Result<(), ConfigError> {
    if ms != 0 && !(100..=86_400_000).contains(&ms) {
        return Err(ConfigError::new(
            path,
            field,
            format!("{ms} is neither 0 nor within 100..=86400000"),
        ));
    }
    Ok(())
}

/// The rules shared by both files for `uring_entries`, `pump_buffer_bytes` and
/// `splice_pipe_bytes`.
fn validate_runtime_options(
    path: &Path,
    uring_entries: u32,
    pump_buffer_bytes: usize,
    splice_pipe_bytes: usize,
) -> Result<(), ConfigError> {
    if !(16..=32768).contains(&uring_entries) || !uring_entries.is_power_of_two() {
        return Err(ConfigError::new(
            path,
            "uring_entries",
            format!("{uring_entries} is not a power of two in 16..=32768"),
        ));
    }
    if !(4096..=4 * 1024 * 1024).contains(&pump_buffer_bytes) {
        return Err(ConfigError::new(
            path,
            "pump_buffer_bytes",
            format!("{pump_buffer_bytes} is outside 4096..=4194304"),
        ));
    }
    if splice_pipe_bytes != 0 && !(4096..=1024 * 1024).contains(&splice_pipe_bytes) {
        return Err(ConfigError::new(
            path,
            "splice_pipe_bytes",
            format!("{splice_pipe_bytes} is neither 0 (no splice) nor in 4096..=1048576"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

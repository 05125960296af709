//! The server's config file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{parse, read, AdminConfig, ConfigError, IoBackend};
use crate::secret::Secret;

/// `ringtun server --config FILE`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Worker threads serving frontends and sessions. Default `0`: one per CPU core.
    #[serde(default)]
    pub workers: usize,
    /// I/O backend of the workers: `auto` (default), `uring` or `epoll`.
    #[serde(default)]
    pub io_backend: IoBackend,
    /// Interval between pings on an idle data connection, in milliseconds. Default 10000.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Unanswered pings after which an idle data connection is closed. Default 3.
    #[serde(default = "default_heartbeat_max_missed")]
    pub heartbeat_max_missed: u32,
    /// Where agents connect.
    pub tunnel_listener: TunnelListenerConfig,
    /// Admin HTTP endpoint. Default: none.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// The services agents register into.
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
}

/// The listener agents dial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelListenerConfig {
    /// `ip:port` to listen on, e.g. `0.0.0.0:7070`. Required.
    pub address: String,
    /// Time an agent has to complete its init after connecting, in milliseconds. Default 5000.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Largest frame payload accepted from an agent, in bytes. Default 16384, at most 65535.
    #[serde(default = "default_max_frame_payload_bytes")]
    pub max_frame_payload_bytes: usize,
    /// TLS for tunnel connections. Default: plaintext.
    #[serde(default)]
    pub tls_context: Option<ServerTlsConfig>,
}

/// Server-side TLS files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    pub cert_chain_file: String,
    pub private_key_file: String,
    /// When set, agents must present a certificate signed by this CA.
    #[serde(default)]
    pub ca_file: Option<String>,
}

/// One named service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The name agents register under (`cluster` in the agent's tunnel). Required.
    pub name: String,
    /// How a frontend picks a host. Default `weighted_round_robin`.
    #[serde(default)]
    pub lb_type: LbType,
    /// Credential required from agents: `""` none (default), `token`, `hmac`.
    #[serde(default)]
    pub credential_policy: CredentialPolicy,
    /// Accepted credentials under `token`.
    #[serde(default)]
    pub credentials: Vec<Secret>,
    /// Client-facing listeners of this cluster.
    #[serde(default)]
    pub frontends: Vec<FrontendConfig>,
    /// How long a frontend waits for an idle data connection before it is closed, in ms. Default 2000.
    #[serde(default = "default_pool_wait_ms")]
    pub pool_wait_ms: u64,
}

/// A client-facing listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendConfig {
    /// `ip:port` to listen on; port 0 picks a free port. Required.
    pub address: String,
}

/// Host selection strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbType {
    RoundRobin,
    #[default]
    WeightedRoundRobin,
    LeastActive,
    Random,
    ClientIpHash,
}

/// Who may register into a cluster; decided by the server, never by the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CredentialPolicy {
    /// No credential required.
    #[default]
    #[serde(rename = "")]
    None,
    /// The agent's credential must equal one of the cluster's `credentials`.
    #[serde(rename = "token")]
    Token,
    /// HMAC-SHA256 over cluster, host name, agent id and a timestamp.
    #[serde(rename = "hmac")]
    Hmac,
}

impl CredentialPolicy {
    /// The name as written in config and in MOSN's init.
    pub fn name(self) -> &'static str {
        match self {
            CredentialPolicy::None => "",
            CredentialPolicy::Token => "token",
            CredentialPolicy::Hmac => "hmac",
        }
    }
}

fn default_heartbeat_interval_ms() -> u64 {
    10_000
}
fn default_heartbeat_max_missed() -> u32 {
    3
}
fn default_handshake_timeout_ms() -> u64 {
    5_000
}
fn default_max_frame_payload_bytes() -> usize {
    crate::protocol::DEFAULT_MAX_FRAME_PAYLOAD_BYTES
}
fn default_pool_wait_ms() -> u64 {
    2_000
}

impl ServerConfig {
    /// Reads, parses and validates a server config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_str(path, &read(path)?)
    }

    /// Parses and validates `text`; `path` is used in error messages.
    pub fn from_str(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Self = parse(path, text)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks every rule that serde cannot express.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |field: String, msg: String| Err(ConfigError::new(path, field, msg));
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
        socket_addr(path, "tunnel_listener.address", &tl.address)?;
        if !(100..=600_000).contains(&tl.handshake_timeout_ms) {
            return err(
                "tunnel_listener.handshake_timeout_ms".into(),
                format!("{} is outside 100..=600000", tl.handshake_timeout_ms),
            );
        }
        if !(256..=crate::protocol::MAX_WIRE_PAYLOAD_BYTES).contains(&tl.max_frame_payload_bytes) {
            return err(
                "tunnel_listener.max_frame_payload_bytes".into(),
                format!("{} is outside 256..=65535", tl.max_frame_payload_bytes),
            );
        }
        if tl.tls_context.is_some() {
            return err(
                "tunnel_listener.tls_context".into(),
                "TLS is not supported by this version of ringtun yet".into(),
            );
        }
        if let Some(admin) = &self.admin {
            socket_addr(path, "admin.address", &admin.address)?;
        }
        let mut names = HashSet::new();
        let mut frontend_addrs = HashSet::new();
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
                CredentialPolicy::None => {}
                CredentialPolicy::Token => {
                    if c.credentials.is_empty() {
                        return err(
                            at("credentials"),
                            "credential_policy \"token\" needs at least one credential".into(),
                        );
                    }
                    if c.credentials.iter().any(Secret::is_empty) {
                        return err(at("credentials"), "a credential is empty".into());
                    }
                }
                CredentialPolicy::Hmac => {
                    return err(
                        at("credential_policy"),
                        "\"hmac\" is not supported by this version of ringtun yet".into(),
                    );
                }
            }
            if c.pool_wait_ms > 600_000 {
                return err(
                    at("pool_wait_ms"),
                    format!("{} is more than 600000", c.pool_wait_ms),
                );
            }
            for (j, f) in c.frontends.iter().enumerate() {
                let field = at(&format!("frontends[{j}].address"));
                let addr = socket_addr(path, &field, &f.address)?;
                if addr.port() != 0 && !frontend_addrs.insert(addr) {
                    return err(field, format!("{addr} is used by another frontend"));
                }
            }
        }
        Ok(())
    }

    /// The tunnel listener address (validated).
    pub fn tunnel_address(&self) -> SocketAddr {
        self.tunnel_listener
            .address
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 7070)))
    }
}

/// Cluster and listener names: short, printable, safe in logs and metric labels.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(crate) fn socket_addr(
    path: &Path,
    field: &str,
    value: &str,
) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::new(
            path,
            field,
            format!("{value:?} is not an ip:port address (e.g. 0.0.0.0:7070)"),
        )
    })
}

//! The agent's config file: its structs with their defaults, and loading (parse, validate, resolve
//! credentials). `tunnels[]` entries are MOSN's `AgentBootstrapConfig`. The rules are in `agent_rules`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::server::{resolve_path, TlsMinVersion};
use super::{default_true, defaults, parse, read, AdminConfig, ConfigError, IoBackend};
use crate::secret::Secret;

/// `ringtun agent --config FILE`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This agent's name in every cluster it joins: 1 to 255 bytes, no control characters.
    /// Default (absent or `""`): the machine's host name.
    #[serde(default)]
    pub host_name: String,
    /// The agent id announced with `host_name` (together they are the host's identity on a
    /// server: balancing affinity and metric series follow it): 1 to 128 of
    /// `A-Z a-z 0-9 . _ - :`. Default (absent or `""`): derived from `host_name`, so every
    /// start of this agent on this machine is the same host.
    #[serde(default)]
    pub agent_id: String,
    /// Share of a cluster's sessions this agent takes relative to other hosts, a relative number.
    /// Default 10; 1 to 10000.
    #[serde(default = "default_weight")]
    pub weight: i64,
    /// Threads running sessions, a count. Default 1; `0` means one per CPU core; at most 1024.
    #[serde(default = "default_agent_workers")]
    pub workers: usize,
    /// I/O backend: `auto` (default), `uring` or `epoll`. No unit.
    #[serde(default)]
    pub io_backend: IoBackend,
    /// Pin worker thread i to CPU i (modulo the CPUs this process may use). Default false.
    #[serde(default)]
    pub cpu_affinity: bool,
    /// io_uring submission queue entries per worker (power of two, 16 to 32768). Default 256.
    #[serde(default = "super::default_uring_entries")]
    pub uring_entries: u32,
    /// Size of one pump buffer of a busy session direction, in bytes (4096 to 4194304). Default 65536.
    #[serde(default = "super::default_pump_buffer_bytes")]
    pub pump_buffer_bytes: usize,
    /// Pipe a busy plaintext session direction splices through (either backend), in bytes
    /// (0 = never splice, else 4096 to 1048576). Default 1048576.
    #[serde(default = "super::default_splice_pipe_bytes")]
    pub splice_pipe_bytes: usize,
    /// Admin HTTP endpoint. Default: none (`null` or absent: no admin endpoint).
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Named local targets that sessions are handed to; names must be unique. Default: empty.
    #[serde(default)]
    pub listeners: Vec<HostingListenerConfig>,
    /// One entry per cluster (and server group) this agent serves. Required: at least one.
    #[serde(default)]
    pub tunnels: Vec<TunnelConfig>,
}

/// A hosting listener: where a tunnel's sessions go at the edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostingListenerConfig {
    /// Name that `tunnels[].hosting_listener` refers to: 1 to 128 of `A-Z a-z 0-9 . _ -`.
    /// Required; no default.
    pub name: String,
    /// `host:port` of the edge service (IPv6 in brackets; port 1 to 65535). Required; no default.
    pub backend: String,
    /// Time to connect to the backend, in milliseconds. Default 5000; 1 to 600000.
    #[serde(default = "default_backend_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// PROXY protocol header written to the backend before each session's bytes, naming the
    /// frontend client and the frontend: `""` (default, none), `"v1"` or `"v2"`.
    #[serde(default)]
    pub send_proxy_protocol: super::SendProxyProtocol,
    /// A session of this listener that moves no byte either way this long is ended (both
    /// sockets shut down), in milliseconds; `0` = never. Default 3600000; 0, or 100 to 86400000.
    #[serde(default = "super::default_session_idle_timeout_ms")]
    pub session_idle_timeout_ms: u64,
    /// What the backend speaks: `"tcp"` (default) or `"udp"`. A UDP listener takes only UDP
    /// flows (one connected UDP socket to `backend` per flow, ended after the start's idle
    /// timeout); a session start of the other protocol is refused and its connection closed.
    #[serde(default)]
    pub protocol: crate::protocol::TransportProtocol,
}

impl HostingListenerConfig {
    /// `session_idle_timeout_ms` as a bound (`None`: never).
    pub fn session_idle_timeout(&self) -> Option<std::time::Duration> {
        super::idle_timeout(self.session_idle_timeout_ms)
    }
}

/// MOSN's `AgentBootstrapConfig`, with ringtun's additions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// A disabled tunnel is skipped (it is still validated). Default `true`.
    #[serde(default = "default_true")]
    pub enable: bool,
    /// Idle data connections kept to each server, a count. Default 4; 1 to 1024.
    #[serde(default = "default_connection_num")]
    pub connection_num: u32,
    /// Most data connections to one server (idle ones plus those carrying sessions), a count:
    /// the bound on this agent's concurrent sessions through that server. Beyond the
    /// `connection_num` kept idle, connections are opened when the server asks (pool request)
    /// and let go once idle for `extra_connection_idle_duration_ms`. Default: the larger of 16384 and `connection_num`;
    /// `connection_num` to 65536.
    #[serde(default)]
    pub max_connection_num: Option<u32>,
    /// How long a connection beyond `connection_num` (opened on a pool request) may wait idle
    /// before the agent asks the server to let it go, in milliseconds. While sessions keep
    /// arriving such a connection is replaced after each one like the others; this is how soon
    /// a pool grown by a burst shrinks back. Default 10000; 100 to 3600000.
    #[serde(default = "default_extra_connection_idle_duration_ms")]
    pub extra_connection_idle_duration_ms: u64,
    /// The server-side cluster to join: 1 to 128 of `A-Z a-z 0-9 . _ -`. Required; no default.
    pub cluster: String,
    /// The `listeners[].name` that sessions are handed to. Required; no default.
    pub hosting_listener: String,
    /// Servers as `host:port`; every address a name resolves to is a server. Default: empty,
    /// allowed only with a `dynamic_server_lister`. A (`cluster`, server) pair may appear once.
    #[serde(default)]
    pub server_list: Vec<String>,
    /// Dynamic server discovery. Default: none (`null`, absent, or lister `""`).
    #[serde(default)]
    pub dynamic_server_list_config: Option<DynamicServerListConfig>,
    /// Attempts per connection before giving up, a count; `-1` or `0` retry forever.
    /// Default -1; at least -1.
    #[serde(default = "default_connect_retry_times")]
    pub connect_retry_times: i64,
    /// First retry delay, doubled per failure, in milliseconds. Default 1000; 1 to 3600000.
    #[serde(default = "default_reconnect_base_duration_ms")]
    pub reconnect_base_duration_ms: u64,
    /// Cap of the retry delay, in milliseconds. Default 30000; `reconnect_base_duration_ms` to
    /// 3600000.
    #[serde(default = "default_reconnect_max_duration_ms")]
    pub reconnect_max_duration_ms: u64,
    /// Time to connect and complete the init handshake, in milliseconds. Default 5000;
    /// 1 to 600000.
    #[serde(default = "default_connect_timeout_duration_ms")]
    pub connect_timeout_duration_ms: u64,
    /// Credential policy announced in the init (no unit): `""` (default, none), `token` or
    /// `hmac` (the credential is then the shared secret the init's HMAC is keyed with). The
    /// server's cluster decides what it requires.
    #[serde(default)]
    pub credential_policy: String,
    /// The credential itself (non-empty string). Default: none. At most one of `credential`,
    /// `credential_file`, `credential_env`; `token` and `hmac` need one of them.
    #[serde(default)]
    pub credential: Option<Secret>,
    /// Path of a file whose contents (trimmed, non-empty) are the credential; a relative path is
    /// relative to the config file's directory. Default: none.
    #[serde(default)]
    pub credential_file: Option<String>,
    /// Name of an environment variable holding the credential (trimmed, non-empty).
    /// Default: none.
    #[serde(default)]
    pub credential_env: Option<String>,
    /// Time in-flight sessions get to finish when the agent stops, in milliseconds. Default 15000;
    /// 0 to 3600000.
    #[serde(default = "default_graceful_close_max_wait_duration_ms")]
    pub graceful_close_max_wait_duration_ms: u64,
    /// TLS to the servers. Default: none (plaintext).
    #[serde(default)]
    pub tls_context: Option<AgentTlsConfig>,
    /// What the servers of this tunnel are (no unit): `auto` (default; a server whose success
    /// response carries no ringtun fields is a MOSN server), `ringtun` or `mosn`. With a MOSN
    /// server a data connection is a raw session from its `{"status":1}` on, and the aside
    /// connection sends nothing but MOSN's graceful close.
    #[serde(default)]
    pub server_type: ServerType,
}

/// What a tunnel's servers are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerType {
    /// Told by the first data connection's response (MOSN's has no ringtun fields).
    #[default]
    Auto,
    /// ringtun servers: session start frames, heartbeats, the aside protocol.
    Ringtun,
    /// MOSN tunnel servers (`tunnel` network filter).
    Mosn,
}

/// Dynamic server discovery: `{"dynamic_server_lister": ""}` (none), `"dns"` or `"file"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicServerListConfig {
    /// Which lister (no unit): `""` (default, none), `dns` (re-resolve `dns_name`) or `file`
    /// (re-read `path`).
    #[serde(default)]
    pub dynamic_server_lister: String,
    /// `host:port` to resolve; every address is a server. Required with lister `dns`, not allowed
    /// with another. Default: none.
    #[serde(default)]
    pub dns_name: Option<String>,
    /// Path of a file holding a JSON array of `host:port`. Required with lister `file`, not
    /// allowed with another. Default: none.
    #[serde(default)]
    pub path: Option<String>,
    /// Re-resolve / re-read interval, in milliseconds. Default 5000; 100 to 3600000.
    #[serde(default = "default_refresh_interval_ms")]
    pub refresh_interval_ms: u64,
}

/// Agent-side TLS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTlsConfig {
    /// PEM file of CAs that server certificates must chain to (path). Default: none (system roots).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Name to verify the server certificate against (SNI). Default: none (the host of the
    /// configured server address — `server_list` entry, `dns_name` or file entry — not the
    /// address it resolves to).
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM file of the agent's client certificate chain (path). Default: none (no client
    /// certificate).
    #[serde(default)]
    pub cert_chain_file: Option<String>,
    /// PEM file of the agent's client private key (path). Default: none; required with
    /// `cert_chain_file`.
    #[serde(default)]
    pub private_key_file: Option<String>,
    /// Oldest TLS version accepted (no unit): `"1.3"` (default) or `"1.2"`.
    #[serde(default)]
    pub min_version: TlsMinVersion,
}

fn default_weight() -> i64 {
    defaults::AGENT_WEIGHT
}
fn default_agent_workers() -> usize {
    defaults::AGENT_WORKERS
}
fn default_backend_connect_timeout_ms() -> u64 {
    defaults::BACKEND_CONNECT_TIMEOUT_MS
}
fn default_connection_num() -> u32 {
    defaults::CONNECTION_NUM
}
fn default_connect_retry_times() -> i64 {
    defaults::CONNECT_RETRY_TIMES
}
fn default_reconnect_base_duration_ms() -> u64 {
    defaults::RECONNECT_BASE_DURATION_MS
}
fn default_reconnect_max_duration_ms() -> u64 {
    defaults::RECONNECT_MAX_DURATION_MS
}
fn default_extra_connection_idle_duration_ms() -> u64 {
    defaults::EXTRA_CONNECTION_IDLE_DURATION_MS
}
fn default_connect_timeout_duration_ms() -> u64 {
    defaults::CONNECT_TIMEOUT_DURATION_MS
}
fn default_graceful_close_max_wait_duration_ms() -> u64 {
    defaults::GRACEFUL_CLOSE_MAX_WAIT_DURATION_MS
}
fn default_refresh_interval_ms() -> u64 {
    defaults::REFRESH_INTERVAL_MS
}

/// Default `max_connection_num` (when it is not below `connection_num`).
pub const DEFAULT_MAX_CONNECTION_NUM: u32 = defaults::MAX_CONNECTION_NUM;

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
        if let Some(admin) = &mut config.admin {
            admin.resolve(path)?;
        }
        Ok(config)
    }

    /// The agent id this agent announces: `agent_id`, or else one derived from `host_name`
    /// (stable across restarts; different host names give different ids).
    pub fn effective_agent_id(&self) -> String {
        if !self.agent_id.is_empty() {
            return self.agent_id.clone();
        }
        use sha2::Digest;
        let digest = sha2::Sha256::new()
            .chain_update(b"ringtun agent id v1\0")
            .chain_update(self.host_name.as_bytes())
            .finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Replaces `credential_file` / `credential_env` by the credential they hold, and makes
    /// relative `tls_context` paths relative to the config file. A relative
    /// `credential_file` is taken relative to the directory of the config file at `path`.
    fn resolve_credentials(&mut self, path: &Path) -> Result<(), ConfigError> {
        let dir = path.parent().unwrap_or_else(|| Path::new(""));
        for (i, t) in self.tunnels.iter_mut().enumerate() {
            if let Some(tls) = &mut t.tls_context {
                for file in [
                    &mut tls.ca_file,
                    &mut tls.cert_chain_file,
                    &mut tls.private_key_file,
                ]
                .into_iter()
                .flatten()
                {
                    resolve_path(path, file);
                }
            }
            if let Some(file) = &t.credential_file {
                let field = format!("tunnels[{i}].credential_file");
                let full = dir.join(file);
                let text = std::fs::read_to_string(&full).map_err(|e| {
                    ConfigError::new(
                        path,
                        field.clone(),
                        format!("cannot read {file:?}: {e} (at {})", full.display()),
                    )
                })?;
                let value = text.trim();
                if value.is_empty() {
                    return Err(ConfigError::new(
                        path,
                        field,
                        format!("{file:?} holds no credential (at {})", full.display()),
                    ));
                }
                t.credential = Some(Secret::new(value));
            } else if let Some(var) = &t.credential_env {
                let field = format!("tunnels[{i}].credential_env");
                let value = std::env::var(var).map_err(|_| {
                    ConfigError::new(
                        path,
                        field.clone(),
                        format!("environment variable {var:?} is not set"),
                    )
                })?;
                let value = value.trim();
                if value.is_empty() {
                    return Err(ConfigError::new(
                        path,
                        field,
                        format!("environment variable {var:?} is empty"),
                    ));
                }
                t.credential = Some(Secret::new(value));
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
            .unwrap_or(DEFAULT_MAX_CONNECTION_NUM.max(self.connection_num))
    }
}

fn machine_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "ringtun-agent".to_string())
}

//! The server's config file: its structs with their defaults, and loading (parse, validate, resolve
//! paths). The rules are in `server_rules`.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{defaults, parse, read, AdminConfig, ConfigError, IoBackend};
use crate::secret::Secret;

/// `ringtun server --config FILE`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Worker threads serving frontends and sessions, a count. Default `0`: one per CPU core.
    /// At most 1024.
    #[serde(default)]
    pub workers: usize,
    /// I/O backend of the workers: `auto` (default), `uring` or `epoll`. No unit.
    #[serde(default)]
    pub io_backend: IoBackend,
    /// Interval between pings on an idle data connection, in milliseconds. Default 10000;
    /// 100 to 3600000.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Unanswered pings after which an idle data connection is closed, a count. Default 3; 1 to 100.
    #[serde(default = "default_heartbeat_max_missed")]
    pub heartbeat_max_missed: u32,
    /// Grace time of a drain (SIGTERM): sessions in flight get this long to finish, in
    /// milliseconds (0 to 3600000). Default 15000.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
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
    /// Where agents connect. Required; no default.
    pub tunnel_listener: TunnelListenerConfig,
    /// Admin HTTP endpoint. Default: none (`null` or absent: no admin endpoint).
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// The services agents register into. Required: at least one; names must be unique.
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
}

/// The listener agents dial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelListenerConfig {
    /// `ip:port` to listen on, e.g. `0.0.0.0:7070`; port 0 picks a free port. Required; no default.
    pub address: String,
    /// Time an agent has to complete its init after connecting, in milliseconds, counted from
    /// accept (the listener defers accept until the first bytes, at most about 1 s). Default
    /// 5000; 100 to 600000.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Largest frame payload accepted from an agent, in bytes. Default 16384; 256 to 65535.
    #[serde(default = "default_max_frame_payload_bytes")]
    pub max_frame_payload_bytes: usize,
    /// Handshakes in progress at once; connections beyond are closed at accept (counted as
    /// `overloaded`). Default 4096; 1 to 1000000.
    #[serde(default = "default_max_concurrent_handshakes")]
    pub max_concurrent_handshakes: usize,
    /// Handshakes in progress at once from one source IP address (IPv4-mapped IPv6 counted as
    /// IPv4); connections beyond are closed at accept (counted as `overloaded_per_ip`), so one
    /// address cannot take every handshake slot. Default 256; 1 to 1000000.
    #[serde(default = "default_max_handshakes_per_ip")]
    pub max_handshakes_per_ip: usize,
    /// Host identities (agents) registered from one source IP address over all clusters; the
    /// connection that would create one more is answered status 0 (`over_limit`). Default 1024;
    /// 1 to 1000000.
    #[serde(default = "default_max_hosts_per_ip")]
    pub max_hosts_per_ip: usize,
    /// Aside connections from one source IP address over all clusters; one more is answered
    /// status 0 (`over_limit`). Default 1024; 1 to 1000000.
    #[serde(default = "default_max_aside_connections_per_ip")]
    pub max_aside_connections_per_ip: usize,
    /// Accepted `hmac` credentials remembered (each until its timestamp is out of the clock
    /// skew, at most about 10 minutes) to refuse replays; when full, new `hmac` handshakes are
    /// refused with status 0 rather than forgetting a live one. Default 1048576; 1 to 16777216.
    #[serde(default = "default_hmac_replay_cache_entries")]
    pub hmac_replay_cache_entries: usize,
    /// Time a legacy (MOSN) agent's data connection waits after its `{"status":1}` before it
    /// can be leased, in milliseconds; it ends early once the agent sends a byte (MOSN only
    /// writes after it read the response). Keeps session bytes out of the read in which MOSN
    /// takes the response (MOSN never drains them from the slot's buffer). Default 200;
    /// 0 to 10000.
    #[serde(default = "default_legacy_lease_delay_ms")]
    pub legacy_lease_delay_ms: u64,
    /// Connections parked as MOSN aside connections (silent, no init) per source IP, a count:
    /// a silent connection from an IP with a registered legacy host holds no handshake permit
    /// but one of these. Default 16; 1 to 4096.
    #[serde(default = "default_max_legacy_asides_per_ip")]
    pub max_legacy_asides_per_ip: usize,
    /// A legacy (MOSN) connection, idle data connection or parked aside, that carries nothing
    /// this long is closed (MOSN's own server: 90 s), in milliseconds; `0` = never. Legacy
    /// connections get no heartbeat; TCP keepalive finds dead peers. Default 90000; 0, or 1000
    /// to 86400000.
    #[serde(default = "default_legacy_idle_timeout_ms")]
    pub legacy_idle_timeout_ms: u64,
    /// TLS for tunnel connections. Default: none (plaintext).
    #[serde(default)]
    pub tls_context: Option<ServerTlsConfig>,
}

impl TunnelListenerConfig {
    /// `legacy_idle_timeout_ms` as a bound (`None`: never).
    pub fn legacy_idle_timeout(&self) -> Option<std::time::Duration> {
        (self.legacy_idle_timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(self.legacy_idle_timeout_ms))
    }
}

/// Server-side TLS files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM file of the server certificate chain (path). Required; no default.
    pub cert_chain_file: String,
    /// PEM file of the server private key (path). Required; no default.
    pub private_key_file: String,
    /// PEM file of a CA (path); when set, agents must present a certificate signed by it.
    /// Default: none (no client certificates).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Oldest TLS version accepted (no unit): `"1.3"` (default) or `"1.2"`.
    #[serde(default)]
    pub min_version: TlsMinVersion,
}

/// The oldest TLS version a `tls_context` accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsMinVersion {
    /// TLS 1.2 and 1.3.
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only (default).
    #[default]
    #[serde(rename = "1.3")]
    V1_3,
}

/// Makes a relative path in a config file relative to that file's directory.
pub(super) fn resolve_path(config_file: &Path, value: &mut String) {
    let p = Path::new(value.as_str());
    if p.is_relative() && !value.is_empty() {
        if let Some(dir) = config_file.parent().filter(|d| !d.as_os_str().is_empty()) {
            *value = dir.join(p).display().to_string();
        }
    }
}

/// One named service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The name agents register under (`cluster` in the agent's tunnel): 1 to 128 of
    /// `A-Z a-z 0-9 . _ -`, unique among clusters. Required; no default.
    pub name: String,
    /// How a frontend picks a host (no unit): `round_robin`, `weighted_round_robin` (default),
    /// `least_active`, `random`, `client_ip_hash`.
    #[serde(default)]
    pub lb_type: LbType,
    /// Credential required from agents (no unit): `""` none (default), `token`, `hmac`.
    #[serde(default)]
    pub credential_policy: CredentialPolicy,
    /// Accepted credentials under `token`, shared HMAC secrets under `hmac` (strings, none
    /// empty). Default: empty. Required (at least one) under `token` and `hmac`; must be empty
    /// under `""`.
    #[serde(default)]
    pub credentials: Vec<Secret>,
    /// Client-facing listeners of this cluster. Default: empty (agents can register, but no
    /// client can reach them).
    #[serde(default)]
    pub frontends: Vec<FrontendConfig>,
    /// Data connections one agent (host) may hold in this cluster; more are refused at the
    /// handshake (status 0). Each carries at most one session, so this bounds an agent's
    /// concurrent sessions. Default 16384; 1 to 65536.
    #[serde(default = "default_max_data_connections_per_agent")]
    pub max_data_connections_per_agent: u32,
    /// Data connections all agents together may hold in this cluster. Default 65536; 1 to 10000000.
    #[serde(default = "default_max_data_connections")]
    pub max_data_connections: u32,
    /// Frontend sessions (waiting or running) at once in this cluster, over all workers; more are
    /// closed at accept. Default 100000; 1 to 10000000.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u64,
    /// Host identities (agents) this cluster holds at once; the connection that would add one
    /// more is answered status 0 (`over_limit`). Default 10000; 1 to 1000000.
    #[serde(default = "default_max_hosts")]
    pub max_hosts: usize,
    /// Aside connections one host may hold in this cluster (an agent opens one per server);
    /// one more is answered status 0 (`over_limit`). Default 4; 1 to 1024.
    #[serde(default = "default_max_aside_connections_per_agent")]
    pub max_aside_connections_per_agent: usize,
    /// How long a frontend waits for an idle data connection before it is closed, in
    /// milliseconds. Default 2000; 0 (do not wait) to 600000.
    #[serde(default = "default_pool_wait_ms")]
    pub pool_wait_ms: u64,
    /// A session of this cluster that moves no byte either way this long is ended (both
    /// sockets shut down, its `max_sessions` slot freed), in milliseconds; `0` = never.
    /// Default 3600000; 0, or 100 to 86400000.
    #[serde(default = "super::default_session_idle_timeout_ms")]
    pub session_idle_timeout_ms: u64,
    /// What the frontends carry: `"tcp"` (default) or `"udp"`. A UDP cluster's frontends are
    /// UDP sockets; each client address on a frontend is a flow, carried over its own data
    /// connection to an agent listener with `protocol` `"udp"`. Its flows count against
    /// `max_sessions`.
    #[serde(default)]
    pub protocol: crate::protocol::TransportProtocol,
    /// A UDP flow with no datagram either way this long is ended (its data connection pooled
    /// again), in milliseconds. Default 60000; 100 to 86400000.
    #[serde(default = "super::udp::default_udp_flow_idle_timeout_ms")]
    pub udp_flow_idle_timeout_ms: u64,
    /// Largest client datagram a UDP frontend carries, in bytes; a larger one is dropped and
    /// counted. Default 65507; 1 to 65507.
    #[serde(default = "super::udp::default_max_udp_datagram_bytes")]
    pub max_udp_datagram_bytes: usize,
    /// UDP flows one client IP address may hold at once, per worker (a flow from a new address
    /// beyond it is dropped and counted). Default 256; 1 to 1000000.
    #[serde(default = "super::udp::default_max_udp_flows_per_client_ip")]
    pub max_udp_flows_per_client_ip: u32,
    /// Client datagrams queued per UDP flow while its data connection is being leased or is
    /// slow; when full the oldest is dropped and counted. Default 256; 1 to 65536.
    #[serde(default = "super::udp::default_max_udp_queued_datagrams_per_flow")]
    pub max_udp_queued_datagrams_per_flow: usize,
}

impl ClusterConfig {
    /// `session_idle_timeout_ms` as a bound (`None`: never).
    pub fn session_idle_timeout(&self) -> Option<std::time::Duration> {
        super::idle_timeout(self.session_idle_timeout_ms)
    }
}

/// A client-facing listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendConfig {
    /// `ip:port` to listen on; port 0 picks a free port. Must not overlap another listen address
    /// of this server. Required; no default.
    pub address: String,
    /// Read a PROXY protocol header (v1 or v2, detected) from each connection before its
    /// bytes; its source becomes the session's client address. Default false.
    #[serde(default)]
    pub accept_proxy_protocol: bool,
    /// Networks (CIDR, or a bare IP for one host) whose connections may send that header; any
    /// other connection is closed. Required (non-empty) with `accept_proxy_protocol`, else empty.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Time a connection has to send its whole PROXY header, in milliseconds. Default 5000;
    /// 100 to 600000.
    #[serde(default = "default_proxy_protocol_timeout_ms")]
    pub proxy_protocol_timeout_ms: u64,
}

fn default_proxy_protocol_timeout_ms() -> u64 {
    defaults::PROXY_PROTOCOL_TIMEOUT_MS
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
    /// HMAC-SHA256 over cluster, host name, agent id, a timestamp and a nonce, keyed by one of
    /// the cluster's `credentials`.
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
    defaults::HEARTBEAT_INTERVAL_MS
}
fn default_max_concurrent_handshakes() -> usize {
    defaults::MAX_CONCURRENT_HANDSHAKES
}
fn default_max_hosts_per_ip() -> usize {
    defaults::MAX_HOSTS_PER_IP
}
fn default_max_aside_connections_per_ip() -> usize {
    defaults::MAX_ASIDE_CONNECTIONS_PER_IP
}
fn default_max_hosts() -> usize {
    defaults::MAX_HOSTS
}
fn default_max_aside_connections_per_agent() -> usize {
    defaults::MAX_ASIDE_CONNECTIONS_PER_AGENT
}
fn default_max_handshakes_per_ip() -> usize {
    defaults::MAX_HANDSHAKES_PER_IP
}
fn default_hmac_replay_cache_entries() -> usize {
    defaults::HMAC_REPLAY_CACHE_ENTRIES
}
fn default_max_data_connections_per_agent() -> u32 {
    defaults::MAX_DATA_CONNECTIONS_PER_AGENT
}
fn default_max_data_connections() -> u32 {
    defaults::MAX_DATA_CONNECTIONS
}
fn default_max_sessions() -> u64 {
    defaults::MAX_SESSIONS
}
fn default_drain_timeout_ms() -> u64 {
    defaults::DRAIN_TIMEOUT_MS
}
fn default_heartbeat_max_missed() -> u32 {
    defaults::HEARTBEAT_MAX_MISSED
}
fn default_handshake_timeout_ms() -> u64 {
    defaults::HANDSHAKE_TIMEOUT_MS
}
fn default_legacy_idle_timeout_ms() -> u64 {
    defaults::LEGACY_IDLE_TIMEOUT_MS
}
fn default_max_legacy_asides_per_ip() -> usize {
    defaults::MAX_LEGACY_ASIDES_PER_IP
}
fn default_legacy_lease_delay_ms() -> u64 {
    defaults::LEGACY_LEASE_DELAY_MS
}
fn default_max_frame_payload_bytes() -> usize {
    defaults::MAX_FRAME_PAYLOAD_BYTES
}
fn default_pool_wait_ms() -> u64 {
    defaults::POOL_WAIT_MS
}

impl ServerConfig {
    /// Reads, parses and validates a server config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_str(path, &read(path)?)
    }

    /// Parses and validates `text`; `path` is used in error messages.
    pub fn from_str(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut config: Self = parse(path, text)?;
        config.validate(path)?;
        if let Some(admin) = &mut config.admin {
            admin.resolve(path)?;
        }
        if let Some(tls) = &mut config.tunnel_listener.tls_context {
            resolve_path(path, &mut tls.cert_chain_file);
            resolve_path(path, &mut tls.private_key_file);
            if let Some(ca) = &mut tls.ca_file {
                resolve_path(path, ca);
            }
        }
        Ok(config)
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

//! Every default value of both config files and of the runtime options, in one place.
//!
//! The runtime (`rt`) and the data plane read their defaults from here, never the other way
//! round; the config reference (`docs/config.md`) states the same numbers. This module holds
//! constants only.

// Runtime options (both files).
/// io_uring submission queue entries per worker.
pub const URING_ENTRIES: u32 = 256;
/// Size of one busy session direction's pump buffer, bytes.
pub const PUMP_BUFFER_BYTES: usize = 64 * 1024;
/// Size of the pipe a busy plaintext direction splices through, bytes (0 turns splice off).
pub const SPLICE_PIPE_BYTES: usize = 1024 * 1024;

// Server.
pub const HEARTBEAT_INTERVAL_MS: u64 = 10_000;
pub const HEARTBEAT_MAX_MISSED: u32 = 3;
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
pub const MAX_CONCURRENT_HANDSHAKES: usize = 4096;
/// Handshakes in progress at once from one source IP address.
pub const MAX_HANDSHAKES_PER_IP: usize = 256;
/// Accepted `hmac` credentials remembered at once (about 64 MiB when full).
pub const HMAC_REPLAY_CACHE_ENTRIES: usize = 1024 * 1024;
/// Settle time of a legacy (MOSN) data connection before it can be leased.
pub const LEGACY_LEASE_DELAY_MS: u64 = 200;
/// MOSN aside connections parked per source IP.
pub const MAX_LEGACY_ASIDES_PER_IP: usize = 16;
/// Idle bound of legacy (MOSN) connections, as MOSN's server's `connection_idle_timeout`.
pub const LEGACY_IDLE_TIMEOUT_MS: u64 = 90_000;
/// TCP keepalive of tunnel connections: first probe after this idle time, then every
/// `TUNNEL_KEEPALIVE_INTERVAL_SECS`, `TUNNEL_KEEPALIVE_RETRIES` unanswered probes close it.
pub const TUNNEL_KEEPALIVE_IDLE_SECS: u64 = 30;
pub const TUNNEL_KEEPALIVE_INTERVAL_SECS: u64 = 10;
pub const TUNNEL_KEEPALIVE_RETRIES: u32 = 3;
pub const MAX_DATA_CONNECTIONS_PER_AGENT: u32 = 16_384;
pub const MAX_DATA_CONNECTIONS: u32 = 65_536;
pub const MAX_SESSIONS: u64 = 100_000;
/// Host identities (agents) one cluster may hold.
pub const MAX_HOSTS: usize = 10_000;
/// Aside connections one host may hold in one cluster (an agent opens one per server).
pub const MAX_ASIDE_CONNECTIONS_PER_AGENT: usize = 4;
/// Host identities created from one source IP address, over all clusters.
pub const MAX_HOSTS_PER_IP: usize = 1024;
/// Aside connections from one source IP address, over all clusters.
pub const MAX_ASIDE_CONNECTIONS_PER_IP: usize = 1024;
pub const DRAIN_TIMEOUT_MS: u64 = 15_000;
pub const MAX_FRAME_PAYLOAD_BYTES: usize = crate::protocol::DEFAULT_MAX_FRAME_PAYLOAD_BYTES;
pub const POOL_WAIT_MS: u64 = 2_000;
/// Time a frontend connection has to send its PROXY header (`accept_proxy_protocol`).
pub const PROXY_PROTOCOL_TIMEOUT_MS: u64 = 5_000;
/// A UDP flow with no datagram either way this long is ended (`clusters[].udp_flow_idle_timeout_ms`).
pub const UDP_FLOW_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Largest client datagram a UDP frontend carries; larger are dropped and counted (the IPv4
/// UDP maximum).
pub const MAX_UDP_DATAGRAM_BYTES: usize = crate::protocol::datagram::MAX_DATAGRAM_BYTES;
/// UDP flows one client IP address may hold at once on one worker of one cluster.
pub const MAX_UDP_FLOWS_PER_CLIENT_IP: u32 = 256;
/// Client datagrams queued per UDP flow while its data connection is slow (the oldest is
/// dropped when full).
pub const MAX_UDP_QUEUED_DATAGRAMS_PER_FLOW: usize = 256;

// Agent.
pub const AGENT_WEIGHT: i64 = 10;
pub const AGENT_WORKERS: usize = 1;
pub const BACKEND_CONNECT_TIMEOUT_MS: u64 = 5_000;
pub const CONNECTION_NUM: u32 = 4;
/// -1: retry forever.
pub const CONNECT_RETRY_TIMES: i64 = -1;
pub const RECONNECT_BASE_DURATION_MS: u64 = 1_000;
pub const RECONNECT_MAX_DURATION_MS: u64 = 30_000;
pub const EXTRA_CONNECTION_IDLE_DURATION_MS: u64 = 10_000;
pub const CONNECT_TIMEOUT_DURATION_MS: u64 = 5_000;
pub const GRACEFUL_CLOSE_MAX_WAIT_DURATION_MS: u64 = 15_000;
pub const REFRESH_INTERVAL_MS: u64 = 5_000;
/// `max_connection_num` when it is not below `connection_num`.
pub const MAX_CONNECTION_NUM: u32 = 16_384;
/// TCP keepalive of frontend and backend (session) sockets: first probe after this idle time,
/// then every `SESSION_KEEPALIVE_INTERVAL_SECS`, `SESSION_KEEPALIVE_RETRIES` unanswered probes
/// close it.
pub const SESSION_KEEPALIVE_IDLE_SECS: u64 = 60;
pub const SESSION_KEEPALIVE_INTERVAL_SECS: u64 = 10;
pub const SESSION_KEEPALIVE_RETRIES: u32 = 6;
/// `TCP_USER_TIMEOUT` of tunnel connections (both ends): data unacknowledged this long closes
/// the connection (also bounds the keepalive probes: idle + interval × retries).
pub const TUNNEL_USER_TIMEOUT_MS: u64 = 60_000;
/// A session that moves no byte either way this long is ended (Envoy's tcp_proxy default);
/// `clusters[].session_idle_timeout_ms` (server), `listeners[].session_idle_timeout_ms` (agent).
pub const SESSION_IDLE_TIMEOUT_MS: u64 = 3_600_000;

//! Frame payload types. Field names and order match MOSN's Go structs, so `serde_json` writes the
//! same bytes MOSN does; unknown JSON fields are ignored on decode, as Go's decoder does.

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The payload kind carried in header byte 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flag {
    /// MOSN `ConnectionInitInfo` (agent → server, request).
    Init,
    /// MOSN `ConnectionInitResponse` (server → agent, response).
    InitResponse,
    /// MOSN `GracefulCloseOnewayRequest` (agent → server, request).
    GracefulClose,
    /// ringtun: a session begins on this data connection; raw bytes follow (server → agent).
    SessionStart,
    /// ringtun: heartbeat probe (server → agent).
    Ping,
    /// ringtun: heartbeat answer (agent → server).
    Pong,
    /// ringtun: the agent's weight changed (agent → server, aside).
    WeightUpdate,
    /// ringtun: the server is stopping; move your pool elsewhere (server → agent, aside).
    Drain,
    /// ringtun: the server wants more data connections (server → agent, aside).
    PoolRequest,
}

impl Flag {
    /// Every flag, for tests and fuzzers.
    pub const ALL: [Flag; 9] = [
        Flag::Init,
        Flag::InitResponse,
        Flag::GracefulClose,
        Flag::SessionStart,
        Flag::Ping,
        Flag::Pong,
        Flag::WeightUpdate,
        Flag::Drain,
        Flag::PoolRequest,
    ];

    /// The header byte.
    pub fn byte(self) -> u8 {
        match self {
            Flag::Init => 0x01,
            Flag::InitResponse => 0x02,
            Flag::GracefulClose => 0x03,
            Flag::SessionStart => 0x10,
            Flag::Ping => 0x11,
            Flag::Pong => 0x12,
            Flag::WeightUpdate => 0x13,
            Flag::Drain => 0x14,
            Flag::PoolRequest => 0x15,
        }
    }

    /// The flag for a header byte, if it is one.
    pub fn from_byte(byte: u8) -> Option<Flag> {
        Flag::ALL.into_iter().find(|f| f.byte() == byte)
    }

    /// Whether frames of this kind carry the response type bytes.
    pub fn is_response(self) -> bool {
        matches!(self, Flag::InitResponse | Flag::Pong)
    }

    /// A short name for errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            Flag::Init => "ConnectionInitInfo",
            Flag::InitResponse => "ConnectionInitResponse",
            Flag::GracefulClose => "GracefulCloseOnewayRequest",
            Flag::SessionStart => "SessionStart",
            Flag::Ping => "Ping",
            Flag::Pong => "Pong",
            Flag::WeightUpdate => "WeightUpdate",
            Flag::Drain => "Drain",
            Flag::PoolRequest => "PoolRequest",
        }
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Init(ConnectionInitInfo),
    InitResponse(ConnectionInitResponse),
    GracefulClose(GracefulCloseOnewayRequest),
    SessionStart(SessionStart),
    Ping(Ping),
    Pong(Pong),
    WeightUpdate(WeightUpdate),
    Drain(Drain),
    PoolRequest(PoolRequest),
}

impl Frame {
    /// The flag this frame is sent with.
    pub fn flag(&self) -> Flag {
        match self {
            Frame::Init(_) => Flag::Init,
            Frame::InitResponse(_) => Flag::InitResponse,
            Frame::GracefulClose(_) => Flag::GracefulClose,
            Frame::SessionStart(_) => Flag::SessionStart,
            Frame::Ping(_) => Flag::Ping,
            Frame::Pong(_) => Flag::Pong,
            Frame::WeightUpdate(_) => Flag::WeightUpdate,
            Frame::Drain(_) => Flag::Drain,
            Frame::PoolRequest(_) => Flag::PoolRequest,
        }
    }
}

/// MOSN's `ConnectionInitInfo`: the first frame an agent sends on every connection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionInitInfo {
    pub cluster_name: String,
    pub weight: i64,
    pub host_name: String,
    pub credential_policy: String,
    pub credential: Secret,
    /// MOSN sends `null` or a free-form map; ringtun agents put their extension under `ringtun`.
    pub extra: Option<InitExtra>,
}

impl ConnectionInitInfo {
    /// The ringtun extension, when the agent announced one.
    pub fn ringtun(&self) -> Option<&RingtunInit> {
        self.extra.as_ref().and_then(|e| e.ringtun.as_ref())
    }
}

/// The `extra` map of an init. Keys other than `ringtun` are kept so they round-trip.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InitExtra {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ringtun: Option<RingtunInit>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// What a connection is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Carries one session after it is leased.
    Data,
    /// The per-server control connection (graceful close, weight, drain, pool requests).
    Aside,
}

/// ringtun's extension inside `extra.ringtun` of an init.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingtunInit {
    pub version: u32,
    pub role: Role,
    /// Stable for the agent process; with `host_name` it identifies the host.
    pub agent_id: String,
    /// Most data connections the agent will open to this server on request (pool requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_num: Option<u32>,
}

/// Handshake status codes, as MOSN numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Status(pub i64);

impl Status {
    pub const UNKNOWN_FAILURE: Status = Status(0);
    pub const SUCCESS: Status = Status(1);
    pub const AUTH_FAILED: Status = Status(2);
    pub const VALIDATOR_NOT_FOUND: Status = Status(3);
    pub const CLUSTER_NOT_EXIST: Status = Status(4);

    /// What the status means, for logs.
    pub fn meaning(self) -> &'static str {
        match self.0 {
            0 => "unknown failure",
            1 => "success",
            2 => "authentication failed",
            3 => "credential policy (validator) not found",
            4 => "cluster does not exist",
            _ => "unrecognised status",
        }
    }
}

/// MOSN's `ConnectionInitResponse`. The ringtun fields are written only for ringtun agents, so a
/// MOSN agent gets exactly `{"status":N}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInitResponse {
    pub status: Status,
    /// ringtun: the id the server issued for this connection (graceful close names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<u64>,
    /// ringtun: how often the server pings this connection while idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    /// ringtun: the extension version both sides speak (the smaller of the two); 2 or more
    /// means framed sessions. Absent from version 1 servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_version: Option<u32>,
}

impl ConnectionInitResponse {
    /// A plain MOSN response.
    pub fn status(status: Status) -> Self {
        Self {
            status,
            connection_id: None,
            heartbeat_interval_ms: None,
            extension_version: None,
        }
    }
}

/// MOSN's `GracefulCloseOnewayRequest`. ringtun agents name their connections by the ids the
/// server issued; MOSN agents by address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GracefulCloseOnewayRequest {
    pub addresses: Vec<String>,
    pub cluster_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub connection_ids: Vec<u64>,
}

/// A session starts on a data connection; the frontend's raw bytes follow this frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStart {
    pub session_id: u64,
    /// The frontend client's address, `ip:port` (the one a trusted PROXY header named, if any).
    pub client_addr: String,
    /// The address the client connected to, `ip:port` (the frontend's, or what a PROXY header
    /// named): the destination of the PROXY header an agent writes to its backend. Absent from
    /// older servers; not written when unknown, so older agents see the frame they know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend_addr: Option<String>,
    /// `"udp"`: the connection carries one UDP flow (length-framed datagrams, `datagram`).
    /// Absent means TCP and is not written for it, so a TCP start is the frame older agents know.
    #[serde(default, skip_serializing_if = "TransportProtocol::is_tcp")]
    pub protocol: TransportProtocol,
}

/// What a cluster's frontends, a hosting listener and a session carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportProtocol {
    /// A byte stream (the default).
    #[default]
    Tcp,
    /// Datagrams; a session is one flow (one client address on one frontend).
    Udp,
}

impl TransportProtocol {
    pub fn is_tcp(&self) -> bool {
        *self == TransportProtocol::Tcp
    }

    /// As the config and the frame spell it.
    pub fn name(self) -> &'static str {
        match self {
            TransportProtocol::Tcp => "tcp",
            TransportProtocol::Udp => "udp",
        }
    }
}

/// Heartbeat probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    pub seq: u64,
}

/// Heartbeat answer, echoing the probe's sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub seq: u64,
}

/// The agent's new weight for one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightUpdate {
    pub cluster_name: String,
    pub weight: i64,
}

/// The server is draining: stop dialling it, finish sessions within `grace_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub grace_ms: u64,
}

/// The server asks for `count` more data connections for `cluster_name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRequest {
    pub cluster_name: String,
    pub count: u32,
}

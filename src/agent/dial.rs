//! Opening one tunnel connection: TCP connect, send the init, read the server's answer.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::protocol::{
    self, ConnectionInitInfo, DecodeError, Decoded, Frame, InitExtra, RingtunInit, Role, Status,
    EXTENSION_VERSION,
};
use crate::tls::{Channel, TlsError};

/// Largest frame the agent accepts from a server.
pub const MAX_SERVER_FRAME_PAYLOAD_BYTES: usize = 16 * 1024;

/// Why a tunnel connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot connect to {peer}: {source}")]
    Connect { peer: SocketAddr, source: io::Error },
    #[error("no answer from {peer} within {timeout_ms} ms")]
    Timeout { peer: SocketAddr, timeout_ms: u64 },
    #[error("connection to {peer} failed during the handshake: {source}")]
    Io { peer: SocketAddr, source: io::Error },
    #[error("{peer} closed the connection during the handshake")]
    Closed { peer: SocketAddr },
    #[error("{peer} answered with a bad frame: {source}")]
    Protocol {
        peer: SocketAddr,
        source: DecodeError,
    },
    #[error("{peer} answered the init with a {flag} frame")]
    Unexpected {
        peer: SocketAddr,
        flag: &'static str,
    },
    #[error("TLS handshake with {peer} failed: {source}")]
    Tls { peer: SocketAddr, source: TlsError },
    #[error("{}", refusal_text(*.status, cluster, *.peer, policy))]
    Refused {
        peer: SocketAddr,
        cluster: String,
        policy: String,
        status: Status,
    },
}

fn refusal_text(status: Status, cluster: &str, peer: SocketAddr, policy: &str) -> String {
    match status {
        Status::CLUSTER_NOT_EXIST => format!("cluster {cluster} does not exist on {peer} (status 4)"),
        Status::AUTH_FAILED => {
            format!("authentication failed for cluster {cluster} on {peer}: wrong or missing credential (status 2)")
        }
        Status::VALIDATOR_NOT_FOUND => format!(
            "credential policy {policy:?} is not what cluster {cluster} on {peer} requires (status 3)"
        ),
        other => format!(
            "{peer} refused the connection to cluster {cluster}: {} (status {})",
            other.meaning(),
            other.0
        ),
    }
}

/// What a successful handshake yields.
#[derive(Debug)]
pub struct Dialed {
    /// The connection (TLS inside when the tunnel has a `tls_context`).
    pub stream: Channel,
    pub connection_id: Option<u64>,
    pub heartbeat_interval_ms: Option<u64>,
    /// The extension version both sides speak (1 when the server named none): 2 or more means
    /// framed sessions, many on this connection.
    pub extension_version: u32,
    /// Bytes the server sent after its answer (a ping, or a session start and its bytes).
    pub leftover: Vec<u8>,
}

/// Everything the init carries.
pub struct InitParams<'a> {
    pub cluster: &'a str,
    pub host_name: &'a str,
    pub weight: i64,
    pub credential_policy: &'a str,
    pub credential: Option<&'a crate::secret::Secret>,
    pub agent_id: &'a str,
    pub role: Role,
    pub max_connection_num: u32,
    /// The tunnel's TLS client config, when it has a `tls_context`.
    pub tls: Option<&'a TlsDial>,
    /// The configured `host:port` of the server ([`super::peer::Peer::name`]): without
    /// `tls_context.server_name`, the certificate is verified against its host (a name, or an
    /// IP literal), never against the address it resolved to.
    pub server_name: &'a str,
}

/// A tunnel's TLS settings: the client config (files loaded at start and re-read on SIGHUP,
/// `AgentHandle::reload_tls`; each dial takes the current one) and the `tls_context` it came from.
#[derive(Debug)]
pub struct TlsDial {
    pub config: crate::tls::Rotating<crate::tls::ClientConfig>,
    pub tls: crate::config::AgentTlsConfig,
}

/// TCP connect and, with a `tls_context`, the TLS handshake (verifying `tls_context.server_name`,
/// or else `configured_host`, the host the peer was configured by); returns the connection and
/// any plaintext already received. Nothing is written: a MOSN aside connection is only this.
pub async fn open(
    peer: SocketAddr,
    configured_host: &str,
    tls: Option<&TlsDial>,
) -> Result<(Channel, Vec<u8>), DialError> {
    let stream = TcpStream::connect(peer)
        .await
        .map_err(|source| DialError::Connect { peer, source })?;
    let _ = stream.set_nodelay(true);
    crate::rt::set_tunnel_liveness(&stream);
    let (channel, plaintext) = match tls {
        None => (Channel::plain(stream), Vec::new()),
        Some(t) => {
            let tls = |source| DialError::Tls { peer, source };
            let name = crate::tls::server_name(&t.tls, configured_host).map_err(tls)?;
            // Boxed: the handshake's state is large, and plaintext dials should not carry it.
            let est = Box::pin(crate::tls::connect(&stream, t.config.current(), name))
                .await
                .map_err(tls)?;
            (
                Channel::new(stream, Some(Box::new(est.session))),
                est.plaintext,
            )
        }
    };
    // On an io_uring worker the slot then waits on the worker's ring, not the background reactor.
    let channel = channel
        .localize()
        .map_err(|source| DialError::Connect { peer, source })?;
    Ok((channel, plaintext))
}

fn init_frame(params: &InitParams<'_>) -> Frame {
    Frame::Init(ConnectionInitInfo {
        cluster_name: params.cluster.to_string(),
        weight: params.weight,
        host_name: params.host_name.to_string(),
        credential_policy: params.credential_policy.to_string(),
        credential: super::credential::init_credential(
            params.credential_policy,
            params.credential,
            &crate::credential::HmacSubject {
                cluster: params.cluster,
                host_name: params.host_name,
                agent_id: params.agent_id,
            },
        ),
        extra: Some(InitExtra {
            ringtun: Some(RingtunInit {
                version: EXTENSION_VERSION,
                role: params.role,
                agent_id: params.agent_id.to_string(),
                max_connection_num: Some(params.max_connection_num),
            }),
            other: Default::default(),
        }),
    })
}

/// Connects and handshakes; the caller bounds it in time.
pub async fn dial(peer: SocketAddr, params: &InitParams<'_>) -> Result<Dialed, DialError> {
    let (mut stream, first) = Box::pin(open(peer, params.server_name, params.tls)).await?;
    let init = init_frame(params);
    let bytes = protocol::encode_to_vec(&init).map_err(|e| DialError::Io {
        peer,
        source: io::Error::other(e),
    })?;
    stream
        .write_all(&bytes)
        .await
        .map_err(|source| DialError::Io { peer, source })?;
    let (frame, leftover) = read_frame(&mut stream, first).await.map_err(|e| match e {
        ReadFrameError::Closed => DialError::Closed { peer },
        ReadFrameError::Io(source) => DialError::Io { peer, source },
        ReadFrameError::Protocol(source) => DialError::Protocol { peer, source },
    })?;
    let Frame::InitResponse(response) = frame else {
        return Err(DialError::Unexpected {
            peer,
            flag: frame.flag().name(),
        });
    };
    if response.status != Status::SUCCESS {
        return Err(DialError::Refused {
            peer,
            cluster: params.cluster.to_string(),
            policy: params.credential_policy.to_string(),
            status: response.status,
        });
    }
    Ok(Dialed {
        stream,
        connection_id: response.connection_id,
        heartbeat_interval_ms: response.heartbeat_interval_ms,
        extension_version: response.extension_version.unwrap_or(1),
        leftover,
    })
}

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Protocol(#[from] DecodeError),
}

/// Reads until one whole frame is in `buf`; returns it and the bytes after it.
pub async fn read_frame(
    stream: &mut Channel,
    mut buf: Vec<u8>,
) -> Result<(Frame, Vec<u8>), ReadFrameError> {
    loop {
        if let Decoded::Frame(frame, used) = protocol::decode(&buf, MAX_SERVER_FRAME_PAYLOAD_BYTES)?
        {
            buf.drain(..used);
            return Ok((frame, buf));
        }
        if stream.read_into(&mut buf).await? == 0 {
            return Err(ReadFrameError::Closed);
        }
    }
}

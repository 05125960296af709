//! Binding a cluster's frontend sockets: one SO_REUSEPORT listener (a UDP socket for a UDP
//! cluster) per worker per frontend.
//!
//! Server start-up and reload both bind frontends here, so a reload needs nothing from the
//! server's wiring. This module binds sockets; it accepts nothing and knows nothing of sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ClusterConfig;
use crate::protocol::cidr::Cidr;

/// Frontend listeners per worker: `sockets[worker]` holds that worker's sockets.
pub type FrontendSockets = Vec<Vec<FrontendSocket>>;

/// One worker's listener of one frontend.
#[derive(Debug)]
pub struct FrontendSocket {
    pub cluster: Arc<str>,
    pub listener: FrontendListener,
    /// Set when the frontend reads a PROXY header first (`accept_proxy_protocol`).
    pub proxy: Option<Arc<ProxyAccept>>,
}

/// A frontend's socket: a TCP listener, or a UDP cluster's datagram socket and its limits.
#[derive(Debug)]
pub enum FrontendListener {
    Tcp(std::net::TcpListener),
    Udp {
        socket: std::net::UdpSocket,
        limits: Arc<UdpFrontendLimits>,
    },
}

/// A UDP cluster's flow limits (`clusters[]` fields of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpFrontendLimits {
    pub flow_idle_timeout: Duration,
    pub max_datagram_bytes: usize,
    pub max_flows_per_client_ip: u32,
    pub max_queued_datagrams_per_flow: usize,
}

impl UdpFrontendLimits {
    pub fn of(cluster: &ClusterConfig) -> Self {
        Self {
            flow_idle_timeout: Duration::from_millis(cluster.udp_flow_idle_timeout_ms),
            max_datagram_bytes: cluster.max_udp_datagram_bytes,
            max_flows_per_client_ip: cluster.max_udp_flows_per_client_ip,
            max_queued_datagrams_per_flow: cluster.max_udp_queued_datagrams_per_flow,
        }
    }
}

/// A frontend's PROXY protocol acceptance: who may send a header, and how long it may take.
#[derive(Debug)]
pub struct ProxyAccept {
    pub trusted: Vec<Cidr>,
    pub timeout: Duration,
}

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("invalid address {field}: {value:?}")]
    Address { field: String, value: String },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds cluster number `index`'s frontends: one SO_REUSEPORT socket per worker per frontend
/// (port 0 is resolved by the first). Returns the sockets per worker and the bound addresses.
pub fn bind_frontends(
    index: usize,
    cluster: &ClusterConfig,
    workers: usize,
) -> Result<(FrontendSockets, Vec<SocketAddr>), BindError> {
    let name: Arc<str> = Arc::from(cluster.name.as_str());
    let mut per_worker: FrontendSockets = (0..workers).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for (fi, f) in cluster.frontends.iter().enumerate() {
        let field = format!("clusters[{index}].frontends[{fi}].address");
        let mut addr = parse_addr(&field, &f.address)?;
        let proxy = f.accept_proxy_protocol.then(|| {
            Arc::new(ProxyAccept {
                trusted: crate::config::trusted_networks(f),
                timeout: Duration::from_millis(f.proxy_protocol_timeout_ms),
            })
        });
        let udp = (cluster.protocol == crate::protocol::TransportProtocol::Udp)
            .then(|| Arc::new(UdpFrontendLimits::of(cluster)));
        for sockets in per_worker.iter_mut() {
            let bind_err = |source| BindError::Bind {
                what: format!("frontend of cluster {}", cluster.name),
                addr,
                source,
            };
            let listener = match &udp {
                None => {
                    let listener = super::bind_reuseport(addr).map_err(bind_err)?;
                    addr = listener.local_addr().map_err(bind_err)?;
                    FrontendListener::Tcp(listener)
                }
                Some(limits) => {
                    let socket = super::bind_udp_reuseport(addr).map_err(bind_err)?;
                    addr = socket.local_addr().map_err(bind_err)?;
                    FrontendListener::Udp {
                        socket,
                        limits: limits.clone(),
                    }
                }
            };
            sockets.push(FrontendSocket {
                cluster: name.clone(),
                listener,
                proxy: proxy.clone(),
            });
        }
        addrs.push(addr);
    }
    Ok((per_worker, addrs))
}

/// Parses a listen address of the config; the error names the field.
pub fn parse_addr(field: &str, value: &str) -> Result<SocketAddr, BindError> {
    value.parse().map_err(|_| BindError::Address {
        field: field.to_string(),
        value: value.to_string(),
    })
}

//! A frontend that accepts the PROXY protocol: its connection's source must be a trusted proxy,
//! whose header (v1 or v2) is read within a bounded size and time, before any lease; the
//! address it names becomes the session's client. Any failure closes that one connection, is
//! counted by reason and logged rate-limited; nothing else is touched.
//!
//! The header is read through `Conn::readable` and `Conn::try_read` (readiness and
//! non-blocking reads), never an io_uring read, so the timeout may drop the read safely. Bytes
//! read past the header are the client's first session bytes; they go to the agent first.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tracing::{debug, Instrument};

use super::Worker;
use crate::plane::counters::bump;
use crate::protocol::proxy::{
    decode_proxy_header, ProxyDecoded, ProxyError, ProxyHeader, DEFAULT_MAX_PROXY_HEADER_BYTES,
};
use crate::rt::{Conn, ProxyAccept};

/// Who a session is for.
pub(super) struct Client {
    /// The client's address: the frontend's peer, or what its PROXY header named.
    pub(super) addr: SocketAddr,
    /// What came with a PROXY header (boxed: a session task's future holds this struct, and
    /// most sessions have none).
    pub(super) via: Option<Box<Via>>,
    /// The frontend socket's own address when known without asking the kernel (its listener
    /// is bound to one address).
    pub(super) local: Option<SocketAddr>,
}

/// What a PROXY header brought besides the client's address.
pub(super) struct Via {
    /// Where the client connected to, when the header named it (else the frontend's own).
    pub(super) frontend: Option<SocketAddr>,
    /// Session bytes read together with the header: owed to the agent before any other.
    pub(super) early: Vec<u8>,
}

impl Client {
    /// A client that connected directly to a frontend socket whose own address is `local`
    /// (when known).
    pub(super) fn direct(addr: SocketAddr, local: Option<SocketAddr>) -> Self {
        Client {
            addr,
            via: None,
            local,
        }
    }

    /// Where the client connected to, if a PROXY header said, else the frontend socket's own
    /// address when it is known without asking the kernel.
    pub(super) fn frontend(&self) -> Option<SocketAddr> {
        self.via.as_ref().and_then(|v| v.frontend).or(self.local)
    }

    /// The session bytes read with the header (once).
    pub(super) fn take_early(&mut self) -> Vec<u8> {
        self.via
            .as_mut()
            .map(|v| std::mem::take(&mut v.early))
            .unwrap_or_default()
    }
}

/// Why a connection was closed before its session.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("source is not in trusted_proxies")]
    Untrusted,
    #[error("{0}")]
    Header(ProxyError),
    #[error("no whole PROXY header within {0} ms")]
    Timeout(u128),
    #[error("closed before its PROXY header was whole")]
    Closed,
    #[error("read failed before its PROXY header was whole: {0}")]
    Io(io::Error),
}

impl Worker {
    /// Reads the PROXY header of a connection to an `accept_proxy_protocol` frontend, then
    /// serves its session for the client the header names.
    pub(super) async fn serve_proxied(
        self: Rc<Self>,
        cluster: Arc<str>,
        frontend: Conn,
        peer: SocketAddr,
        policy: Arc<ProxyAccept>,
    ) {
        let client = match read_client(&frontend, peer, &policy).await {
            Ok(client) => client,
            Err(why) => {
                bump(self.refusal_counter(&why));
                crate::log_limited!(warn!(worker = self.index, %cluster, %peer, reason = %why,
                    "frontend connection closed: PROXY header refused"));
                frontend.shutdown();
                return;
            }
        };
        bump(&self.counters.proxy_headers_accepted_total);
        debug!(worker = self.index, %cluster, client = %client.addr, proxy = %peer, "PROXY header accepted");
        let span = tracing::debug_span!("session", worker = self.index, %cluster,
            client = %client.addr, proxy = %peer, id = tracing::field::Empty);
        self.serve_frontend(cluster, frontend, client)
            .instrument(span)
            .await;
    }

    fn refusal_counter(&self, why: &Refused) -> &AtomicU64 {
        let c = &self.counters;
        match why {
            Refused::Untrusted => &c.proxy_headers_refused_untrusted_total,
            Refused::Header(e) if e.reason() == "oversized" => {
                &c.proxy_headers_refused_oversized_total
            }
            Refused::Header(_) => &c.proxy_headers_refused_malformed_total,
            Refused::Timeout(_) => &c.proxy_headers_refused_timeout_total,
            Refused::Closed | Refused::Io(_) => &c.proxy_headers_refused_closed_total,
        }
    }
}

/// The session's client according to `peer`'s PROXY header.
async fn read_client(
    frontend: &Conn,
    peer: SocketAddr,
    policy: &ProxyAccept,
) -> Result<Client, Refused> {
    if !policy.trusted.iter().any(|net| net.contains(peer.ip())) {
        return Err(Refused::Untrusted);
    }
    let read = crate::rt::time::timeout(policy.timeout, read_header(frontend));
    let (header, early) = read
        .await
        .map_err(|_| Refused::Timeout(policy.timeout.as_millis()))??;
    Ok(match header {
        ProxyHeader::Proxy {
            source,
            destination,
        } => Client {
            addr: source,
            via: Some(Box::new(Via {
                frontend: Some(destination),
                early,
            })),
            local: None,
        },
        // A health check or an unknown family: the proxy's own address stands.
        ProxyHeader::Local => Client {
            addr: peer,
            via: Some(Box::new(Via {
                frontend: None,
                early,
            })),
            local: None,
        },
    })
}

/// Reads until one whole header is buffered (at most the bound of bytes in all); returns it and
/// the bytes after it.
async fn read_header(frontend: &Conn) -> Result<(ProxyHeader, Vec<u8>), Refused> {
    let stream = frontend;
    let max = DEFAULT_MAX_PROXY_HEADER_BYTES;
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    loop {
        match decode_proxy_header(&buf, max) {
            Ok(ProxyDecoded::Header(header, _, used)) => {
                buf.drain(..used);
                return Ok((header, buf));
            }
            Ok(ProxyDecoded::NeedMore(_)) => {}
            Err(e) => return Err(Refused::Header(e)),
        }
        stream.readable().await.map_err(Refused::Io)?;
        // The decoder fails before `max` bytes, so there is always room here.
        let start = buf.len();
        buf.resize(max.max(start + 1), 0);
        match stream.try_read(&mut buf[start..]) {
            Ok(0) => return Err(Refused::Closed),
            Ok(n) => buf.truncate(start + n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf.truncate(start),
            Err(e) => return Err(Refused::Io(e)),
        }
    }
}

//! A session's side toward its hosting listener's backend: connecting it (within the
//! listener's `connect_timeout_ms`, from the worker's address cache) and the PROXY header it
//! gets before any session byte. It must not pump or read the data connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::*;
use crate::protocol::proxy::{encode_proxy_header, ProxyHeader};

/// Connects the listener's backend within its `connect_timeout_ms` (readiness-based, so the
/// future may be dropped on stop); the error says why it could not.
pub(super) async fn connect_backend(
    local: &Local,
    listener: &crate::config::HostingListenerConfig,
) -> Result<ReadyStream, String> {
    // Boxed: the connect future is large, and the pump does not need it.
    let connect = Box::pin(crate::rt::time::timeout(
        Duration::from_millis(listener.connect_timeout_ms),
        async {
            let addrs = local.backends.resolve(&listener.backend).await?;
            let loopback = addrs.iter().all(|a| a.ip().is_loopback());
            crate::rt::connect(&addrs[..]).await.map(|s| (s, loopback))
        },
    ));
    match connect.await {
        Ok(Ok((backend, loopback))) => {
            let _ = backend.set_nodelay(true);
            // Keepalive finds a peer that vanished without FIN or RST; over loopback the peer's
            // kernel is this one, which answers for any process alive or dead, so it is skipped
            // there (four setsockopt calls per session).
            if !loopback {
                crate::rt::set_session_keepalive(&backend);
            }
            Ok(backend)
        }
        Ok(Err(e)) => Err(format!("cannot connect to backend: {e}")),
        Err(_) => Err(format!(
            "backend connect timed out after {} ms",
            listener.connect_timeout_ms
        )),
    }
}

/// The bytes the backend gets first: the PROXY header when the listener sends one, then
/// `prefix`.
pub(super) fn proxy_prefix(
    listener: &crate::config::HostingListenerConfig,
    start: &SessionStart,
    prefix: Vec<u8>,
) -> Vec<u8> {
    match listener.send_proxy_protocol.version() {
        Some(version) => {
            let mut header = encode_proxy_header(version, &proxy_header_of(start));
            header.extend_from_slice(&prefix);
            header
        }
        None => prefix,
    }
}

/// What the PROXY header to the backend names: the frontend client and the address it connected
/// to, IPv4-mapped IPv6 addresses (from a dual-stack frontend) as IPv4. A server that sends no
/// `frontend_addr` (an older one) gives the unspecified address of the client's family, port 0;
/// a client address that does not parse gives v1 UNKNOWN / v2 LOCAL.
fn proxy_header_of(start: &SessionStart) -> ProxyHeader {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let Ok(source) = start.client_addr.parse::<SocketAddr>().map(canonical) else {
        debug!(session = start.session_id, client = %start.client_addr,
            "client address is not ip:port; PROXY header without addresses");
        return ProxyHeader::Local;
    };
    let destination = start
        .frontend_addr
        .as_deref()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map(canonical)
        .unwrap_or_else(|| {
            let ip = if source.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            };
            SocketAddr::new(ip, 0)
        });
    ProxyHeader::Proxy {
        source,
        destination,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(client: &str, frontend: Option<&str>) -> SessionStart {
        SessionStart {
            session_id: 1,
            client_addr: client.into(),
            frontend_addr: frontend.map(str::to_string),
            protocol: Default::default(),
        }
    }

    fn proxy(source: &str, destination: &str) -> ProxyHeader {
        ProxyHeader::Proxy {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    #[test]
    fn the_backend_header_names_client_and_frontend() {
        assert_eq!(
            proxy_header_of(&start("127.0.0.2:4000", Some("127.0.0.1:80"))),
            proxy("127.0.0.2:4000", "127.0.0.1:80")
        );
        assert_eq!(
            proxy_header_of(&start("[::1]:4000", Some("[::1]:80"))),
            proxy("[::1]:4000", "[::1]:80")
        );
        // A dual-stack frontend's IPv4 clients are IPv4 to the backend.
        assert_eq!(
            proxy_header_of(&start(
                "[::ffff:10.0.0.9]:4000",
                Some("[::ffff:10.0.0.1]:80")
            )),
            proxy("10.0.0.9:4000", "10.0.0.1:80")
        );
        // An older server sends no frontend address.
        assert_eq!(
            proxy_header_of(&start("10.0.0.9:4000", None)),
            proxy("10.0.0.9:4000", "0.0.0.0:0")
        );
        assert_eq!(
            proxy_header_of(&start("[2001:db8::1]:4000", Some("not an address"))),
            proxy("[2001:db8::1]:4000", "[::]:0")
        );
        assert_eq!(proxy_header_of(&start("", None)), ProxyHeader::Local);
        assert_eq!(
            proxy_header_of(&start("edge.example:80", None)),
            ProxyHeader::Local
        );
    }
}

//! UDP test helpers: backends that answer datagrams, a server with one UDP cluster, an agent
//! with a UDP listener, a client socket, TLS files for a tunnel, handshake counts.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use ringtun::config::{IoBackend, ServerConfig};
use ringtun::control::stats::HandshakeOutcome;
use ringtun::protocol::TransportProtocol;
use ringtun::server::ServerHandle;

use super::{agent, server};

/// A UDP backend on port 0 answering each datagram with `answer(datagram)` (none: silence).
pub fn udp_backend(answer: fn(&[u8]) -> Option<Vec<u8>>) -> SocketAddr {
    udp_backend_on(UdpSocket::bind("127.0.0.1:0").unwrap(), answer)
}

/// `udp_backend` on a socket the caller bound.
pub fn udp_backend_on(socket: UdpSocket, answer: fn(&[u8]) -> Option<Vec<u8>>) -> SocketAddr {
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if let Some(reply) = answer(&buf[..n]) {
                let _ = socket.send_to(&reply, from);
            }
        }
    });
    addr
}

pub fn echo(d: &[u8]) -> Option<Vec<u8>> {
    Some(d.to_vec())
}

/// A server with one UDP cluster `c` (its config adjusted by `tweak`).
pub fn udp_server(
    backend: IoBackend,
    workers: usize,
    tweak: impl FnOnce(&mut ServerConfig),
) -> ServerHandle {
    let mut config = server(backend).cluster("c").workers(workers).config();
    config.clusters[0].protocol = TransportProtocol::Udp;
    tweak(&mut config);
    ServerHandle::start(config).unwrap()
}

pub fn udp_agent(
    backend: IoBackend,
    server: &ServerHandle,
    target: SocketAddr,
    conns: u32,
) -> ringtun::agent::AgentHandle {
    agent(backend, server.tunnel_addr(), target)
        .connection_num(conns)
        .listener_field("protocol", serde_json::json!("udp"))
        .run()
}

pub fn client() -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

pub fn ask(c: &UdpSocket, to: SocketAddr, what: &[u8]) -> Vec<u8> {
    c.send_to(what, to).unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, _) = c.recv_from(&mut buf).expect("a reply");
    buf[..n].to_vec()
}

/// A CA and a server certificate for `tunnel.test` in a fresh directory: (dir, ca, cert, key).
pub fn tls_files() -> (std::path::PathBuf, String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ringtun-udp-tls-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["tunnel.test".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let ca_file = write("ca.pem", issuer.pem());
    let cert_file = write("server.crt", cert.pem());
    let key_file = write("server.key", key.serialize_pem());
    (dir, ca_file, cert_file, key_file)
}

pub fn handshakes(server: &ServerHandle) -> u64 {
    server.control_stats().handshakes(HandshakeOutcome::Success)
}

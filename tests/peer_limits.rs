//! Bounded per-peer state on the server: host identities per cluster (`max_hosts`) and per
//! source address (`max_hosts_per_ip`), aside connections per host
//! (`max_aside_connections_per_agent`) and per source address (`max_aside_connections_per_ip`).
//! A connection over one is answered status 0 and counted as `over_limit`; the rest keeps
//! working, and a bound frees up when the connections holding it close.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use ringtun::control::stats::HandshakeOutcome;
use ringtun::protocol::{self, ConnectionInitInfo, Decoded, Frame, InitExtra, RingtunInit, Role};
use ringtun::server::ServerHandle;

/// A ringtun init of `host` (agent id = host name) with `role`, sent from `source`; returns the
/// connection (kept open: it holds what it registered) and the response status. Hosts are held
/// by aside connections here: the server sees one close at once (an idle data connection's
/// close is seen at the next heartbeat).
fn register(tunnel: SocketAddr, source: &str, host: &str, role: Role) -> (TcpStream, i64) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    s.bind(&from.into()).unwrap();
    s.connect(&tunnel.into()).unwrap();
    let mut c: TcpStream = s.into();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let init = protocol::encode_to_vec(&Frame::Init(ConnectionInitInfo {
        cluster_name: "c".into(),
        weight: 10,
        host_name: host.into(),
        extra: Some(InitExtra {
            ringtun: Some(RingtunInit {
                version: 1,
                role,
                agent_id: host.into(),
                max_connection_num: None,
            }),
            other: Default::default(),
        }),
        ..Default::default()
    }))
    .unwrap();
    c.write_all(&init).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        if let Ok(Decoded::Frame(Frame::InitResponse(r), _)) = protocol::decode(&buf, 4096) {
            return (c, r.status.0);
        }
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before answering");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn start(
    backend: ringtun::config::IoBackend,
    set: impl FnOnce(&mut ringtun::config::ServerConfig),
) -> ServerHandle {
    let mut config = server(backend).cluster("c").config();
    set(&mut config);
    ServerHandle::start(config).unwrap()
}

fn over_limit(server: &ServerHandle) -> u64 {
    server
        .control_stats()
        .handshakes(HandshakeOutcome::OverLimit)
}

both_backends!(a_cluster_holds_at_most_max_hosts, |backend| {
    let server = start(backend, |c| c.clusters[0].max_hosts = 2);
    let t = server.tunnel_addr();
    let (a, sa) = register(t, "127.0.0.1", "a", Role::Aside);
    let (_b, sb) = register(t, "127.0.0.1", "b", Role::Aside);
    assert_eq!((sa, sb), (1, 1));
    let (_c, sc) = register(t, "127.0.0.1", "c", Role::Aside);
    assert_eq!(sc, 0, "a third host is refused");
    assert_eq!(over_limit(&server), 1);
    assert_eq!(server.hosts("c").len(), 2);
    // A known host still adds connections.
    let (_a2, s) = register(t, "127.0.0.1", "a", Role::Aside);
    assert_eq!(s, 1);
    // Once a host is gone its place is free.
    drop((a, _a2));
    assert!(wait_until(Duration::from_secs(5), || server
        .hosts("c")
        .len()
        == 1));
    let (_c, sc) = register(t, "127.0.0.1", "c", Role::Aside);
    assert_eq!(sc, 1);
});

both_backends!(one_address_creates_at_most_max_hosts_per_ip, |backend| {
    let server = start(backend, |c| c.tunnel_listener.max_hosts_per_ip = 2);
    let t = server.tunnel_addr();
    let (a, _) = register(t, "127.0.0.3", "a", Role::Aside);
    let (_b, _) = register(t, "127.0.0.3", "b", Role::Aside);
    let (_c, sc) = register(t, "127.0.0.3", "c", Role::Aside);
    assert_eq!(sc, 0, "a third host from one address is refused");
    let (_d, sd) = register(t, "127.0.0.4", "d", Role::Aside);
    assert_eq!(sd, 1, "another address is not affected");
    assert_eq!(over_limit(&server), 1);
    drop(a);
    assert!(wait_until(Duration::from_secs(5), || server
        .hosts("c")
        .len()
        == 2));
    let (_c, sc) = register(t, "127.0.0.3", "c", Role::Aside);
    assert_eq!(sc, 1, "the address's count went down with its host");
});

both_backends!(
    aside_connections_are_bounded_per_agent_and_per_address,
    |backend| {
        let server = start(backend, |c| {
            c.clusters[0].max_aside_connections_per_agent = 2;
            c.tunnel_listener.max_aside_connections_per_ip = 3;
        });
        let t = server.tunnel_addr();
        let (a1, s1) = register(t, "127.0.0.3", "a", Role::Aside);
        let (_a2, s2) = register(t, "127.0.0.3", "a", Role::Aside);
        let (_a3, s3) = register(t, "127.0.0.3", "a", Role::Aside);
        assert_eq!(
            (s1, s2, s3),
            (1, 1, 0),
            "a third aside of one agent is refused"
        );
        let (_b1, s) = register(t, "127.0.0.3", "b", Role::Aside);
        assert_eq!(s, 1);
        let (_b2, s) = register(t, "127.0.0.3", "b", Role::Aside);
        assert_eq!(s, 0, "a fourth aside from one address is refused");
        let (_c1, s) = register(t, "127.0.0.4", "c", Role::Aside);
        assert_eq!(s, 1, "another address is not affected");
        assert_eq!(over_limit(&server), 2);
        drop(a1);
        assert!(wait_until(Duration::from_secs(5), || server
            .hosts("c")
            .iter()
            .find(|h| h.host_name == "a")
            .is_some_and(|h| h.aside_connections == 1)));
        let (_a4, s) = register(t, "127.0.0.3", "a", Role::Aside);
        assert_eq!(s, 1, "a closed aside gives its places back");
    }
);

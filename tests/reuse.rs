//! Framed sessions (extension version 2): one data connection carries many sessions, one after
//! another, with no handshake per session; both backends, plaintext and TLS. Half-close,
//! aborts (a refused backend, a frontend reset), bulk, older and MOSN agents beside new ones,
//! and hostile agent records that close only their own connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use ringtun::control::stats::HandshakeOutcome;
use ringtun::server::ServerHandle;
use serde_json::json;

use common::*;

fn handshakes(server: &ServerHandle) -> u64 {
    server.control_stats().handshakes(HandshakeOutcome::Success)
}

fn reuses(server: &ServerHandle) -> u64 {
    server.counters().data_connection_reuses_total
}

/// A server with cluster `c` and an agent with one data connection to `target`, through a TLS
/// tunnel when `tls`; returns once the connection is idle.
struct Tunnel {
    server: ServerHandle,
    agent: ringtun::agent::AgentHandle,
    _pki: Option<Pki>,
}

fn tunnel(backend: ringtun::config::IoBackend, tls: bool, target: SocketAddr) -> Tunnel {
    let pki = tls.then(Pki::new);
    let mut builder = server(backend).cluster("c");
    if let Some(p) = &pki {
        builder = builder.tls(p.server_tls());
    }
    let server = builder.run();
    let mut agent = agent(backend, server.tunnel_addr(), target).connection_num(1);
    if let Some(p) = &pki {
        agent = agent.tls(p.agent_tls());
    }
    let agent = agent.run();
    wait_registered(&server, "c", 1, 1);
    Tunnel {
        server,
        agent,
        _pki: pki,
    }
}

/// Runs a test body on plaintext and TLS tunnels.
fn plain_and_tls(backend: ringtun::config::IoBackend, body: fn(ringtun::config::IoBackend, bool)) {
    body(backend, false);
    body(backend, true);
}

/// Sequential sessions through one data connection; `tls` runs them through a TLS tunnel.
fn sequential_sessions(backend: ringtun::config::IoBackend, tls: bool, sessions: usize) {
    let echo = echo_backend();
    let t = tunnel(backend, tls, echo.addr);
    let server = &t.server;
    let before = handshakes(server);
    let frontend = server.frontend_addr("c").unwrap();
    for i in 0..sessions {
        let data = format!("session {i}");
        // Each one a half-close: the client shuts its write side, the echo answers and closes.
        assert_eq!(echo_roundtrip(frontend, data.as_bytes()), data.as_bytes());
    }
    let grew = handshakes(server) - before;
    assert!(
        grew <= 5,
        "{sessions} sessions took {grew} data-connection handshakes"
    );
    assert!(
        reuses(server) >= sessions as u64 - 5,
        "reuses: {}",
        reuses(server)
    );
    // A frontend accepted on a worker with no idle connection may have had one more opened (a
    // pool request), which is reused in turn: a handful of connections carried everything.
    // Workers report leases in batches (a few ms late): wait for the last ones.
    let carried = || server.hosts("c")[0].sessions_per_data_connection.clone();
    let all_counted = wait_until(Duration::from_secs(5), || {
        carried().iter().sum::<u64>() >= sessions as u64
    });
    assert!(
        all_counted && carried().len() <= 5,
        "sessions per data connection: {:?}",
        carried()
    );
}

both_backends!(
    ten_thousand_sessions_through_one_plaintext_connection,
    |b| { sequential_sessions(b, false, 10_000) }
);

both_backends!(ten_thousand_sessions_through_one_tls_connection, |b| {
    sequential_sessions(b, true, 10_000)
});

both_backends!(
    a_refused_backend_aborts_then_the_same_connection_serves,
    |b| { plain_and_tls(b, refused_then_served) }
);

fn refused_then_served(b: ringtun::config::IoBackend, tls: bool) {
    // The backend's port is closed for the first session, then listened on.
    let backend_addr = closed_port();
    let t = tunnel(b, tls, backend_addr);
    let server = &t.server;
    let before = handshakes(server);
    let aborts = server
        .counters()
        .session_aborts_received_backend_connect_total;
    let frontend = server.frontend_addr("c").unwrap();
    let mut c = TcpStream::connect(frontend).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(b"hello");
    let mut buf = [0u8; 16];
    // Closed (or reset) with no byte.
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    assert!(wait_until(Duration::from_secs(10), || {
        server
            .counters()
            .session_aborts_received_backend_connect_total
            == aborts + 1
    }));
    let listener = TcpListener::bind(backend_addr).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    wait_registered(server, "c", 1, 1);
    assert_eq!(echo_roundtrip(frontend, b"second"), b"second");
    assert_eq!(handshakes(server), before, "the connection was replaced");
    // The agent counted its abort (backend connect: index 1) and both reuses.
    let status = t.agent.status();
    assert_eq!(status.session_aborts_sent_total, [0, 1, 0, 0]);
    assert!(wait_until(Duration::from_secs(10), || t
        .agent
        .status()
        .data_connection_reuses_total
        == 2));
}

both_backends!(
    a_frontend_reset_mid_transfer_leaves_the_connection_clean,
    |b| { plain_and_tls(b, reset_then_served) }
);

fn reset_then_served(b: ringtun::config::IoBackend, tls: bool) {
    let echo = echo_backend();
    let t = tunnel(b, tls, echo.addr);
    let server = &t.server;
    let before = handshakes(server);
    let resets = server.counters().session_aborts_sent_frontend_reset_total;
    let frontend = server.frontend_addr("c").unwrap();
    {
        let mut c = TcpStream::connect(frontend).unwrap();
        c.write_all(&pattern(300_000, 3)).unwrap();
        let mut some = [0u8; 1000];
        c.read_exact(&mut some).unwrap();
        // Linger 0: the close is a reset.
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    let parked = wait_until(Duration::from_secs(10), || {
        server.counters().session_aborts_sent_frontend_reset_total > resets
            && server.hosts("c")[0].idle_connections == 1
    });
    assert!(
        parked,
        "{b:?} tls={tls}: after the reset, frontend-reset aborts {} (before {resets}), idle connections {}, handshakes {} (before {before})",
        server.counters().session_aborts_sent_frontend_reset_total,
        server.hosts("c")[0].idle_connections,
        handshakes(server),
    );
    // The next session sees only its own bytes.
    let data = pattern(70_000, 9);
    assert_eq!(echo_roundtrip(frontend, &data), data);
    assert_eq!(handshakes(server), before, "the connection was replaced");
}

/// Bulk size: 256 MiB in release, 64 MiB in debug (a debug build moves bytes slowly).
const BULK_BYTES: usize = if cfg!(debug_assertions) {
    64 << 20
} else {
    256 << 20
};

both_backends!(
    bulk_one_way_then_a_small_session_on_the_same_connection,
    |b| { plain_and_tls(b, bulk_then_small) }
);

fn bulk_then_small(b: ringtun::config::IoBackend, tls: bool) {
    // TLS bytes are copied and encrypted: a quarter of the plaintext size keeps debug runs short.
    let bulk_bytes = if tls { BULK_BYTES / 4 } else { BULK_BYTES };
    // A sink that checks what arrives against the pattern, then answers with the count.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                let mut at = 0usize;
                let mut ok = true;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            for (i, byte) in buf[..n].iter().enumerate() {
                                ok &= *byte == ((at + i) % 251) as u8;
                            }
                            at += n;
                        }
                    }
                }
                let _ = s.write_all(format!("{at} {ok}").as_bytes());
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    let t = tunnel(b, tls, sink);
    let server = &t.server;
    let before = handshakes(server);
    let frontend = server.frontend_addr("c").unwrap();
    let mut c = TcpStream::connect(frontend).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let chunk: Vec<u8> = (0..251 * 1024).map(|i| (i % 251) as u8).collect();
    let mut sent = 0;
    while sent < bulk_bytes {
        let n = chunk.len().min(bulk_bytes - sent);
        c.write_all(&chunk[..n]).unwrap();
        sent += n;
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, format!("{bulk_bytes} true"));
    wait_registered(server, "c", 1, 1);
    // The next session's 64 bytes arrive alone: the sink counts 64, from the pattern's start.
    let mut c = TcpStream::connect(frontend).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(&chunk[..64]).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "64 true");
    assert_eq!(handshakes(server), before, "the connection was replaced");
}

// ---- scripted agents ----

both_backends!(
    older_and_mosn_agents_beside_a_framed_one_are_all_served,
    |b| {
        let echo = echo_backend();
        let server = server(b).cluster("c").lb("round_robin").workers(1).run();
        let _agent = agent(b, server.tunnel_addr(), echo.addr)
            .connection_num(1)
            .run();
        wait_registered(&server, "c", 1, 1);
        let frontend = server.frontend_addr("c").unwrap();
        // Both scripted agents echo one session raw, each its own way (no records).
        let scripted = |version: Option<u32>, host: &'static str| {
            let tunnel = server.tunnel_addr();
            std::thread::spawn(move || {
                let mut a = RawAgent::connect(tunnel, "c", host, version);
                if version.is_some() {
                    a.session();
                }
                let got = a.take(5);
                a.s.write_all(&got).unwrap();
                a.s.shutdown(std::net::Shutdown::Write).unwrap();
                got
            })
        };
        let v1 = scripted(Some(1), "v1-agent");
        let mosn = scripted(None, "mosn-agent");
        assert!(wait_until(Duration::from_secs(10), || server
            .hosts("c")
            .iter()
            .filter(|h| h.idle_connections >= 1)
            .count()
            == 3));
        // Round robin over three hosts, one session after another: one each; then the scripted
        // agents' connections are gone and the framed agent takes the rest.
        for _ in 0..3 {
            assert_eq!(echo_roundtrip(frontend, b"hello"), b"hello");
        }
        assert_eq!(v1.join().unwrap(), b"hello");
        assert_eq!(mosn.join().unwrap(), b"hello");
        for _ in 0..3 {
            assert_eq!(echo_roundtrip(frontend, b"again"), b"again");
        }
    }
);

/// A framed scripted agent alone in cluster `h` with two data connections; the leased one sends
/// `hostile` after the frontend's first chunk: only that connection is closed.
fn hostile(b: ringtun::config::IoBackend, hostile: &'static [u8], then_half_close: bool) {
    let server = server(b)
        .workers(1)
        .cluster("h")
        .heartbeat_ms(200)
        .pool_wait_ms(5000)
        .run();
    let tunnel = server.tunnel_addr();
    let first = RawAgent::connect(tunnel, "h", "raw", Some(2));
    let mut second = RawAgent::connect(tunnel, "h", "raw", Some(2));
    assert!(wait_until(Duration::from_secs(10), || server
        .hosts("h")
        .first()
        .is_some_and(|h| h.idle_connections == 2)));
    let frontend = server.frontend_addr("h").unwrap();
    let mut client = TcpStream::connect(frontend).unwrap();
    client.write_all(b"x").unwrap();
    if then_half_close {
        client.shutdown(std::net::Shutdown::Write).unwrap();
    }
    // Newest first: the second connection is leased.
    let _ = second.session();
    // DATA(1) "x"
    assert_eq!(second.take(6), b"\x01\x00\x00\x00\x01x");
    second.s.write_all(hostile).unwrap();
    assert!(second.closed_by_server(), "hostile connection not closed");
    // The frontend is closed too; the other connection is still there, idle.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    assert!(wait_until(Duration::from_secs(10), || server
        .hosts("h")
        .first()
        .is_some_and(
            |h| h.data_connections == 1 && h.idle_connections == 1
        )));
    drop(first);
}

both_backends!(a_chunk_over_the_limit_closes_only_its_connection, |b| {
    hostile(b, b"\x01\xff\xff\xff\xff", false)
});

both_backends!(bytes_after_end_close_only_their_connection, |b| {
    hostile(b, b"\x02garbage", true)
});

both_backends!(an_unknown_record_closes_only_its_connection, |b| {
    hostile(b, b"\x7f", false)
});

both_backends!(
    a_header_cut_in_half_then_silence_closes_only_its_connection,
    |b| { hostile(b, b"\x01\x00\x00", true) }
);

// ---- certificates ----

struct Pki {
    dir: PathBuf,
    ca_file: String,
    server: (String, String),
}

impl Pki {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringtun-reuse-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_file = write(&dir, "ca.pem", &ca.pem());
        let params = CertificateParams::new(vec!["tunnel.test".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let server = (
            write(&dir, "server.crt", &cert.pem()),
            write(&dir, "server.key", &key.serialize_pem()),
        );
        Self {
            dir,
            ca_file,
            server,
        }
    }

    fn server_tls(&self) -> serde_json::Value {
        json!({"cert_chain_file": self.server.0, "private_key_file": self.server.1})
    }

    fn agent_tls(&self) -> serde_json::Value {
        json!({"ca_file": self.ca_file, "server_name": "tunnel.test"})
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

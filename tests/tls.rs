//! TLS and mutual TLS on tunnel connections, end to end on both backends, with certificates
//! generated here (rcgen): 1 MiB echoes intact, session bytes encrypted on the tunnel hop, and
//! every failure refused with its reason on both sides (the agent retries).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use ringtun::control::stats::HandshakeOutcome;
use serde_json::json;

use common::logs::{capture_logs, logged};
use common::*;

// ---- certificates ----

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ringtun-tls-e2e-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    file: String,
}

fn ca(dir: &Path, name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let file = write(dir, &format!("{name}.pem"), &issuer.pem());
    Ca { issuer, file }
}

/// A leaf certificate signed by `ca`: (chain file, key file).
fn leaf(
    dir: &Path,
    ca: &Ca,
    file_name: &str,
    names: &[&str],
    purpose: ExtendedKeyUsagePurpose,
    expired: bool,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, file_name);
    params.extended_key_usages = vec![purpose];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (
        write(dir, &format!("{file_name}.crt"), &cert.pem()),
        write(dir, &format!("{file_name}.key"), &key.serialize_pem()),
    )
}

/// One CA; a server certificate for `tunnel.test` and 127.0.0.1; an expired one; an agent
/// certificate; and a second, untrusted CA.
struct Pki {
    dir: PathBuf,
    ca: Ca,
    other_ca: Ca,
    server: (String, String),
    expired: (String, String),
    agent: (String, String),
}

fn pki() -> Pki {
    let dir = temp_dir();
    let ca = ca(&dir, "ca");
    let other_ca = ca_other(&dir);
    let server = leaf(
        &dir,
        &ca,
        "server",
        &["tunnel.test", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        false,
    );
    let expired = leaf(
        &dir,
        &ca,
        "expired",
        &["tunnel.test", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        true,
    );
    let agent = leaf(
        &dir,
        &ca,
        "agent",
        &["edge-01"],
        ExtendedKeyUsagePurpose::ClientAuth,
        false,
    );
    Pki {
        dir,
        ca,
        other_ca,
        server,
        expired,
        agent,
    }
}

fn ca_other(dir: &Path) -> Ca {
    ca(dir, "other-ca")
}

impl Pki {
    fn server_tls(&self, mutual: bool) -> serde_json::Value {
        let mut v = json!({
            "cert_chain_file": self.server.0,
            "private_key_file": self.server.1,
        });
        if mutual {
            v["ca_file"] = self.ca.file.clone().into();
        }
        v
    }

    fn agent_tls(&self, client_cert: bool) -> serde_json::Value {
        let mut v = json!({ "ca_file": self.ca.file, "server_name": "tunnel.test" });
        if client_cert {
            v["cert_chain_file"] = self.agent.0.clone().into();
            v["private_key_file"] = self.agent.1.clone().into();
        }
        v
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tls_failures(server: &ringtun::server::ServerHandle) -> u64 {
    server
        .control_stats()
        .handshakes(HandshakeOutcome::TlsError)
}

// ---- end to end ----

both_backends!(tls_echo_one_mebibyte, |backend| {
    let pki = pki();
    let echo = echo_backend();
    let server = server(backend)
        .cluster("c")
        .tls(pki.server_tls(false))
        .run();
    let _agent = agent(backend, server.tunnel_addr(), echo.addr)
        .tls(pki.agent_tls(false))
        .run();
    wait_registered(&server, "c", 1, 4);
    for seed in 0..3 {
        let data = pattern(1 << 20, seed);
        let back = echo_roundtrip(server.frontend_addr("c").unwrap(), &data);
        assert_eq!(back.len(), data.len());
        assert!(back == data, "echoed bytes differ");
    }
    assert_eq!(tls_failures(&server), 0);
});

// Without `server_name`, the agent verifies the host of its configured server address: a
// name (here `localhost`, in a certificate naming nothing else) or an IP literal.
both_backends!(
    without_server_name_the_configured_host_is_verified,
    |backend| {
        let pki = pki();
        for (cert_name, host) in [("localhost", "localhost"), ("127.0.0.1", "127.0.0.1")] {
            let (chain, key) = leaf(
                &pki.dir,
                &pki.ca,
                &format!("only-{cert_name}"),
                &[cert_name],
                ExtendedKeyUsagePurpose::ServerAuth,
                false,
            );
            let echo = echo_backend();
            let server = server(backend)
                .cluster("c")
                .tls(json!({"cert_chain_file": chain, "private_key_file": key}))
                .run();
            let port = server.tunnel_addr().port();
            let _agent = agent(backend, server.tunnel_addr(), echo.addr)
                .tls(json!({ "ca_file": pki.ca.file }))
                .tunnel_field("server_list", json!([format!("{host}:{port}")]))
                .connection_num(1)
                .run();
            wait_registered(&server, "c", 1, 1);
            let back = echo_roundtrip(server.frontend_addr("c").unwrap(), b"named");
            assert_eq!(back, b"named");
            assert_eq!(tls_failures(&server), 0, "{host}");
        }
    }
);

both_backends!(mutual_tls_echo_one_mebibyte, |backend| {
    let pki = pki();
    let echo = echo_backend();
    let server = server(backend).cluster("c").tls(pki.server_tls(true)).run();
    let _agent = agent(backend, server.tunnel_addr(), echo.addr)
        .tls(pki.agent_tls(true))
        .run();
    wait_registered(&server, "c", 1, 4);
    let data = pattern(1 << 20, 3);
    let back = echo_roundtrip(server.frontend_addr("c").unwrap(), &data);
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");
});

both_backends!(idle_tls_connections_answer_heartbeats, |backend| {
    let pki = pki();
    let echo = echo_backend();
    let server = server(backend)
        .cluster("c")
        .heartbeat_ms(100)
        .tls(pki.server_tls(false))
        .run();
    let _agent = agent(backend, server.tunnel_addr(), echo.addr)
        .tls(pki.agent_tls(false))
        .run();
    wait_registered(&server, "c", 1, 4);
    // Several heartbeat rounds over TLS (encrypted pings, decrypted pongs): the pool must stay
    // whole through them (the property is that nothing changes), then sessions that must strip
    // pongs still due.
    let until = std::time::Instant::now() + Duration::from_millis(700);
    while std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        let hosts = server.hosts("c");
        assert!(
            hosts.len() == 1 && hosts[0].idle_connections == 4,
            "{hosts:?}"
        );
    }
    assert_eq!(server.counters().heartbeat_closes_total, 0);
    for seed in 0..4 {
        let data = pattern(64 * 1024, seed);
        assert!(echo_roundtrip(server.frontend_addr("c").unwrap(), &data) == data);
    }
    assert_eq!(server.hosts("c").len(), 1);
});

/// A TCP relay that records every byte it forwards, both ways.
fn sniffing_relay(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(upstream) = TcpStream::connect(to) else {
                continue;
            };
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                (upstream, client),
            ] {
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => {
                                let _ = into.shutdown(std::net::Shutdown::Write);
                                return;
                            }
                            Ok(n) => {
                                record.lock().unwrap().extend_from_slice(&buf[..n]);
                                if into.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        }
    });
    (addr, seen)
}

both_backends!(session_bytes_are_encrypted_on_the_tunnel_hop, |backend| {
    let pki = pki();
    let echo = echo_backend();
    let server = server(backend)
        .cluster("c")
        .tls(pki.server_tls(false))
        .run();
    let (relay, seen) = sniffing_relay(server.tunnel_addr());
    let _agent = agent(backend, relay, echo.addr)
        .tls(pki.agent_tls(false))
        .run();
    wait_registered(&server, "c", 1, 4);
    let marker = b"RINGTUN-PLAINTEXT-MARKER-0123456789";
    let mut data = Vec::new();
    for _ in 0..100 {
        data.extend_from_slice(marker);
    }
    assert!(echo_roundtrip(server.frontend_addr("c").unwrap(), &data) == data);
    let seen = seen.lock().unwrap();
    assert!(seen.len() > data.len() * 2, "the relay saw the session");
    assert!(
        !seen.windows(marker.len()).any(|w| w == marker),
        "session plaintext visible on the tunnel hop"
    );
    // Neither the cluster name in the init nor the frames are visible either.
    assert!(!seen.windows(17).any(|w| w == b"ConnectionInitInf"));
});

/// Starts a TLS server and an agent with `agent_tls`; waits until the server counted a TLS
/// failure and both sides logged their reasons. No host may register.
fn refused(
    backend: ringtun::config::IoBackend,
    server_tls: serde_json::Value,
    agent_tls: Option<serde_json::Value>,
    agent_reason: &[&str],
    server_reason: &[&str],
) {
    capture_logs(tracing::Level::INFO);
    let echo = echo_backend();
    let server = server(backend).cluster("c").tls(server_tls).run();
    let tunnel = server.tunnel_addr().to_string();
    let mut a = agent(backend, server.tunnel_addr(), echo.addr).reconnect_ms(100, 300);
    if let Some(tls) = agent_tls {
        a = a.tls(tls);
    }
    let _agent = a.run();
    assert!(
        wait_until(Duration::from_secs(10), || tls_failures(&server) >= 2),
        "the server counted no (repeated) TLS failure"
    );
    let mut agent_line = vec!["retrying in"];
    agent_line.extend_from_slice(agent_reason);
    assert!(
        logged(&agent_line),
        "agent never logged {agent_line:?} (server {tunnel})"
    );
    let mut server_line = vec!["TLS handshake with agent failed"];
    server_line.extend_from_slice(server_reason);
    assert!(logged(&server_line), "server never logged {server_line:?}");
    assert!(server.hosts("c").is_empty(), "a refused agent registered");
}

both_backends!(unknown_ca_is_refused_on_both_sides, |backend| {
    let pki = pki();
    let mut agent_tls = pki.agent_tls(false);
    agent_tls["ca_file"] = pki.other_ca.file.clone().into();
    refused(
        backend,
        pki.server_tls(false),
        Some(agent_tls),
        &[
            "TLS handshake with",
            "certificate",
            "not signed by a trusted certificate authority",
        ],
        &["certificate"],
    );
});

both_backends!(wrong_server_name_is_refused_on_both_sides, |backend| {
    let pki = pki();
    let mut agent_tls = pki.agent_tls(false);
    agent_tls["server_name"] = "wrong.test".into();
    refused(
        backend,
        pki.server_tls(false),
        Some(agent_tls),
        &["certificate", "wrong.test"],
        &["certificate"],
    );
});

both_backends!(expired_server_certificate_is_refused, |backend| {
    let pki = pki();
    let server_tls = json!({
        "cert_chain_file": pki.expired.0,
        "private_key_file": pki.expired.1,
    });
    refused(
        backend,
        server_tls,
        Some(pki.agent_tls(false)),
        &["certificate", "expired"],
        &["certificate"],
    );
});

both_backends!(missing_client_certificate_under_mutual_tls, |backend| {
    let pki = pki();
    refused(
        backend,
        pki.server_tls(true),
        Some(pki.agent_tls(false)),
        &["TLS handshake with", "certificate"],
        &["presented no client certificate"],
    );
});

both_backends!(plaintext_agent_to_a_tls_port_is_refused, |backend| {
    let pki = pki();
    refused(
        backend,
        pki.server_tls(false),
        None,
        &["closed the connection during the handshake"],
        &["plaintext"],
    );
});

#[test]
fn dial_error_names_the_certificate() {
    let pki = pki();
    let echo = echo_backend();
    let server = server(ringtun::config::IoBackend::Epoll)
        .cluster("c")
        .tls(pki.server_tls(false))
        .run();
    let mut agent_tls = pki.agent_tls(false);
    agent_tls["ca_file"] = pki.other_ca.file.clone().into();
    let config = agent(
        ringtun::config::IoBackend::Epoll,
        server.tunnel_addr(),
        echo.addr,
    )
    .tls(agent_tls)
    .config();
    let tls = config.tunnels[0].tls_context.clone().unwrap();
    let dial_tls = ringtun::agent::dial::TlsDial {
        config: ringtun::tls::Rotating::new(ringtun::tls::client_config(&tls).unwrap()),
        tls,
    };
    let params = ringtun::agent::dial::InitParams {
        cluster: "c",
        host_name: "edge",
        weight: 10,
        credential_policy: "",
        credential: None,
        agent_id: "test",
        role: ringtun::protocol::Role::Data,
        max_connection_num: 1,
        tls: Some(&dial_tls),
        server_name: "127.0.0.1:1",
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(ringtun::agent::dial::dial(server.tunnel_addr(), &params))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("TLS handshake with") && text.contains("certificate"),
        "{text}"
    );
    assert!(wait_until(Duration::from_secs(5), || tls_failures(&server) >= 1));
}

both_backends!(tls_echo_sixteen_mebibytes_under_backpressure, |backend| {
    let pki = pki();
    let echo = echo_backend();
    let server = server(backend).cluster("c").tls(pki.server_tls(true)).run();
    let _agent = agent(backend, server.tunnel_addr(), echo.addr)
        .tls(pki.agent_tls(true))
        .connection_num(2)
        .run();
    wait_registered(&server, "c", 1, 2);
    let frontend = server.frontend_addr("c").unwrap();
    let sessions: Vec<_> = (0..2u8)
        .map(|seed| {
            std::thread::spawn(move || {
                let data = pattern(16 << 20, seed);
                let back = echo_roundtrip(frontend, &data);
                assert_eq!(back.len(), data.len());
                assert!(back == data, "echoed bytes differ");
            })
        })
        .collect();
    for s in sessions {
        s.join().unwrap();
    }
});

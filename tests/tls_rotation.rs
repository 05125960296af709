//! Certificate rotation without a restart: a server reload (admin `POST /reload`, as SIGHUP)
//! re-reads `cert_chain_file`, `private_key_file` and `ca_file`; new agent connections get the new
//! certificate while established sessions run on; files that do not load are refused and the
//! running certificate keeps serving. An agent re-reads its TLS files on SIGHUP
//! (`AgentHandle::reload_tls`). SIGHUP itself is sent to `ringtun server` and `ringtun agent`
//! processes too: the signal wiring rotates. Certificates are generated here (rcgen); both
//! backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use serde_json::json;

use common::*;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringtun-rotate-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes through a rename, as certificate tooling does (a reader never sees half a file).
fn put(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A server certificate for `tunnel.test` signed by `ca`: (chain PEM, key PEM, DER).
fn server_cert(ca: &CertifiedIssuer<'static, KeyPair>, cn: &str) -> (String, String, Vec<u8>) {
    let mut params = CertificateParams::new(vec!["tunnel.test".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// The certificate the tunnel port serves to a new connection (a TLS handshake, then gone).
fn served_certificate(tunnel: SocketAddr, ca_file: &Path) -> Vec<u8> {
    let tls: ringtun::config::AgentTlsConfig =
        serde_json::from_value(json!({"ca_file": ca_file, "server_name": "tunnel.test"})).unwrap();
    let config = ringtun::tls::client_config(&tls).unwrap();
    let name = ringtun::tls::ServerName::try_from("tunnel.test").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut sock = TcpStream::connect(tunnel).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    conn.peer_certificates().unwrap()[0].to_vec()
}

fn roundtrip(c: &mut TcpStream, data: &[u8]) {
    c.write_all(data).unwrap();
    let mut back = vec![0u8; data.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
}

both_backends!(a_server_certificate_rotates_while_sessions_run, |backend| {
    let dir = temp_dir(&format!("server-{backend:?}"));
    let authority = ca("rotation-ca");
    let ca_file = dir.join("ca.pem");
    put(&ca_file, &authority.pem());
    let (chain1, key1, der1) = server_cert(&authority, "first");
    let (chain2, key2, der2) = server_cert(&authority, "second");
    let (chain_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
    put(&chain_file, &chain1);
    put(&key_file, &key1);
    let builder = server(backend)
        .cluster("c")
        .admin()
        .tls(json!({"cert_chain_file": chain_file, "private_key_file": key_file}));
    let config_file = dir.join("server.json");
    std::fs::write(
        &config_file,
        serde_json::to_string(&builder.config()).unwrap(),
    )
    .unwrap();
    let server = builder.run();
    server.set_config_path(&config_file);
    let admin = server.admin_addr().unwrap();
    let echo = echo_backend();
    let _agent = agent(backend, server.tunnel_addr(), echo.addr)
        .tls(json!({"ca_file": ca_file, "server_name": "tunnel.test"}))
        .reconnect_ms(50, 200)
        .run();
    wait_registered(&server, "c", 1, 4);
    let frontend = server.frontend_addr("c").unwrap();
    let mut session = TcpStream::connect(frontend).unwrap();
    session
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    roundtrip(&mut session, b"before");
    assert!(served_certificate(server.tunnel_addr(), &ca_file) == der1);

    // Rotate: new files at the same paths, then reload.
    put(&key_file, &key2);
    put(&chain_file, &chain2);
    let (status, _, body) = http(admin, "POST", "/reload");
    assert_eq!(status, 200, "{body}");
    assert!(
        served_certificate(server.tunnel_addr(), &ca_file) == der2,
        "a new connection gets the new certificate"
    );
    roundtrip(&mut session, b"the session in flight runs on");
    drop(session);
    // The agent's new connections (replacing the one the session used) handshake with it.
    wait_registered(&server, "c", 1, 4);
    assert_eq!(echo_roundtrip(frontend, b"new session"), b"new session");

    // A mismatched pair (the old chain, the new key) is refused; the new one keeps serving.
    put(&chain_file, &chain1);
    let (status, _, body) = http(admin, "POST", "/reload");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tunnel_listener.tls_context"), "{body}");
    assert!(served_certificate(server.tunnel_addr(), &ca_file) == der2);
    // So is an unreadable key file.
    put(&chain_file, &chain2);
    std::fs::remove_file(&key_file).unwrap();
    let (status, _, body) = http(admin, "POST", "/reload");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("server.key"), "{body}");
    assert!(served_certificate(server.tunnel_addr(), &ca_file) == der2);
    assert_eq!(echo_roundtrip(frontend, b"still served"), b"still served");
    let _ = std::fs::remove_dir_all(&dir);
});

both_backends!(an_agent_rereads_its_ca_file, |backend| {
    let dir = temp_dir(&format!("agent-{backend:?}"));
    let (old_ca, new_ca) = (ca("old-ca"), ca("new-ca"));
    let agent_ca = dir.join("agent-ca.pem");
    put(&agent_ca, &old_ca.pem());
    let (chain1, key1, _) = server_cert(&old_ca, "old");
    let (chain2, key2, _) = server_cert(&new_ca, "new");
    let (chain_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
    put(&chain_file, &chain1);
    put(&key_file, &key1);
    let builder = server(backend)
        .cluster("c")
        .tls(json!({"cert_chain_file": chain_file, "private_key_file": key_file}));
    let server = builder.run();
    let echo = echo_backend();
    let agent = agent(backend, server.tunnel_addr(), echo.addr)
        .tls(json!({"ca_file": agent_ca, "server_name": "tunnel.test"}))
        .reconnect_ms(50, 200)
        .run();
    wait_registered(&server, "c", 1, 4);
    // The server moves to a certificate of another CA: the agent's new dials fail. Framed
    // sessions keep their connections, so new dials come from demand: more sessions at once
    // than the pool holds make the server ask for more (pool requests).
    put(&key_file, &key2);
    put(&chain_file, &chain2);
    server.reload(server.config().unwrap()).unwrap();
    let frontend = server.frontend_addr("c").unwrap();
    for i in 0..2u8 {
        assert_eq!(echo_roundtrip(frontend, &[i; 3]), [i; 3]);
    }
    let held = hold_sessions(frontend, 4);
    let waiting: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(frontend).unwrap())
        .collect();
    assert!(wait_until(Duration::from_secs(10), || agent
        .status()
        .dial_failures_total
        > 0));
    drop((held, waiting));
    // A ca_file that does not load is refused; nothing changes.
    put(&agent_ca, "not a certificate");
    assert!(agent.reload_tls().is_err());
    // The new CA, re-read: the pool fills again.
    put(&agent_ca, &new_ca.pem());
    assert_eq!(agent.reload_tls().unwrap(), 1);
    wait_registered(&server, "c", 1, 4);
    assert_eq!(echo_roundtrip(frontend, b"trusted again"), b"trusted again");
    // New dials succeed again: demand beyond the pool adds connections.
    let held = hold_sessions(frontend, 4);
    let _more: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(frontend).unwrap())
        .collect();
    assert!(wait_until(Duration::from_secs(10), || server
        .hosts("c")
        .first()
        .is_some_and(|h| h.data_connections > 4)));
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
});

both_backends!(
    sighup_rotates_the_certificate_of_a_server_process,
    |backend| {
        let dir = temp_dir(&format!("sighup-server-{backend:?}"));
        let authority = ca("sighup-ca");
        let ca_file = dir.join("ca.pem");
        put(&ca_file, &authority.pem());
        let (chain1, key1, der1) = server_cert(&authority, "first");
        let (chain2, key2, der2) = server_cert(&authority, "second");
        let (chain_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
        put(&chain_file, &chain1);
        put(&key_file, &key1);
        let config = server(backend)
            .cluster("c")
            .tls(json!({"cert_chain_file": chain_file, "private_key_file": key_file}))
            .config();
        let config_file = dir.join("server.json");
        std::fs::write(&config_file, serde_json::to_string(&config).unwrap()).unwrap();
        let process = process::Process::start("server", &config_file);
        let started = process.line_with(&["server started"]);
        let tunnel: SocketAddr = process::field(&started, "tunnel_addr=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(served_certificate(tunnel, &ca_file) == der1);

        put(&key_file, &key2);
        put(&chain_file, &chain2);
        process.hangup();
        assert!(
            wait_until(Duration::from_secs(10), || served_certificate(
                tunnel, &ca_file
            ) == der2),
            "after SIGHUP a new connection gets the new certificate"
        );
        process.line_with(&["SIGHUP: configuration reloaded"]);
        drop(process);
        let _ = std::fs::remove_dir_all(&dir);
    }
);

both_backends!(
    sighup_makes_an_agent_process_reread_its_ca_file,
    |backend| {
        let dir = temp_dir(&format!("sighup-agent-{backend:?}"));
        let (old_ca, new_ca) = (ca("old-ca"), ca("new-ca"));
        let agent_ca = dir.join("agent-ca.pem");
        put(&agent_ca, &old_ca.pem());
        let (chain1, key1, _) = server_cert(&old_ca, "old");
        let (chain2, key2, _) = server_cert(&new_ca, "new");
        let (chain_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
        put(&chain_file, &chain1);
        put(&key_file, &key1);
        let server = server(backend)
            .cluster("c")
            .tls(json!({"cert_chain_file": chain_file, "private_key_file": key_file}))
            .run();
        let echo = echo_backend();
        let config = agent(backend, server.tunnel_addr(), echo.addr)
            .tls(json!({"ca_file": agent_ca, "server_name": "tunnel.test"}))
            .reconnect_ms(50, 200)
            .config();
        let config_file = dir.join("agent.json");
        std::fs::write(&config_file, serde_json::to_string(&config).unwrap()).unwrap();
        let process = process::Process::start("agent", &config_file);
        wait_registered(&server, "c", 1, 4);
        // The server moves to a certificate of another CA: the agent's new dials fail. Framed
        // sessions keep their connections, so new dials come from demand: more sessions at once
        // than the pool holds make the server ask for more (pool requests).
        put(&key_file, &key2);
        put(&chain_file, &chain2);
        server.reload(server.config().unwrap()).unwrap();
        let frontend = server.frontend_addr("c").unwrap();
        let held = hold_sessions(frontend, 4);
        let waiting: Vec<std::net::TcpStream> = (0..2)
            .map(|_| std::net::TcpStream::connect(frontend).unwrap())
            .collect();
        process.line_with(&["certificate"]);
        drop((held, waiting));
        // The agent's CA file names the new CA; SIGHUP re-reads it and new dials succeed again.
        put(&agent_ca, &new_ca.pem());
        process.hangup();
        process.line_with(&["SIGHUP: TLS files re-read"]);
        wait_registered(&server, "c", 1, 4);
        assert_eq!(echo_roundtrip(frontend, b"trusted again"), b"trusted again");
        let held = hold_sessions(frontend, 4);
        let _more: Vec<std::net::TcpStream> = (0..2)
            .map(|_| std::net::TcpStream::connect(frontend).unwrap())
            .collect();
        assert!(wait_until(Duration::from_secs(10), || server
            .hosts("c")
            .first()
            .is_some_and(|h| h.data_connections > 4)));
        drop(held);
        drop(process);
        let _ = std::fs::remove_dir_all(&dir);
    }
);
/// `n` sessions running at once (each has echoed one byte), held until dropped.
fn hold_sessions(frontend: std::net::SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    use std::io::{Read, Write};
    (0..n)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(frontend).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).unwrap();
            c
        })
        .collect()
}

//! TLS 1.2 end to end, as a MOSN agent (Go's TLS) dials a ringtun server with `min_version:
//! "1.2"`: a TLS 1.2-only client sends MOSN's init, gets the exact MOSN success frame, and its
//! data connection then carries a session through the server's TLS pump, a mebibyte each way
//! (records cut anywhere by the reads). Certificates are generated here (rcgen); both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;

use common::*;

/// A CA and a `tunnel.test` server certificate, in PEM files under `dir`: (ca, chain, key).
fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "tls12-ca");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec!["tunnel.test".to_string()]).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let files = (dir.join("ca.pem"), dir.join("s.crt"), dir.join("s.key"));
    std::fs::write(&files.0, ca.pem()).unwrap();
    std::fs::write(&files.1, cert.pem()).unwrap();
    std::fs::write(&files.2, key.serialize_pem()).unwrap();
    files
}

/// A client that speaks TLS 1.2 only, trusting `ca_file`.
fn tls12_client(ca_file: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

/// One MOSN data connection over TLS 1.2: the init, the answer, then it echoes what it is sent
/// (a `tcp_proxy` to an echo backend, in one thread) until the server closes it.
fn mosn_data_connection(tunnel: SocketAddr, config: Arc<rustls::ClientConfig>) {
    let name = ServerName::try_from("tunnel.test").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let sock = TcpStream::connect(tunnel).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let payload = br#"{"cluster_name":"c","weight":10,"host_name":"mosn-tls12","credential_policy":"","credential":"","extra":null}"#;
    let mut init = vec![0x20, 0x88, 0x01, 0x01, 0x01, 0x00];
    init.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    init.extend_from_slice(payload);
    tls.write_all(&init).unwrap();
    let mut answer = [0u8; 20];
    tls.read_exact(&mut answer).unwrap();
    assert_eq!(
        tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(&answer, b"\x20\x88\x01\x02\x02\x00\x00\x0c{\"status\":1}");
    let mut buf = vec![0u8; 7000];
    loop {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tls.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

both_backends!(a_tls_1_2_mosn_agent_carries_a_session, |backend| {
    let dir =
        std::env::temp_dir().join(format!("ringtun-tls12-{}-{backend:?}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_file, chain, key) = pki(&dir);
    let server = server(backend)
        .cluster("c")
        .tls(json!({"cert_chain_file": chain, "private_key_file": key, "min_version": "1.2"}))
        .run();
    let (tunnel, config) = (server.tunnel_addr(), tls12_client(&ca_file));
    let agent = std::thread::spawn(move || mosn_data_connection(tunnel, config));
    assert!(wait_until(Duration::from_secs(10), || server
        .hosts("c")
        .iter()
        .any(|h| h.legacy && h.idle_connections == 1)));
    let mut client = TcpStream::connect(server.frontend_addr("c").unwrap()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 31 % 251) as u8).collect();
    let writer = {
        let (mut w, data) = (client.try_clone().unwrap(), data.clone());
        std::thread::spawn(move || {
            for piece in data.chunks(10_007) {
                w.write_all(piece).unwrap();
            }
        })
    };
    let mut back = vec![0u8; data.len()];
    client.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "a mebibyte came back intact over TLS 1.2");
    drop(client);
    server.shutdown();
    agent.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
});

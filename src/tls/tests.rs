//! TLS engine tests with certificates generated here (rcgen): in-memory handshakes over owned
//! buffers, 1 MiB both ways, every failure's message, and the tokio handshake helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

use super::*;
use crate::config::{AgentTlsConfig, ServerTlsConfig, TlsMinVersion};

/// A fresh directory for one test's PEM files.
fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ringtun-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

pub(super) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub(super) file: String,
}

fn ca(dir: &std::path::Path, name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let file = write(dir, &format!("{name}.pem"), &issuer.pem());
    Ca { issuer, file }
}

#[derive(Clone, Copy, PartialEq)]
enum Validity {
    Now,
    Expired,
}

/// A leaf certificate for `names` signed by `ca`: (chain file, key file).
fn leaf(
    dir: &std::path::Path,
    ca: &Ca,
    file_name: &str,
    names: &[&str],
    purpose: ExtendedKeyUsagePurpose,
    validity: Validity,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, file_name);
    params.extended_key_usages = vec![purpose];
    if validity == Validity::Expired {
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

/// A working PKI: one CA, a server certificate for `tunnel.test` and 127.0.0.1, an agent
/// certificate.
pub(super) struct Pki {
    dir: PathBuf,
    pub(super) ca: Ca,
    server: (String, String),
    pub(super) agent: (String, String),
}

pub(super) fn pki() -> Pki {
    let dir = temp_dir();
    let ca = ca(&dir, "ca");
    let server = leaf(
        &dir,
        &ca,
        "server",
        &["tunnel.test", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        Validity::Now,
    );
    let agent = leaf(
        &dir,
        &ca,
        "agent",
        &["edge-01"],
        ExtendedKeyUsagePurpose::ClientAuth,
        Validity::Now,
    );
    Pki {
        dir,
        ca,
        server,
        agent,
    }
}

impl Pki {
    pub(super) fn server_tls(&self, mutual: bool) -> ServerTlsConfig {
        ServerTlsConfig {
            cert_chain_file: self.server.0.clone(),
            private_key_file: self.server.1.clone(),
            ca_file: mutual.then(|| self.ca.file.clone()),
            min_version: TlsMinVersion::V1_3,
        }
    }

    pub(super) fn agent_tls(&self, client_cert: bool) -> AgentTlsConfig {
        AgentTlsConfig {
            ca_file: Some(self.ca.file.clone()),
            server_name: None,
            cert_chain_file: client_cert.then(|| self.agent.0.clone()),
            private_key_file: client_cert.then(|| self.agent.1.clone()),
            min_version: TlsMinVersion::V1_3,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One end of an in-memory connection.
pub(super) struct End {
    pub(super) tls: TlsSession,
    inbox: Vec<u8>,
    pub(super) plaintext: Vec<u8>,
    pub(super) eof: bool,
    pub(super) err: Option<TlsError>,
}

impl End {
    pub(super) fn new(tls: TlsSession) -> Self {
        Self {
            tls,
            inbox: Vec::new(),
            plaintext: Vec::new(),
            eof: false,
            err: None,
        }
    }

    /// Feeds the inbox to the session; appends what it sends to `out`.
    fn step(&mut self, out: &mut Vec<u8>) {
        if self.err.is_some() {
            return;
        }
        if self.tls.is_handshaking() {
            match self.tls.handshake_step(&self.inbox, out) {
                Ok(p) => {
                    self.inbox.drain(..p.consumed);
                }
                Err(e) => self.err = Some(e),
            }
        } else {
            match self.tls.decrypt(&self.inbox, &mut self.plaintext) {
                Ok(o) => {
                    self.inbox.drain(..o.consumed);
                    self.eof |= o.eof;
                    self.tls.take_output(out);
                }
                Err(e) => self.err = Some(e),
            }
        }
    }
}

pub(super) fn client(cfg: &AgentTlsConfig, address: &str) -> End {
    let config = client_config(cfg).unwrap();
    End::new(TlsSession::client(config, server_name(cfg, address).unwrap()).unwrap())
}

pub(super) fn server(cfg: &ServerTlsConfig) -> End {
    End::new(TlsSession::server(server_config(cfg).unwrap()).unwrap())
}

/// Moves bytes both ways until nothing changes (handshake, alerts, pending data).
fn run(c: &mut End, s: &mut End) {
    for _ in 0..20 {
        let mut to_server = Vec::new();
        c.step(&mut to_server);
        let mut to_client = Vec::new();
        s.inbox.extend_from_slice(&to_server);
        s.step(&mut to_client);
        c.inbox.extend_from_slice(&to_client);
        let quiet = to_server.is_empty() && to_client.is_empty();
        if quiet && c.inbox.is_empty() && s.inbox.is_empty() {
            break;
        }
    }
}

pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Sends `data` from `from` to `to` through encrypt / decrypt in 64 KiB pieces.
fn transfer(from: &mut End, to: &mut End, data: &[u8]) {
    let mut wire = Vec::new();
    for chunk in data.chunks(64 * 1024) {
        wire.clear();
        from.tls.encrypt(chunk, &mut wire).unwrap();
        assert!(wire.len() > chunk.len(), "ciphertext carries overhead");
        to.inbox.extend_from_slice(&wire);
        let mut ignored = Vec::new();
        to.step(&mut ignored);
        assert!(to.err.is_none(), "{:?}", to.err);
    }
}

pub(super) fn errors(c: &End, s: &End) -> (String, String) {
    let show = |e: &Option<TlsError>| e.as_ref().map(ToString::to_string).unwrap_or_default();
    (show(&c.err), show(&s.err))
}

#[test]
fn handshake_then_one_mib_each_way_in_memory() {
    let pki = pki();
    let mut c = client(&pki.agent_tls(false), "tunnel.test:7070");
    let mut s = server(&pki.server_tls(false));
    run(&mut c, &mut s);
    assert!(c.err.is_none() && s.err.is_none(), "{:?}", errors(&c, &s));
    assert!(!c.tls.is_handshaking() && !s.tls.is_handshaking());
    assert_eq!(
        c.tls.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let up = pattern(1 << 20, 1);
    transfer(&mut c, &mut s, &up);
    assert!(
        s.plaintext == up,
        "server received the agent's bytes intact"
    );
    let down = pattern(1 << 20, 7);
    transfer(&mut s, &mut c, &down);
    assert!(
        c.plaintext == down,
        "agent received the server's bytes intact"
    );

    // Half-close: the agent's close_notify is an EOF at the server, which can still send.
    let mut wire = Vec::new();
    c.tls.close_notify(&mut wire);
    s.inbox.extend_from_slice(&wire);
    s.step(&mut Vec::new());
    assert!(s.eof);
    assert!(s.tls.peer_closed().is_ok());
    s.plaintext.clear();
    c.plaintext.clear();
    transfer(&mut s, &mut c, b"after half-close");
    assert_eq!(c.plaintext, b"after half-close");
    assert!(matches!(c.tls.peer_closed(), Err(TlsError::Truncated)));
}

#[test]
fn mutual_tls_handshake_and_data() {
    let pki = pki();
    let mut c = client(&pki.agent_tls(true), "127.0.0.1:7070");
    let mut s = server(&pki.server_tls(true));
    run(&mut c, &mut s);
    assert!(c.err.is_none() && s.err.is_none(), "{:?}", errors(&c, &s));
    transfer(&mut c, &mut s, b"init");
    run(&mut c, &mut s);
    assert_eq!(s.plaintext, b"init");
    assert!(c.err.is_none() && s.err.is_none(), "{:?}", errors(&c, &s));
}

#[test]
fn tls_1_2_only_with_min_version_1_2() {
    let pki = pki();
    // An agent that speaks only TLS 1.2.
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        let pem = std::fs::read(&pki.ca.file).unwrap();
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            r.add(c.unwrap()).unwrap();
        }
        r
    };
    let tls12_client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let name = ServerName::try_from("tunnel.test").unwrap();
    let new_client = || End::new(TlsSession::client(tls12_client.clone(), name.clone()).unwrap());

    let mut c = new_client();
    let mut s = server(&pki.server_tls(false));
    run(&mut c, &mut s);
    let (ce, se) = errors(&c, &s);
    assert!(se.contains("no TLS version or cipher suite"), "{se}");
    assert!(se.contains("min_version"), "{se}");
    assert!(ce.contains("no TLS version or cipher suite"), "{ce}");

    let mut allowing = pki.server_tls(false);
    allowing.min_version = TlsMinVersion::V1_2;
    let mut c = new_client();
    let mut s = server(&allowing);
    run(&mut c, &mut s);
    assert!(c.err.is_none() && s.err.is_none(), "{:?}", errors(&c, &s));
    assert_eq!(
        s.tls.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    transfer(&mut c, &mut s, &pattern(100_000, 3));
    assert_eq!(s.plaintext, pattern(100_000, 3));
}

#[test]
fn unknown_ca_is_a_certificate_error_on_both_sides() {
    let pki = pki();
    let other = ca(&pki.dir, "other-ca");
    let mut agent = pki.agent_tls(false);
    agent.ca_file = Some(other.file.clone());
    let mut c = client(&agent, "tunnel.test:7070");
    let mut s = server(&pki.server_tls(false));
    run(&mut c, &mut s);
    let (ce, se) = errors(&c, &s);
    assert!(c.err.as_ref().is_some_and(TlsError::is_certificate), "{ce}");
    assert!(ce.contains("server's certificate"), "{ce}");
    assert!(
        ce.contains("not signed by a trusted certificate authority"),
        "{ce}"
    );
    assert!(se.contains("agent refused our certificate"), "{se}");
    assert!(
        se.contains("does not trust the certificate authority"),
        "{se}"
    );
}

#[test]
fn wrong_name_is_a_certificate_error() {
    let pki = pki();
    let mut agent = pki.agent_tls(false);
    agent.server_name = Some("other.test".into());
    let mut c = client(&agent, "tunnel.test:7070");
    let mut s = server(&pki.server_tls(false));
    run(&mut c, &mut s);
    let (ce, se) = errors(&c, &s);
    assert!(ce.contains("certificate"), "{ce}");
    assert!(ce.contains("not valid for the name \"other.test\""), "{ce}");
    assert!(
        ce.contains("(it is for tunnel.test, 127.0.0.1;"),
        "names what the certificate is for: {ce}"
    );
    assert!(se.contains("agent refused our certificate"), "{se}");
}

#[test]
fn address_without_server_name_is_verified_as_ip() {
    let pki = pki();
    // The server certificate has 127.0.0.1 but not 127.0.0.2.
    let mut c = client(&pki.agent_tls(false), "127.0.0.2:7070");
    let mut s = server(&pki.server_tls(false));
    run(&mut c, &mut s);
    let (ce, _) = errors(&c, &s);
    assert!(ce.contains("not valid for the name \"127.0.0.2\""), "{ce}");
}

#[test]
fn expired_certificate_is_a_certificate_error() {
    let pki = pki();
    let (cert, key) = leaf(
        &pki.dir,
        &pki.ca,
        "expired",
        &["tunnel.test"],
        ExtendedKeyUsagePurpose::ServerAuth,
        Validity::Expired,
    );
    let mut server_tls = pki.server_tls(false);
    server_tls.cert_chain_file = cert;
    server_tls.private_key_file = key;
    let mut c = client(&pki.agent_tls(false), "tunnel.test:7070");
    let mut s = server(&server_tls);
    run(&mut c, &mut s);
    let (ce, se) = errors(&c, &s);
    assert!(ce.contains("certificate") && ce.contains("expired"), "{ce}");
    assert!(
        se.contains("refused our certificate") && se.contains("expired"),
        "{se}"
    );
}

#[test]
fn missing_client_certificate_under_mutual_tls() {
    let pki = pki();
    let mut c = client(&pki.agent_tls(false), "tunnel.test:7070");
    let mut s = server(&pki.server_tls(true));
    run(&mut c, &mut s);
    let (ce, se) = errors(&c, &s);
    assert!(
        se.contains("agent presented no client certificate") && se.contains("ca_file"),
        "{se}"
    );
    assert!(
        ce.contains("requires a client certificate") && ce.contains("cert_chain_file"),
        "{ce}"
    );
    assert!(c.err.as_ref().is_some_and(TlsError::is_certificate));
    assert!(s.err.as_ref().is_some_and(TlsError::is_certificate));
}

#[test]
fn client_certificate_from_another_ca_is_refused() {
    let pki = pki();
    let other = ca(&pki.dir, "rogue-ca");
    let (cert, key) = leaf(
        &pki.dir,
        &other,
        "rogue-agent",
        &["edge-01"],
        ExtendedKeyUsagePurpose::ClientAuth,
        Validity::Now,
    );
    let mut agent = pki.agent_tls(true);
    agent.cert_chain_file = Some(cert);
    agent.private_key_file = Some(key);
    let mut c = client(&agent, "tunnel.test:7070");
    let mut s = server(&pki.server_tls(true));
    run(&mut c, &mut s);
    let (ce, se) = errors(&c, &s);
    assert!(
        se.contains("agent (client)'s certificate was refused"),
        "{se}"
    );
    assert!(ce.contains("server refused our certificate"), "{ce}");
}

#[test]
fn plaintext_frame_to_a_tls_port_is_named() {
    let pki = pki();
    let mut s = server(&pki.server_tls(false));
    let init =
        crate::protocol::encode_to_vec(&crate::protocol::Frame::Init(Default::default())).unwrap();
    let err = s.tls.handshake_step(&init, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, TlsError::Plaintext));
    assert_eq!(
        err.to_string(),
        "peer sent plaintext (a ringtun/MOSN frame) to a TLS port; is TLS configured on both sides?"
    );
    // Something else entirely.
    let mut s = server(&pki.server_tls(false));
    let err = s.tls.handshake_step(b"GET / HTTP/1.1\r\n", &mut Vec::new());
    assert_eq!(
        err.unwrap_err().to_string(),
        "peer sent bytes that are not TLS (first byte 0x47)"
    );
    // A plaintext server answering a TLS agent is named the same way.
    let mut c = client(&pki.agent_tls(false), "tunnel.test:7070");
    let mut hello = Vec::new();
    c.tls.handshake_step(&[], &mut hello).unwrap();
    assert!(!hello.is_empty(), "the ClientHello");
    let answer = crate::protocol::encode_to_vec(&crate::protocol::Frame::InitResponse(
        crate::protocol::ConnectionInitResponse::status(crate::protocol::Status::SUCCESS),
    ))
    .unwrap();
    assert!(matches!(
        c.tls.handshake_step(&answer, &mut Vec::new()),
        Err(TlsError::Plaintext)
    ));
}

#[test]
fn garbage_after_a_valid_record_header_is_a_protocol_error_not_a_panic() {
    let pki = pki();
    for garbage in [
        &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5][..],
        &[0x17, 0x03, 0x03, 0xff, 0xff][..],
        &[0x15; 64][..],
    ] {
        let mut s = server(&pki.server_tls(false));
        let mut out = Vec::new();
        let r = s.tls.handshake_step(garbage, &mut out);
        if let Err(e) = r {
            assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
fn config_errors_name_the_file() {
    let pki = pki();
    let mut tls = pki.server_tls(false);
    tls.cert_chain_file = pki.dir.join("missing.crt").display().to_string();
    let e = server_config(&tls).unwrap_err().to_string();
    assert!(e.starts_with("cannot read certificate chain file"), "{e}");
    assert!(e.contains("missing.crt"), "{e}");

    // Key and certificate swapped.
    let mut tls = pki.server_tls(false);
    std::mem::swap(&mut tls.cert_chain_file, &mut tls.private_key_file);
    let e = server_config(&tls).unwrap_err().to_string();
    assert!(
        e.contains("server.key") && e.contains("holds no certificate"),
        "{e}"
    );

    let mut tls = pki.server_tls(false);
    tls.private_key_file = tls.cert_chain_file.clone();
    let e = server_config(&tls).unwrap_err().to_string();
    assert!(e.contains("holds no private key"), "{e}");

    // A key that is not the certificate's.
    let mut tls = pki.server_tls(false);
    tls.private_key_file = pki.agent.1.clone();
    let e = server_config(&tls).unwrap_err().to_string();
    assert!(e.contains("cannot be used together"), "{e}");

    let garbage = write(
        &pki.dir,
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\n!!!\n",
    );
    let mut agent = pki.agent_tls(false);
    agent.ca_file = Some(garbage);
    let e = client_config(&agent).unwrap_err().to_string();
    assert!(e.starts_with("CA file") && e.contains("garbage.pem"), "{e}");

    let e = server_name(&pki.agent_tls(false), "bad name:7070")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a valid TLS server name"), "{e}");
}

#[test]
fn secrets_are_not_in_debug_output() {
    let pki = pki();
    let s = server(&pki.server_tls(false));
    let shown = format!("{:?}", s.tls);
    assert!(shown.starts_with("TlsSession"), "{shown}");
    assert!(!shown.contains("PRIVATE"));
}

/// The tokio helpers: a real loopback connection, the agent's first bytes after the handshake
/// delivered with it, and a plaintext agent refused.
#[test]
fn accept_and_connect_over_loopback() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pki = pki();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_cfg = server_config(&pki.server_tls(true)).unwrap();
        let agent = pki.agent_tls(true);
        let client_cfg = client_config(&agent).unwrap();
        let name = server_name(&agent, &addr.to_string()).unwrap();

        let server_task = {
            let server_cfg = server_cfg.clone();
            tokio::spawn(async move {
                let (stream, _) = listener.accept().await.unwrap();
                let mut est = accept(&stream, server_cfg, std::time::Duration::from_secs(5))
                    .await
                    .unwrap();
                // The agent's first message may have come with the handshake, or come next.
                let mut inbuf = vec![0u8; 4096];
                while est.plaintext.len() < 5 {
                    stream.readable().await.unwrap();
                    if let Ok(n) = stream.try_read(&mut inbuf) {
                        assert!(n > 0);
                        est.session
                            .decrypt(&inbuf[..n], &mut est.plaintext)
                            .unwrap();
                    }
                }
                let mut out = Vec::new();
                est.session.encrypt(b"world", &mut out).unwrap();
                crate::rt::write_all(&stream, &out).await.unwrap();
                (est.plaintext, listener)
            })
        };
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut est = connect(&stream, client_cfg, name).await.unwrap();
        let mut out = Vec::new();
        est.session.encrypt(b"hello", &mut out).unwrap();
        crate::rt::write_all(&stream, &out).await.unwrap();
        let mut inbuf = vec![0u8; 4096];
        while est.plaintext.len() < 5 {
            stream.readable().await.unwrap();
            if let Ok(n) = stream.try_read(&mut inbuf) {
                assert!(n > 0, "server closed");
                est.session
                    .decrypt(&inbuf[..n], &mut est.plaintext)
                    .unwrap();
            }
        }
        assert_eq!(est.plaintext, b"world");
        let (got, listener) = server_task.await.unwrap();
        assert_eq!(got, b"hello");

        // A plaintext agent: its init frame is named at the TLS port.
        let plain = tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let init =
                crate::protocol::encode_to_vec(&crate::protocol::Frame::Init(Default::default()))
                    .unwrap();
            crate::rt::write_all(&stream, &init).await.unwrap();
            stream
        });
        let (stream, _) = listener.accept().await.unwrap();
        let err = accept(
            &stream,
            server_cfg.clone(),
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, TlsError::Plaintext), "{err}");
        drop(plain.await.unwrap());

        // Silence is bounded by the timeout.
        let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let err = accept(&stream, server_cfg, std::time::Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "TLS handshake not finished within 100 ms");
        drop(silent);
    });
}

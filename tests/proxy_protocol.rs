//! PROXY protocol end to end, both backends, with real peers: nginx as the backend
//! (`listen ... proxy_protocol`, answering `$proxy_protocol_addr:$proxy_protocol_port`) sees the
//! client's own address and port through the tunnel, v1 and v2, plaintext and TLS, IPv4 and
//! IPv6; HAProxy (`send-proxy-v2`) in front of a frontend gets the address it saw to the backend.
//! Refusals: an untrusted source, a header cut in half then silent (closed after its timeout),
//! oversized headers, and 1,000 garbage headers beside a session in flight that goes on intact.
//!
//! nginx and HAProxy are installed by `.ci/run`; where one is truly absent, the tests that need it
//! print why and return. Their listening sockets are bound here on port 0 and inherited (nginx's
//! `NGINX` variable, HAProxy's `fd@3`), so no fixed port is used and no wait is needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use ringtun::protocol::proxy::{encode_proxy_header, ProxyHeader, ProxyVersion};
use serde_json::json;
use socket2::{Domain, Socket, Type};

use common::*;

// ---- helpers: temp dirs, tools, inherited listeners ----

fn temp_dir(what: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ringtun-proxy-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The path of an installed program (also looked for in the sbin directories, which a
/// non-root PATH may lack).
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// `tool(name)`, or a printed reason to skip.
fn need(name: &str, test: &str) -> Option<PathBuf> {
    let found = tool(name);
    if found.is_none() {
        println!("skipping {test}: {name} is not installed (.ci/run installs it with apt-get)");
    }
    found
}

/// Runs `cmd` with `listener` as its descriptor 3.
fn spawn_with_fd3(mut cmd: Command, listener: &TcpListener) -> Child {
    let fd = listener.as_raw_fd();
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A child process of this test, stopped on drop: SIGTERM to its own pid (nginx's master then
/// stops its worker), SIGKILL if it has not exited within 5 s, and reaped.
struct Peer {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    _listener: TcpListener,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signals our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let exited = wait_until(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// nginx answering every request with `$proxy_protocol_addr:$proxy_protocol_port`.
fn nginx(path: &Path) -> Peer {
    let dir = temp_dir("nginx");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 512; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           server {{\n    listen {addr} proxy_protocol;\n    location / {{\n      default_type text/plain;\n\
               return 200 \"$proxy_protocol_addr:$proxy_protocol_port\";\n    }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new(path);
    cmd.arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .env("NGINX", "3;");
    let child = spawn_with_fd3(cmd, &listener);
    Peer {
        child,
        addr,
        dir,
        _listener: listener,
    }
}

/// HAProxy in TCP mode in front of `frontend`, sending it a PROXY v2 header.
fn haproxy(path: &Path, frontend: SocketAddr) -> Peer {
    let dir = temp_dir("haproxy");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let conf = format!(
        "global\n  maxconn 512\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n\
         \x20 timeout server 30s\nfrontend fe\n  bind fd@3\n  default_backend be\n\
         backend be\n  server ringtun {frontend} send-proxy-v2\n"
    );
    std::fs::write(dir.join("haproxy.cfg"), conf).unwrap();
    let mut cmd = Command::new(path);
    cmd.arg("-db").arg("-f").arg(dir.join("haproxy.cfg"));
    let child = spawn_with_fd3(cmd, &listener);
    Peer {
        child,
        addr,
        dir,
        _listener: listener,
    }
}

/// A TCP connection to `to` from `from` (port 0: any).
fn connect_from(from: SocketAddr, to: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::for_address(from), Type::STREAM, None).unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// One HTTP/1.0 GET written after `before`; the client's own address and the answer's body.
fn get_from(from: SocketAddr, to: SocketAddr, before: &[u8]) -> (SocketAddr, String) {
    let mut s = connect_from(from, to);
    let me = s.local_addr().unwrap();
    let mut request = before.to_vec();
    request.extend_from_slice(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n");
    s.write_all(&request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "answer: {text:?}");
    (me, body)
}

/// What nginx shows for a client: `ip:port` (an IPv6 address unbracketed).
fn shown(addr: SocketAddr) -> String {
    format!("{}:{}", addr.ip(), addr.port())
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

// ---- TLS on the tunnel: one CA, one server certificate ----

struct Pki {
    dir: PathBuf,
    ca_file: String,
    cert: String,
    key: String,
}

fn pki() -> Pki {
    let dir = temp_dir("pki");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "ca");
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let ca_file = write("ca.pem", &issuer.pem());
    let mut params = CertificateParams::new(vec!["tunnel.test".to_string()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Pki {
        cert: write("server.crt", &cert.pem()),
        key: write("server.key", &key.serialize_pem()),
        ca_file,
        dir,
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server with clusters `v1` and `v2` (frontends as `frontend` says), TLS on the tunnel when
/// `pki` is given, and an agent per cluster sending that PROXY version to `backend`.
fn tunnel_pair(
    io: ringtun::config::IoBackend,
    pki: Option<&Pki>,
    frontend_address: &str,
    backend: SocketAddr,
) -> (
    ringtun::server::ServerHandle,
    Vec<ringtun::agent::AgentHandle>,
) {
    let mut builder = server(io);
    for v in ["v1", "v2"] {
        builder = builder
            .cluster(v)
            .frontend_field("address", json!(frontend_address));
    }
    if let Some(p) = pki {
        builder = builder.tls(json!({"cert_chain_file": p.cert, "private_key_file": p.key}));
    }
    let server = builder.run();
    let agents = ["v1", "v2"]
        .into_iter()
        .map(|v| {
            let mut a = agent(io, server.tunnel_addr(), backend)
                .cluster(v)
                .host_name(&format!("edge-{v}"))
                .connection_num(2)
                .listener_field("send_proxy_protocol", json!(v));
            if let Some(p) = pki {
                a = a.tls(json!({"ca_file": p.ca_file, "server_name": "tunnel.test"}));
            }
            a.run()
        })
        .collect();
    for v in ["v1", "v2"] {
        wait_registered(&server, v, 1, 2);
    }
    (server, agents)
}

// ---- a real consumer: nginx behind the agent ----

both_backends!(nginx_sees_the_client_through_the_tunnel, |io| {
    let Some(nginx_path) = need("nginx", "nginx_sees_the_client_through_the_tunnel") else {
        return;
    };
    let backend = nginx(&nginx_path);
    let pki = pki();
    for tls in [false, true] {
        let (server, _agents) = tunnel_pair(io, tls.then_some(&pki), "127.0.0.1:0", backend.addr);
        for v in ["v1", "v2"] {
            let frontend = server.frontend_addr(v).unwrap();
            for _ in 0..2 {
                let (me, body) = get_from(addr("127.0.0.2:0"), frontend, b"");
                assert_eq!(me.ip().to_string(), "127.0.0.2");
                assert_eq!(body, shown(me), "{v}, tls {tls}");
            }
        }
    }
});

both_backends!(ipv6_client_address_end_to_end, |io| {
    let Some(nginx_path) = need("nginx", "ipv6_client_address_end_to_end") else {
        return;
    };
    if TcpListener::bind("[::1]:0").is_err() {
        println!("skipping ipv6_client_address_end_to_end: no IPv6 loopback here");
        return;
    }
    let backend = nginx(&nginx_path);
    let (v6_server, _agents) = tunnel_pair(io, None, "[::1]:0", backend.addr);
    for v in ["v1", "v2"] {
        let frontend = v6_server.frontend_addr(v).unwrap();
        assert!(frontend.is_ipv6());
        let (me, body) = get_from(addr("[::1]:0"), frontend, b"");
        assert_eq!(body, shown(me), "{v}");
        assert!(body.starts_with("::1:"), "{v}: {body}");
    }
    // An IPv6 client named by a PROXY header at an IPv4 frontend reaches nginx as IPv6 too.
    let server = server(io)
        .cluster("c")
        .frontend_field("accept_proxy_protocol", json!(true))
        .frontend_field("trusted_proxies", json!(["127.0.0.1"]))
        .run();
    let _agent = agent(io, server.tunnel_addr(), backend.addr)
        .listener_field("send_proxy_protocol", json!("v1"))
        .connection_num(1)
        .run();
    wait_registered(&server, "c", 1, 1);
    let named = ProxyHeader::Proxy {
        source: addr("[2001:db8::7]:4242"),
        destination: addr("[2001:db8::1]:443"),
    };
    let header = encode_proxy_header(ProxyVersion::V2, &named);
    let frontend = server.frontend_addr("c").unwrap();
    let (_, body) = get_from(addr("127.0.0.1:0"), frontend, &header);
    assert_eq!(body, "2001:db8::7:4242");
});

both_backends!(local_command_keeps_the_proxy_address, |io| {
    let Some(nginx_path) = need("nginx", "local_command_keeps_the_proxy_address") else {
        return;
    };
    let backend = nginx(&nginx_path);
    let server = server(io)
        .cluster("c")
        .frontend_field("accept_proxy_protocol", json!(true))
        .frontend_field("trusted_proxies", json!(["127.0.0.0/8"]))
        .admin()
        .run();
    let _agent = agent(io, server.tunnel_addr(), backend.addr)
        .listener_field("send_proxy_protocol", json!("v2"))
        .connection_num(2)
        .run();
    wait_registered(&server, "c", 1, 2);
    let frontend = server.frontend_addr("c").unwrap();
    let local = encode_proxy_header(ProxyVersion::V2, &ProxyHeader::Local);
    let (me, body) = get_from(addr("127.0.0.3:0"), frontend, &local);
    assert_eq!(body, shown(me), "LOCAL keeps the proxy's own address");
    let v1 = b"PROXY TCP4 198.51.100.20 127.0.0.1 3333 80\r\n";
    let (_, body) = get_from(addr("127.0.0.3:0"), frontend, v1);
    assert_eq!(body, "198.51.100.20:3333");
    let text = http(server.admin_addr().unwrap(), "GET", "/metrics").2;
    assert_eq!(
        metric(&text, "ringtun_proxy_headers_accepted_total"),
        Some(2.0)
    );
});

// ---- a real sender: HAProxy in front of the frontend ----

both_backends!(haproxy_address_reaches_the_backend, |io| {
    let test = "haproxy_address_reaches_the_backend";
    let (Some(nginx_path), Some(haproxy_path)) = (need("nginx", test), need("haproxy", test))
    else {
        return;
    };
    let backend = nginx(&nginx_path);
    let server = server(io)
        .cluster("c")
        .frontend_field("accept_proxy_protocol", json!(true))
        .frontend_field("trusted_proxies", json!(["127.0.0.1/32"]))
        .run();
    let _agent = agent(io, server.tunnel_addr(), backend.addr)
        .listener_field("send_proxy_protocol", json!("v1"))
        .connection_num(2)
        .run();
    wait_registered(&server, "c", 1, 2);
    let proxy = haproxy(&haproxy_path, server.frontend_addr("c").unwrap());
    for _ in 0..3 {
        let (me, body) = get_from(addr("127.0.0.2:0"), proxy.addr, b"");
        assert_eq!(body, shown(me), "the address HAProxy saw");
    }
    assert!(wait_until(Duration::from_secs(5), || {
        server.counters().proxy_headers_accepted_total == 3
    }));
});

//! What idle TLS costs on the heap, counted by this binary's counting allocator (live bytes
//! allocated, not RSS; each allocation also charged to the server or the agent by its thread's
//! name): (1) one `TlsSession` per side, handshaken in memory, after the small records of an
//! idle data connection; (2) an idle TLS *data connection* end to end (server and agent in this
//! process, on each backend), on each side; (3) an idle TLS *session* end to end: the heap it
//! adds while it idles, both sides together. A TLS pump used to park four `pump_buffer_bytes`
//! buffers (256 KiB at the default) per session for as long as it lived; now it holds pool
//! buffers only while bytes flow, and a session holds no rustls record buffer. One test, run
//! alone in its binary (the allocator counts the whole process).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};

use rcgen::{CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use ringtun::config::{AgentTlsConfig, IoBackend, ServerTlsConfig, TlsMinVersion};
use ringtun::tls::{client_config, server_config, TlsSession};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Live bytes by the side whose thread allocated them: other, server, agent. Frees are charged
/// to the freeing thread's side; nothing moves between the server and the agent in this
/// process, so each side's figure is its own.
static BY_SIDE: [AtomicIsize; 3] = [const { AtomicIsize::new(0) }; 3];
const OTHER: u8 = 0;
const SERVER: u8 = 1;
const AGENT: u8 = 2;
const UNNAMED: u8 = u8::MAX;

thread_local! {
    /// This thread's side, from its name on its first allocation.
    static SIDE: Cell<u8> = const { Cell::new(UNNAMED) };
}

/// The side of the calling thread: agent workers are `ringtun-agent-*`, the server's threads
/// are `ringtun-*` (the kernel keeps 15 bytes of a name). Read with prctl: no allocation.
fn side() -> usize {
    SIDE.try_with(|side| {
        if side.get() == UNNAMED {
            side.set(OTHER);
            let mut name = [0u8; 16];
            // SAFETY: PR_GET_NAME writes at most 16 bytes into `name`.
            let rc = unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
            if rc == 0 && name.starts_with(b"ringtun-agent") {
                side.set(AGENT);
            } else if rc == 0 && name.starts_with(b"ringtun-") {
                side.set(SERVER);
            }
        }
        usize::from(side.get())
    })
    .unwrap_or(usize::from(OTHER))
}

fn count(delta: isize) {
    LIVE.fetch_add(delta, Ordering::Relaxed);
    BY_SIDE[side()].fetch_add(delta, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as isize);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as isize));
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(new as isize - l.size() as isize);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Live heap of each side: (server, agent).
fn sides() -> (isize, isize) {
    let load = |s: u8| BY_SIDE[usize::from(s)].load(Ordering::Relaxed);
    (load(SERVER), load(AGENT))
}

struct Pair {
    client: TlsSession,
    server: TlsSession,
}

/// Runs a handshake between fresh sessions, then the small records of an idle data connection.
fn idle_pair(
    c: &std::sync::Arc<rustls::ClientConfig>,
    s: &std::sync::Arc<rustls::ServerConfig>,
) -> Pair {
    let mut client = TlsSession::client(
        c.clone(),
        ringtun::tls::ServerName::try_from("tunnel.test").unwrap(),
    )
    .unwrap();
    let mut server = TlsSession::server(s.clone()).unwrap();
    let mut to_server = Vec::new();
    client.handshake_step(&[], &mut to_server).unwrap();
    let mut guard = 0;
    while client.is_handshaking() || server.is_handshaking() || !to_server.is_empty() {
        guard += 1;
        assert!(guard < 20, "handshake did not finish");
        let mut to_client = Vec::new();
        if server.is_handshaking() {
            let p = server.handshake_step(&to_server, &mut to_client).unwrap();
            to_server.drain(..p.consumed);
        }
        if !to_server.is_empty() {
            let mut plain = Vec::new();
            server.decrypt(&to_server, &mut plain).unwrap();
            to_server.clear();
        }
        server.take_output(&mut to_client);
        if !to_client.is_empty() {
            if client.is_handshaking() {
                let p = client.handshake_step(&to_client, &mut to_server).unwrap();
                if p.consumed < to_client.len() {
                    let mut plain = Vec::new();
                    client
                        .decrypt(&to_client[p.consumed..], &mut plain)
                        .unwrap();
                }
            } else {
                let mut plain = Vec::new();
                client.decrypt(&to_client, &mut plain).unwrap();
            }
        }
        client.take_output(&mut to_server);
    }
    // An init, its response, and a few pings and pongs, as on an idle data connection.
    let mut wire = Vec::new();
    let mut plain = Vec::new();
    client.encrypt(&[0x20; 200], &mut wire).unwrap();
    server.decrypt(&wire, &mut plain).unwrap();
    for _ in 0..4 {
        wire.clear();
        server.encrypt(&[0x20; 24], &mut wire).unwrap();
        client.decrypt(&wire, &mut plain).unwrap();
        wire.clear();
        client.encrypt(&[0x20; 24], &mut wire).unwrap();
        server.decrypt(&wire, &mut plain).unwrap();
    }
    Pair { client, server }
}

/// Most heap an idle TLS session may add, server and agent together (about 10 KiB measured): the
/// data connection, its TLS state included, is up before the session; sockets, tasks and
/// session state are the rest. The pump's own buffers must not be among it.
const IDLE_SESSION_BOUND_BYTES: isize = 24 * 1024;

/// Heap added per idle TLS session (server and agent together, plus the test's own sockets).
fn idle_session_heap(
    backend: IoBackend,
    server_tls: serde_json::Value,
    agent_tls: serde_json::Value,
) -> isize {
    use common::*;
    use std::io::{Read, Write};
    // A backend that echoes with a stack buffer: it adds no heap per connection but its thread.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut b = [0u8; 64];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    const SESSIONS: usize = 32;
    let server = server(backend).cluster("c").tls(server_tls).run();
    let agent = agent(backend, server.tunnel_addr(), target)
        .connection_num(SESSIONS as u32 + 8)
        .tls(agent_tls)
        .run();
    wait_registered(&server, "c", 1, SESSIONS + 8);
    let frontend = server.frontend_addr("c").unwrap();
    let session = || {
        let mut c = std::net::TcpStream::connect(frontend).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        c
    };
    // Warm up the pools, the runtimes and every lazily built table.
    let warm: Vec<_> = (0..8).map(|_| session()).collect();
    drop(warm);
    let settled = || {
        server.counters().active_sessions == 0
            && server
                .hosts("c")
                .first()
                .is_some_and(|h| h.idle_connections >= SESSIONS + 8)
    };
    assert!(wait_until(std::time::Duration::from_secs(10), settled));
    let before = live();
    let held: Vec<_> = (0..SESSIONS).map(|_| session()).collect();
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        server.counters().active_sessions == SESSIONS as u64
            && agent.status().active_sessions == SESSIONS as u64
    }));
    // The sessions have gone quiet: every direction hands its buffers back (waited for, up to
    // a bound; the caller checks the figure).
    let per = || (live() - before) / SESSIONS as isize;
    wait_until(std::time::Duration::from_secs(5), || {
        per() <= IDLE_SESSION_BOUND_BYTES
    });
    let per_session = per();
    drop(held);
    drop(agent);
    server.shutdown();
    per_session
}

/// Most heap one idle TLS data connection may hold on the server: its socket, its idle-pool
/// entry and its TLS session (4.1 KiB measured; 8.0 KiB when rustls's buffered API kept its
/// record buffer).
const IDLE_CONNECTION_SERVER_BOUND_BYTES: isize = 6 * 1024;
/// The same on the agent (5.8 KiB measured; 7.6 KiB while its slot's idle futures held the
/// dial's and the sessions' state, 11.3 KiB with the buffered API): rustls's own state (its
/// connection struct, two AES-GCM keys, the key schedule, the server's certificate) is 3.9 KiB,
/// the slot task and its boxed `serve_data` 1 KiB.
const IDLE_CONNECTION_AGENT_BOUND_BYTES: isize = 6 * 1024;

/// Heap each side holds per idle TLS data connection, (server, agent): what an agent of 72
/// connections adds over one of 8, per connection (what each agent costs besides its data
/// connections, on both sides, cancels out).
fn idle_connection_heap(
    backend: IoBackend,
    server_tls: serde_json::Value,
    agent_tls: serde_json::Value,
) -> (isize, isize) {
    use common::*;
    use std::time::Duration;
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = server(backend).cluster("c").tls(server_tls).run();
    let start = |name: &str, n: usize| {
        let before = sides();
        let agent = agent(backend, server.tunnel_addr(), target.local_addr().unwrap())
            .host_name(name)
            .connection_num(n as u32)
            .tls(agent_tls.clone())
            .run();
        let up = wait_until(Duration::from_secs(10), || {
            agent.status().idle_data_connections == n as u64
                && server.hosts("c").iter().any(|h| {
                    h.host_name == name && h.idle_connections == n && h.aside_connections == 1
                })
        });
        assert!(up, "{name}: {n} idle connections never came up");
        // Until the heap has stopped moving (the last handshakes' leftovers freed).
        let (mut last, mut steady) = (sides(), 0);
        wait_until(Duration::from_secs(5), || {
            let now = sides();
            steady = if now == last { steady + 1 } else { 0 };
            last = now;
            steady >= 20
        });
        let after = sides();
        (agent, (after.0 - before.0, after.1 - before.1))
    };
    let warm = start("warm", 8);
    let (small, (small_server, small_agent)) = start("small", 8);
    let (big, (big_server, big_agent)) = start("big", 72);
    drop((warm, small, big));
    server.shutdown();
    (
        (big_server - small_server) / 64,
        (big_agent - small_agent) / 64,
    )
}

#[test]
fn idle_tls_holds_little_heap() {
    rustls_session_heap();
    let pki = Pki::new();
    for backend in [IoBackend::Epoll, IoBackend::Uring] {
        if backend == IoBackend::Uring && !ringtun::rt::uring_gate::available_for_test() {
            continue;
        }
        let (server, agent) = idle_connection_heap(backend, pki.server_json(), pki.agent_json());
        println!(
            "{backend:?}: an idle TLS data connection holds {server} B of heap on the server, \
             {agent} B on the agent"
        );
        assert!(
            server <= IDLE_CONNECTION_SERVER_BOUND_BYTES
                && agent <= IDLE_CONNECTION_AGENT_BOUND_BYTES,
            "{backend:?}: an idle TLS data connection holds {server} B (server), {agent} B (agent)"
        );
        let per = idle_session_heap(backend, pki.server_json(), pki.agent_json());
        println!("{backend:?}: an idle TLS session adds {per} B of heap (server + agent)");
        assert!(
            per <= IDLE_SESSION_BOUND_BYTES,
            "{backend:?}: an idle TLS session holds {per} B of heap"
        );
    }
}

/// Most heap one idle `TlsSession` may hold, either side (3.9 KiB measured on the client).
const RUSTLS_SESSION_BOUND_BYTES: isize = 4608;

fn rustls_session_heap() {
    let pki = Pki::new();
    let server_tls = ServerTlsConfig {
        cert_chain_file: pki.cert.clone(),
        private_key_file: pki.key.clone(),
        ca_file: None,
        min_version: TlsMinVersion::V1_3,
    };
    let agent_tls = AgentTlsConfig {
        ca_file: Some(pki.ca.clone()),
        server_name: None,
        cert_chain_file: None,
        private_key_file: None,
        min_version: TlsMinVersion::V1_3,
    };
    let s = server_config(&server_tls).unwrap();
    let c = client_config(&agent_tls).unwrap();
    // Warm up whatever is shared (session caches, lazily built tables).
    let warm: Vec<Pair> = (0..8).map(|_| idle_pair(&c, &s)).collect();
    drop(warm);
    const N: isize = 64;
    let mut pairs = Vec::new();
    let mut client_bytes = 0;
    let mut server_bytes = 0;
    for _ in 0..N {
        let before = live();
        let p = idle_pair(&c, &s);
        let both = live() - before;
        let before_drop = live();
        drop(p.client);
        let client = before_drop - live();
        client_bytes += client;
        server_bytes += both - client;
        pairs.push(p.server);
    }
    let (client, server) = (client_bytes / N, server_bytes / N);
    let own = std::mem::size_of::<TlsSession>() as isize;
    println!(
        "rustls per idle connection: client {client} B + {own} B, server {server} B + {own} B"
    );
    // rustls's state only: no record buffer (the buffered API kept 4 KiB once anything was
    // read, 7.8 KiB in all); see `tls::session`.
    assert!(
        client + own <= RUSTLS_SESSION_BOUND_BYTES && server + own <= RUSTLS_SESSION_BOUND_BYTES,
        "an idle TlsSession holds {} B (client), {} B (server)",
        client + own,
        server + own
    );
}

/// A CA and a `tunnel.test` server certificate in PEM files.
struct Pki {
    dir: std::path::PathBuf,
    ca: String,
    cert: String,
    key: String,
}

impl Pki {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringtun-tls-idle-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "ca");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let ca_file = write("ca.pem", ca.pem());
        let mut leaf = CertificateParams::new(vec!["tunnel.test".to_string()]).unwrap();
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &ca).unwrap();
        Self {
            cert: write("s.crt", cert.pem()),
            key: write("s.key", key.serialize_pem()),
            ca: ca_file,
            dir,
        }
    }

    fn server_json(&self) -> serde_json::Value {
        serde_json::json!({ "cert_chain_file": self.cert, "private_key_file": self.key })
    }

    fn agent_json(&self) -> serde_json::Value {
        serde_json::json!({ "ca_file": self.ca, "server_name": "tunnel.test" })
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

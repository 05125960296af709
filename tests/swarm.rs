//! `ringtun bench swarm` (the real binary) against an in-test server on loopback, port 0, on both
//! I/O backends: every emulated agent registers as its own host (the server's registry, admin
//! `/clusters` and `/metrics` agree), answers heartbeats, echoes sessions, re-registers after a
//! server restart with `--reconnect`, dials over TLS, and a refusal is reported by its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use ringtun::control::stats::HandshakeOutcome;
use serde_json::json;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_ringtun");

fn swarm(target: std::net::SocketAddr, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(["bench", "swarm", "--target", &target.to_string()])
        .args(args)
        .args(["--json", "--no-progress"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the swarm to exit by itself (its own --duration-secs bounds it) and parses its JSON.
fn finish(child: Child) -> (Output, serde_json::Value) {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let doc = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, doc)
}

/// Waits (up to 30 s) until the swarm prints a stderr line containing `text`; the rest of its
/// stderr is drained in the background.
fn wait_for_line(child: &mut Child, text: &str) {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains(text) {
            return;
        }
        seen.push(line);
    }
    panic!("the swarm never printed {text:?}; it printed {seen:?}");
}

/// Waits until the cluster has `hosts` hosts with every connection the swarm opens.
fn wait_hosts(server: &ringtun::server::ServerHandle, hosts: usize, aside: bool) {
    let ok = wait_until(Duration::from_secs(30), || {
        let h = server.hosts("c");
        h.len() == hosts
            && h.iter()
                .all(|h| h.idle_connections >= 1 && h.aside_connections == usize::from(aside))
    });
    assert!(ok, "never {hosts} hosts: {:?}", server.hosts("c").len());
}

both_backends!(
    fifty_agents_register_answer_heartbeats_and_echo,
    |backend| {
        let server = server(backend).cluster("c").heartbeat_ms(100).admin().run();
        let me = std::process::id().to_string();
        let child = swarm(
            server.tunnel_addr(),
            &[
                "--agents",
                "50",
                "--aside",
                "--serve-echo",
                "--source-addrs",
                "2",
                "--pids",
                &me,
                "--tail-secs",
                "0.2",
                "--duration-secs",
                "5",
            ],
        );
        wait_hosts(&server, 50, true);
        let admin = server.admin_addr().unwrap();
        let (status, _, metrics) = http(admin, "GET", "/metrics");
        assert_eq!(status, 200);
        assert_eq!(metric(&metrics, "ringtun_hosts{cluster=\"c\"}"), Some(50.0));
        let (status, _, body) = http(admin, "GET", "/clusters");
        assert_eq!(status, 200);
        let clusters: serde_json::Value = serde_json::from_str(&body).unwrap();
        let hosts = clusters["clusters"][0]["hosts"].as_array().unwrap();
        let names: BTreeSet<&str> = hosts
            .iter()
            .map(|h| h["host_name"].as_str().unwrap())
            .collect();
        let ids: BTreeSet<&str> = hosts
            .iter()
            .map(|h| h["agent_id"].as_str().unwrap())
            .collect();
        assert_eq!((names.len(), ids.len()), (50, 50));
        assert!(names.contains("swarm-00000") && names.contains("swarm-00049"));
        // Sessions through the frontend reach emulated agents, which echo them.
        let frontend = server.frontend_addr("c").unwrap();
        for i in 0..3u8 {
            let data = pattern(1000, i);
            assert_eq!(echo_roundtrip(frontend, &data), data);
        }
        let (out, doc) = finish(child);
        assert!(out.status.success(), "{doc}");
        assert_eq!(doc["mode"], "swarm");
        assert_eq!(doc["ok"], true);
        assert_eq!(doc["all_registered"], true);
        assert_eq!(doc["agents_registered"], 50);
        assert_eq!(doc["source_addrs"], 2);
        assert!(doc["handshakes"].as_u64().unwrap() >= 100);
        assert_eq!(doc["handshake_failures"], 0);
        assert!(doc["registered_secs"].as_f64().unwrap() > 0.0);
        assert!(doc["handshakes_per_sec"].as_f64().unwrap() > 0.0);
        // Held 5 s under 100 ms heartbeats: every ping answered, nothing lost.
        assert_eq!(doc["hold"]["connections_lost"], 0, "{doc}");
        assert!(doc["pongs_sent"].as_u64().unwrap() > 100, "{doc}");
        assert!(doc["sessions_served"].as_u64().unwrap() >= 3, "{doc}");
        let srv = &doc["server"][0];
        assert_eq!(srv["pid"].as_u64(), Some(u64::from(std::process::id())));
        assert!(srv["cpu_per_agent_us"].as_f64().unwrap() > 0.0, "{doc}");
        assert!(srv["cpu_after_last_joined_us"].as_f64().is_some());
        assert!(srv["rss_per_agent_kib"].as_f64().is_some());
        server.shutdown();
    }
);

// A burst of registrations (changes coalesced, published as changed slots): every host ends
// up leasable where its connection is. One data connection per agent and as many sessions held
// open at once as there are agents: each needs a distinct host, on either worker.
both_backends!(every_host_of_a_registration_burst_is_leasable, |backend| {
    const AGENTS: usize = 120;
    let server = server(backend)
        .cluster("c")
        .lb("round_robin")
        .workers(2)
        .pool_wait_ms(10_000)
        .admin()
        .run();
    let child = swarm(
        server.tunnel_addr(),
        &[
            "--agents",
            &AGENTS.to_string(),
            "--serve-echo",
            "--concurrency",
            "120",
            "--duration-secs",
            "30",
        ],
    );
    wait_hosts(&server, AGENTS, false);
    let frontend = server.frontend_addr("c").unwrap();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(AGENTS));
    let sessions: Vec<_> = (0..AGENTS)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut c = std::net::TcpStream::connect(frontend).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let data = pattern(100, i as u8);
                c.write_all(&data).unwrap();
                let mut back = vec![0u8; data.len()];
                // Echoed: this session holds a data connection of its own.
                c.read_exact(&mut back).unwrap();
                assert_eq!(back, data);
                barrier.wait();
            })
        })
        .collect();
    for s in sessions {
        s.join().unwrap();
    }
    // Joins wake no worker; a weight to 0 (the host stops being pickable) wakes the worker
    // holding the host's idle connection, which applies it without a lease. Every host's
    // connection is idle again first, so no adoption or lease applies anything meanwhile and
    // only that wake can count an application.
    let admin = server.admin_addr().unwrap();
    let idle = || {
        let hosts = server.hosts("c");
        hosts.len() == AGENTS && hosts.iter().all(|h| h.idle_connections == 1)
    };
    assert!(
        wait_until(Duration::from_secs(10), idle),
        "{:?}",
        server.hosts("c")
    );
    let applied = || {
        let (_, _, metrics) = http(admin, "GET", "/metrics");
        metric(&metrics, "ringtun_snapshots_applied_total").unwrap_or(0.0)
    };
    let before = applied();
    assert_eq!(server.set_host_weight("c", "swarm-00000", Some(0)), 1);
    assert!(
        wait_until(Duration::from_secs(10), || applied() > before),
        "applied {} (before the weight change: {before})",
        applied()
    );
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
    server.shutdown();
});

both_backends!(agents_come_back_after_a_server_restart, |backend| {
    let first = server(backend).cluster("c").run();
    let addr = first.tunnel_addr();
    let mut child = swarm(
        addr,
        &[
            "--agents",
            "30",
            "--aside",
            "--reconnect",
            "--reconnect-base-ms",
            "50",
            "--reconnect-max-ms",
            "200",
            "--duration-secs",
            "60",
        ],
    );
    // The swarm's own view: every agent registered and the outage watch begun.
    wait_for_line(&mut child, "for the server to go away");
    first.shutdown();
    let second = server(backend).cluster("c").tunnel_address(addr).run();
    // The swarm ends once every agent is back; the new server saw every connection again.
    let (out, doc) = finish(child);
    let success = || second.control_stats().handshakes(HandshakeOutcome::Success);
    assert!(
        wait_until(Duration::from_secs(10), || success() >= 60),
        "{}",
        success()
    );
    assert!(out.status.success(), "{doc}");
    let rc = &doc["reconnect"];
    assert_eq!(rc["outage_seen"], true, "{doc}");
    assert_eq!(rc["all_back"], true, "{doc}");
    assert!(rc["back_in_secs"].as_f64().unwrap() > 0.0);
    assert!(
        rc["counts"]["connections_lost"].as_u64().unwrap() >= 60,
        "{doc}"
    );
    assert!(rc["counts"]["handshakes"].as_u64().unwrap() >= 60, "{doc}");
    second.shutdown();
});

both_backends!(a_refusal_is_reported_by_its_reason, |backend| {
    let server = server(backend).cluster("c").run();
    let start = Instant::now();
    let child = swarm(
        server.tunnel_addr(),
        &["--agents", "5", "--cluster", "nope"],
    );
    let (out, doc) = finish(child);
    assert!(!out.status.success());
    assert_eq!(doc["all_registered"], false);
    assert_eq!(doc["agents_registered"], 0);
    assert_eq!(
        doc["failures_by_reason"]["refused_status_4_cluster_not_exist"],
        5
    );
    let first = doc["first_errors"]["refused_status_4_cluster_not_exist"]
        .as_str()
        .unwrap();
    assert!(
        first.contains("cluster nope") && first.contains("status 4"),
        "{first}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 of 5 agents registered"));
    // A permanent refusal is not retried until the register timeout (60 s).
    assert!(start.elapsed() < Duration::from_secs(30));
    server.shutdown();
});

// ---- TLS ----

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ringtun-swarm-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A CA and a server certificate for `tunnel.test` signed by it: (ca, cert, key) files.
fn pki(dir: &Path) -> (String, String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "swarm CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["tunnel.test".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (
        write(dir, "ca.pem", &ca.pem()),
        write(dir, "server.crt", &cert.pem()),
        write(dir, "server.key", &key.serialize_pem()),
    )
}

both_backends!(agents_register_over_tls, |backend| {
    let dir = temp_dir();
    let (ca, cert, key) = pki(&dir);
    let server = server(backend)
        .cluster("c")
        .token("swarm-token")
        .tls(json!({"cert_chain_file": cert, "private_key_file": key}))
        .run();
    let child = swarm(
        server.tunnel_addr(),
        &[
            "--agents",
            "20",
            "--connections-per-agent",
            "2",
            "--aside",
            "--tls",
            "--ca-file",
            &ca,
            "--server-name",
            "tunnel.test",
            "--credential-policy",
            "token",
            "--credential",
            "swarm-token",
        ],
    );
    let (out, doc) = finish(child);
    assert!(out.status.success(), "{doc}");
    assert_eq!(doc["tls"], true);
    assert_eq!(doc["agents_registered"], 20);
    assert_eq!(doc["handshakes"], 60);
    assert_eq!(doc["handshake_failures"], 0);
    let _ = std::fs::remove_dir_all(&dir);
    server.shutdown();
});

//! Live configuration reload: SIGHUP adds a cluster while another cluster's session runs on; a
//! broken file is refused and the old configuration keeps serving; a removed cluster leaves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use ringtun::config::IoBackend;

fn server_json(clusters: &[&str], backend: IoBackend) -> serde_json::Value {
    let clusters: Vec<serde_json::Value> = clusters
        .iter()
        .map(|c| serde_json::json!({"name": c, "frontends": [{"address": "127.0.0.1:0"}]}))
        .collect();
    serde_json::json!({
        "workers": 2, "io_backend": backend,
        "tunnel_listener": {"address": "127.0.0.1:0"},
        "clusters": clusters,
    })
}

fn roundtrip(c: &mut TcpStream, msg: &[u8]) {
    c.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

both_backends!(
    sighup_adds_a_cluster_live_and_refuses_a_broken_file,
    |backend| {
        let dir =
            std::env::temp_dir().join(format!("ringtun-reload-{}-{backend:?}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.json");
        std::fs::write(&path, server_json(&["a"], backend).to_string()).unwrap();
        let process = process::Process::start("server", &path);
        let tunnel: SocketAddr =
            process::field(&process.line_with(&["server started"]), "tunnel_addr=")
                .unwrap()
                .parse()
                .unwrap();
        let fa: SocketAddr = process::field(
            &process.line_with(&["frontend listening", "cluster=a"]),
            "frontend=",
        )
        .unwrap()
        .parse()
        .unwrap();
        let (ea, eb) = (echo_backend(), echo_backend());
        let _agent_a = agent(backend, tunnel, ea.addr)
            .host_name("ea")
            .cluster("a")
            .run();
        let _agent_b = agent(backend, tunnel, eb.addr)
            .host_name("eb")
            .cluster("b")
            .reconnect_ms(20, 100)
            .run();
        let mut held = TcpStream::connect(fa).unwrap();
        held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        roundtrip(&mut held, b"session of a, before");

        // Add cluster b: its frontend starts serving, a's session is untouched.
        std::fs::write(&path, server_json(&["a", "b"], backend).to_string()).unwrap();
        process.hangup();
        let fb: SocketAddr = process::field(
            &process.line_with(&["frontend listening", "cluster=b"]),
            "frontend=",
        )
        .unwrap()
        .parse()
        .unwrap();
        process.line_with(&["configuration reloaded"]);
        let served = wait_until(Duration::from_secs(10), || {
            let mut c = TcpStream::connect(fb).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = c.write_all(b"b!");
            let mut back = [0u8; 2];
            c.read_exact(&mut back).is_ok() && &back == b"b!"
        });
        assert!(served, "the added cluster never served");
        roundtrip(&mut held, b"session of a, after adding b");

        // A broken file is refused; everything keeps serving.
        std::fs::write(&path, r#"{"tunnel_listener": {"address": "127.0.0.1:0"}, "clusters": [{"name": "a", "colour": 1}]}"#).unwrap();
        process.hangup();
        let refused = process.line_with(&["reload refused"]);
        assert!(refused.contains("clusters[0].colour"), "{refused}");
        roundtrip(&mut held, b"session of a, after a broken file");
        assert_eq!(echo_roundtrip(fb, b"b still"), b"b still");
        assert_eq!(echo_roundtrip(fa, b"a still"), b"a still");

        drop(process);
        let _ = std::fs::remove_dir_all(&dir);
    }
);

both_backends!(reload_removes_a_cluster_and_keeps_the_other, |backend| {
    let s = server(backend).cluster("a").cluster("b").run();
    let (ea, eb) = (echo_backend(), echo_backend());
    let _a = agent(backend, s.tunnel_addr(), ea.addr)
        .host_name("ea")
        .cluster("a")
        .run();
    let _b = agent(backend, s.tunnel_addr(), eb.addr)
        .host_name("eb")
        .cluster("b")
        .run();
    wait_registered(&s, "a", 1, 4);
    wait_registered(&s, "b", 1, 4);
    let (fa, fb) = (s.frontend_addr("a").unwrap(), s.frontend_addr("b").unwrap());
    let mut held = TcpStream::connect(fa).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    roundtrip(&mut held, b"before");
    let mut only_a = s.config().unwrap();
    only_a.clusters.retain(|c| c.name == "a");
    let summary = s.reload(only_a.clone()).unwrap();
    assert_eq!(summary.removed, vec!["b".to_string()]);
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect(fb).is_err()),
        "b's frontend still accepts"
    );
    assert!(wait_until(Duration::from_secs(5), || s
        .hosts("b")
        .is_empty()));
    roundtrip(&mut held, b"after");
    assert_eq!(echo_roundtrip(fa, b"a"), b"a");
    // Settings that need a restart are refused whole.
    let mut bad = only_a;
    bad.workers += 1;
    let e = s.reload(bad).unwrap_err();
    assert!(e.to_string().contains("workers cannot change"), "{e}");
});

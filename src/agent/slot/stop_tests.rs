//! A session in flight on the agent's stop ends by itself, its sockets shut down and its pump run
//! to the end, while the worker's runtime goes on: its peers see the end at once, on either
//! backend. (Dropping an io_uring pump instead leaves its reads in flight and the sockets open
//! until the runtime itself is torn down.)

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize};
use std::sync::{Mutex, OnceLock};

use super::data::run_session;
use super::*;
use crate::agent::resolve::BackendCache;
use crate::config::{AgentConfig, IoBackend};
use crate::rt;

fn shared_for(backend: rt::Backend, target: std::net::SocketAddr) -> Arc<Shared> {
    let json = serde_json::json!({
        "host_name": "edge", "workers": 1,
        "listeners": [{"name": "b", "backend": target.to_string()}],
        "tunnels": [{"cluster": "c", "hosting_listener": "b", "server_list": ["127.0.0.1:1"]}],
    });
    let config = AgentConfig::from_str(Path::new("t.json"), &json.to_string()).unwrap();
    Arc::new(Shared {
        backend,
        agent_id: "t".into(),
        stats: vec![Arc::new(AgentStats::new(1))],
        tls: vec![None],
        running: AtomicBool::new(true),
        weight: watch::channel(1).0,
        weight_now: AtomicI64::new(1),
        peers: Mutex::new(Vec::new()),
        tasks: OnceLock::new(),
        next_worker: AtomicUsize::new(0),
        config,
    })
}

fn session_ends_on_stop(io: IoBackend) {
    let backend = rt::resolve(io).unwrap();
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let shared = shared_for(backend, target.local_addr().unwrap());
    let stats = shared.stats[0].clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (server_tx, server_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
    let worker = rt::spawn_worker("stop-test".into(), backend, None, move || async move {
        let local = Rc::new(Local {
            pool: Pools::default(),
            stats: shared.stats[0].clone(),
            backends: BackendCache::default(),
        });
        // The tunnel side: a loopback pair, its far end handed to the test as "the server".
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (theirs, _) = l.accept().unwrap();
        server_tx.send(theirs).unwrap();
        ours.set_nonblocking(true).unwrap();
        let data = Channel::plain(tokio::net::TcpStream::from_std(ours).unwrap());
        let start = SessionStart {
            session_id: 1,
            client_addr: "127.0.0.1:9".into(),
            frontend_addr: None,
            protocol: Default::default(),
        };
        let session = crate::rt::spawn_local(async move {
            let mut stop = stop_rx;
            run_session(&shared, &local, 0, data, start, Vec::new(), &mut stop).await
        });
        done_tx.send(session.await.unwrap()).unwrap();
        // The runtime lives on until the test has checked the sockets.
        let _ = tokio::task::spawn_blocking(move || end_rx.recv()).await;
    })
    .unwrap();
    let mut server = server_rx.recv().unwrap();
    let (mut backend_side, _) = target.accept().unwrap();
    for s in [&server, &backend_side] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    // The session pumps.
    server.write_all(b"hello").unwrap();
    let mut got = [0u8; 5];
    backend_side.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    // Both directions idle, reads in flight; now the agent stops.
    stop_tx.send(true).unwrap();
    let stopped = done_rx.recv_timeout(Duration::from_secs(5));
    assert_eq!(stopped, Ok(true), "{io:?}: the session did not end on stop");
    // Its sockets are shut down while the runtime is still running.
    let mut rest = Vec::new();
    assert_eq!(backend_side.read_to_end(&mut rest).unwrap(), 0, "{io:?}");
    assert_eq!(server.read_to_end(&mut rest).unwrap(), 0, "{io:?}");
    // It was counted as ended, bytes and all.
    assert_eq!(stats.active_sessions.load(Ordering::Relaxed), 0);
    assert_eq!(stats.bytes_to_backend_total.load(Ordering::Relaxed), 5);
    end_tx.send(()).unwrap();
    worker.join().unwrap();
}

#[test]
fn a_session_in_flight_ends_on_stop_epoll() {
    session_ends_on_stop(IoBackend::Epoll);
}

#[test]
fn a_session_in_flight_ends_on_stop_uring() {
    if crate::rt::uring_gate::available_for_test() {
        session_ends_on_stop(IoBackend::Uring);
    }
}

//! The control path's hand-off order under a join storm: a data connection reaches its worker's
//! update slot only after (or together with) its host's join, never before it. Agents join in
//! bursts well inside the coalescing interval, so most hand-offs happen while a publication is
//! due and take the deferred path (`Control::deferred`).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream as StdStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{run, ControlSetup, ControlStats};
use crate::config::ServerConfig;
use crate::control::registry::Registry;
use crate::plane::update::UpdateSlot;
use crate::plane::WorkerMsg;
use crate::protocol::{
    self, ConnectionInitInfo, Decoded, Frame, InitExtra, RingtunInit, Role, Status,
};

const AGENTS: usize = 120;
const BURST: usize = 20;

fn init_bytes(agent: usize) -> Vec<u8> {
    let init = Frame::Init(ConnectionInitInfo {
        cluster_name: "c".into(),
        weight: 10,
        host_name: format!("h{agent}"),
        credential_policy: String::new(),
        credential: crate::secret::Secret::new(""),
        extra: Some(InitExtra {
            ringtun: Some(RingtunInit {
                version: protocol::FRAMED_SESSIONS_VERSION,
                role: Role::Data,
                agent_id: format!("a{agent}"),
                max_connection_num: None,
            }),
            other: Default::default(),
        }),
    });
    protocol::encode_to_vec(&init).expect("init encodes")
}

/// Reads the init answer and checks it accepted the agent.
fn accepted(stream: &mut StdStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match protocol::decode(&buf, 64 * 1024).expect("a valid answer") {
            Decoded::Frame(Frame::InitResponse(r), _) => {
                assert_eq!(r.status, Status::SUCCESS, "init refused");
                return;
            }
            Decoded::Frame(other, _) => panic!("answered with {:?}", other.flag()),
            Decoded::NeedMore(_) => {
                let n = stream.read(&mut chunk).expect("answer read");
                assert!(n > 0, "closed before answering");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// Takes the slot as a worker does (changes first, then connections) and checks every
/// connection's host is known by then; returns the connections taken.
fn take_checked(slot: &UpdateSlot, known: &mut HashSet<u64>) -> usize {
    let pending = slot.take();
    assert!(pending.full.is_none(), "no reload in this test");
    for hosts in pending.hosts.values() {
        known.extend(hosts.values().map(|h| h.id));
    }
    for conn in &pending.conns {
        assert!(
            known.contains(&conn.host_id),
            "connection {} of host {} reached the worker before its host's join",
            conn.conn_id,
            conn.host_id
        );
    }
    pending.conns.len()
}

#[test]
fn a_connection_never_reaches_its_worker_before_its_hosts_join() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig::from_str(
        Path::new("server.json"),
        r#"{"tunnel_listener": {"address": "127.0.0.1:0"},
            "clusters": [{"name": "c", "frontends": [{"address": "127.0.0.1:0"}]}]}"#,
    )
    .unwrap();
    let registry = Registry::new(&config.clusters, 1);
    let slot = UpdateSlot::new();
    let (worker_tx, mut worker_rx) = mpsc::unbounded_channel::<WorkerMsg>();
    let (_events_tx, events) = mpsc::unbounded_channel();
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let setup = ControlSetup {
        listener,
        config,
        registry,
        workers: vec![worker_tx],
        updates: vec![slot.clone()],
        events,
        commands,
        stats: Arc::new(ControlStats::default()),
        counters: vec![Default::default()],
        tls: None,
    };
    let control = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, run(setup));
    });

    let mut known = HashSet::new();
    let mut taken = 0;
    let mut agents = Vec::with_capacity(AGENTS);
    for burst in 0..AGENTS / BURST {
        // A burst's inits all go out before any answer is read: their joins land inside one
        // coalescing interval.
        let mut streams: Vec<StdStream> = (0..BURST)
            .map(|i| {
                let mut s = StdStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                s.write_all(&init_bytes(burst * BURST + i)).unwrap();
                s
            })
            .collect();
        for s in &mut streams {
            accepted(s);
            taken += take_checked(&slot, &mut known);
        }
        agents.extend(streams);
    }
    // The last hand-offs follow the last publication within one interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    while taken < AGENTS {
        assert!(
            Instant::now() < deadline,
            "{taken} of {AGENTS} connections handed"
        );
        taken += take_checked(&slot, &mut known);
        // Nobody waits for a connection here, so none may be sent as a message.
        assert!(
            !matches!(worker_rx.try_recv(), Ok(WorkerMsg::DataConn(_))),
            "a connection no worker was owed was sent as a message"
        );
        std::thread::yield_now();
    }
    assert_eq!(known.len(), AGENTS);
    commands_tx.send(super::ControlCmd::Shutdown).unwrap();
    control.join().unwrap();
    drop(agents);
}

//! Test helpers: a control path on a thread of its own with one fake worker (its update slot
//! and message queue), and agents' frames as bytes.

use std::io::Read;
use std::net::{SocketAddr, TcpStream as StdStream};
use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{run, ControlSetup, ControlStats};
use crate::config::ServerConfig;
use crate::control::registry::Registry;
use crate::plane::update::UpdateSlot;
use crate::plane::WorkerMsg;
use crate::protocol::{
    self, ConnectionInitInfo, ConnectionInitResponse, Decoded, Frame, InitExtra, RingtunInit, Role,
};

/// A bound tunnel listener, and what starting a control path on it will need.
pub(super) struct TestControl {
    pub addr: SocketAddr,
    pub slot: Arc<UpdateSlot>,
    pub worker_rx: mpsc::UnboundedReceiver<WorkerMsg>,
    pub stats: Arc<ControlStats>,
    commands: mpsc::UnboundedSender<super::ControlCmd>,
    setup: Option<ControlSetup>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestControl {
    /// A listener for cluster `c` (one frontend), not yet accepting: connections queue in its
    /// backlog until [`TestControl::run`].
    pub fn bind() -> Self {
        let listener = crate::rt::bind_tunnel_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let config = ServerConfig::from_str(
            Path::new("server.json"),
            r#"{"tunnel_listener": {"address": "127.0.0.1:0"},
                "clusters": [{"name": "c", "frontends": [{"address": "127.0.0.1:0"}]}]}"#,
        )
        .unwrap();
        let registry = Registry::new(&config.clusters, 1);
        let slot = UpdateSlot::new();
        let (worker_tx, worker_rx) = mpsc::unbounded_channel::<WorkerMsg>();
        let (_events_tx, events) = mpsc::unbounded_channel();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let stats = Arc::new(ControlStats::default());
        let setup = ControlSetup {
            listener,
            config,
            registry,
            workers: vec![worker_tx],
            updates: vec![slot.clone()],
            events,
            commands,
            stats: stats.clone(),
            counters: vec![Default::default()],
            tls: None,
        };
        Self {
            addr,
            slot,
            worker_rx,
            stats,
            commands: commands_tx,
            setup: Some(setup),
            thread: None,
        }
    }

    /// Changes the server config before [`TestControl::run`].
    pub fn configure(mut self, change: impl FnOnce(&mut ServerConfig)) -> Self {
        if let Some(setup) = self.setup.as_mut() {
            change(&mut setup.config);
        }
        self
    }

    /// Starts the control path on its own thread.
    pub fn run(mut self) -> Self {
        let setup = self.setup.take().expect("started once");
        self.thread = Some(std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            tokio::task::LocalSet::new().block_on(&runtime, run(setup));
        }));
        self
    }
}

impl Drop for TestControl {
    fn drop(&mut self) {
        let _ = self.commands.send(super::ControlCmd::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A ringtun agent's init for `role` (host `h{agent}`, agent id `a{agent}`, cluster `cluster`).
pub(super) fn ringtun_init(cluster: &str, agent: usize, role: Role) -> Vec<u8> {
    init_bytes(
        cluster,
        agent,
        Some(RingtunInit {
            version: protocol::FRAMED_SESSIONS_VERSION,
            role,
            agent_id: format!("a{agent}"),
            max_connection_num: None,
        }),
    )
}

/// A MOSN agent's init (no ringtun extension).
pub(super) fn mosn_init(cluster: &str, agent: usize) -> Vec<u8> {
    init_bytes(cluster, agent, None)
}

fn init_bytes(cluster: &str, agent: usize, ringtun: Option<RingtunInit>) -> Vec<u8> {
    let init = Frame::Init(ConnectionInitInfo {
        cluster_name: cluster.into(),
        weight: 10,
        host_name: format!("h{agent}"),
        credential_policy: String::new(),
        credential: crate::secret::Secret::new(""),
        extra: ringtun.map(|ringtun| InitExtra {
            ringtun: Some(ringtun),
            other: Default::default(),
        }),
    });
    protocol::encode_to_vec(&init).expect("init encodes")
}

/// Reads the init's answer.
pub(super) fn answer(stream: &mut StdStream) -> ConnectionInitResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match protocol::decode(&buf, 64 * 1024).expect("a valid answer") {
            Decoded::Frame(Frame::InitResponse(r), _) => return r,
            Decoded::Frame(other, _) => panic!("answered with {:?}", other.flag()),
            Decoded::NeedMore(_) => {
                let n = stream.read(&mut chunk).expect("answer read");
                assert!(n > 0, "closed before answering");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// Waits until the server's kernel has acknowledged every byte written on `stream` (so they
/// wait in the accepted socket, whether or not it is accepted yet).
pub(super) fn wait_acknowledged(stream: &StdStream) {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // SAFETY: TCP_INFO writes at most `len` bytes into the zeroed struct.
        let unacked = unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let rc = libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            );
            assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
            info.tcpi_unacked
        };
        if unacked == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bytes never acknowledged"
        );
        std::thread::yield_now();
    }
}

/// Waits until the server has read every byte `client` sent (its side of the connection has an
/// empty receive queue in `/proc/net/tcp`).
pub(super) fn wait_read_by_server(client: &StdStream) {
    let (ours, theirs) = (
        client.local_addr().unwrap().port(),
        client.peer_addr().unwrap().port(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let queued = table.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
            if port(f.get(1)?)? == theirs && port(f.get(2)?)? == ours {
                u32::from_str_radix(f.get(4)?.rsplit(':').next()?, 16).ok()
            } else {
                None
            }
        });
        if queued == Some(0) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server never read ({queued:?} queued)"
        );
        std::thread::yield_now();
    }
}

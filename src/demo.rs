//! `ringtun demo`: a server, an agent and an echo backend in one process on loopback, from the
//! embedded configs `config/demo-server.json` and `config/demo-agent.json`. It sends traffic
//! through the tunnel and reports what happened, then leaves the frontend open for the user.
//!
//! The agent's `server_list` and backend in the embedded file are placeholders: the demo binds
//! port 0 everywhere and fills in the real addresses.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::agent::{AgentError, AgentHandle};
use crate::config::{AgentConfig, ConfigError, ServerConfig};
use crate::server::{ServerError, ServerHandle};

const SERVER_JSON: &str = include_str!("../config/demo-server.json");
const AGENT_JSON: &str = include_str!("../config/demo-agent.json");
const CLUSTER: &str = "demo";

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("echo backend: {0}")]
    Echo(std::io::Error),
    #[error("the agent did not register within {0:?}")]
    NotRegistered(Duration),
    #[error("traffic through the tunnel failed: {0}")]
    Traffic(std::io::Error),
    #[error("echoed bytes differ from what was sent (session {0})")]
    Corrupted(usize),
}

/// A running demo.
pub struct Demo {
    pub server: ServerHandle,
    pub agent: AgentHandle,
    pub frontend: SocketAddr,
    pub backend: SocketAddr,
}

/// What the traffic run measured.
#[derive(Debug, Clone)]
pub struct TrafficReport {
    pub sessions: usize,
    pub round_trips: u64,
    pub bytes_each_way: u64,
    pub rtt_p50_us: u64,
    pub rtt_p99_us: u64,
    pub rtt_max_us: u64,
    pub bulk_mib_per_s: f64,
}

/// Starts echo backend, server and agent, and waits for the agent's pool to be registered.
pub fn start(out: &mut impl Write) -> Result<Demo, DemoError> {
    let backend =
        crate::echo::spawn(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(DemoError::Echo)?;
    let _ = writeln!(out, "echo backend   listening on {backend}");
    let server_config = ServerConfig::from_str(Path::new("config/demo-server.json"), SERVER_JSON)?;
    let server = ServerHandle::start(server_config)?;
    let tunnel = server.tunnel_addr();
    let frontend = server
        .frontend_addr(CLUSTER)
        .ok_or(DemoError::NotRegistered(Duration::ZERO))?;
    let _ = writeln!(
        out,
        "server         tunnel listener {tunnel}, frontend {frontend}, {} workers on {}",
        server.workers(),
        server.backend().name()
    );
    let mut agent_config = AgentConfig::from_str(Path::new("config/demo-agent.json"), AGENT_JSON)?;
    agent_config.tunnels[0].server_list = vec![tunnel.to_string()];
    agent_config.listeners[0].backend = backend.to_string();
    let want = agent_config.tunnels[0].connection_num as usize;
    let agent = AgentHandle::start(agent_config)?;
    let limit = Duration::from_secs(10);
    let deadline = Instant::now() + limit;
    loop {
        let hosts = server.hosts(CLUSTER);
        if let Some(h) = hosts
            .iter()
            .find(|h| h.idle_connections >= want && h.aside_connections == 1)
        {
            let _ = writeln!(
                out,
                "agent          {} (id {}) registered in cluster {CLUSTER:?}: weight {}, {} idle data connections, {} aside",
                h.host_name, h.agent_id, h.weight, h.idle_connections, h.aside_connections
            );
            break;
        }
        if Instant::now() > deadline {
            return Err(DemoError::NotRegistered(limit));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Demo {
        server,
        agent,
        frontend,
        backend,
    })
}

/// Sends `sessions` ping-pong sessions (64-byte messages) and one 8 MiB bulk echo through the
/// frontend, verifying every byte.
pub fn traffic(
    frontend: SocketAddr,
    sessions: usize,
    round_trips_per_session: u64,
) -> Result<TrafficReport, DemoError> {
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| DemoError::Traffic(std::io::Error::other(e.to_string())))?;
    let mut bytes = 0u64;
    let msg = [0x5au8; 64];
    let mut back = [0u8; 64];
    for s in 0..sessions {
        let mut c = TcpStream::connect(frontend).map_err(DemoError::Traffic)?;
        c.set_nodelay(true).map_err(DemoError::Traffic)?;
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(DemoError::Traffic)?;
        for _ in 0..round_trips_per_session {
            let t = Instant::now();
            c.write_all(&msg).map_err(DemoError::Traffic)?;
            c.read_exact(&mut back).map_err(DemoError::Traffic)?;
            let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
            if back != msg {
                return Err(DemoError::Corrupted(s));
            }
            bytes += msg.len() as u64;
        }
    }
    let bulk = 8 * 1024 * 1024;
    let t = Instant::now();
    bulk_echo(frontend, bulk).map_err(DemoError::Traffic)?;
    let secs = t.elapsed().as_secs_f64().max(1e-9);
    Ok(TrafficReport {
        sessions: sessions + 1,
        round_trips: hist.len(),
        bytes_each_way: bytes + bulk as u64,
        rtt_p50_us: hist.value_at_quantile(0.5),
        rtt_p99_us: hist.value_at_quantile(0.99),
        rtt_max_us: hist.max(),
        bulk_mib_per_s: bulk as f64 / (1024.0 * 1024.0) / secs,
    })
}

fn bulk_echo(frontend: SocketAddr, len: usize) -> std::io::Result<()> {
    let c = TcpStream::connect(frontend)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = c.try_clone()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        while sent < len {
            let n = chunk.len().min(len - sent);
            writer.write_all(&chunk[..n])?;
            sent += n;
        }
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut reader = c;
    let mut buf = vec![0u8; 65536];
    let mut got = 0usize;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            if *b != ((got + i) % 65536 % 251) as u8 {
                return Err(std::io::Error::other(format!(
                    "bulk echo corrupted at byte {}",
                    got + i
                )));
            }
        }
        got += n;
    }
    sender
        .join()
        .map_err(|_| std::io::Error::other("bulk sender panicked"))??;
    if got != len {
        return Err(std::io::Error::other(format!(
            "bulk echo returned {got} of {len} bytes"
        )));
    }
    Ok(())
}

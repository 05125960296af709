//! The swarm's command line (`SwarmArgs`) and the run it describes (`Plan`), checked: every
//! count and time has a range, and a bad one is an error naming the flag. No I/O but loading
//! the TLS files `--tls` names.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::super::{resolve, BenchError, CommonArgs};

/// Connections one source address is given (of its ~28,000 ephemeral ports).
const CONNS_PER_SOURCE: usize = 10_000;
/// Agents one source address is given: under a server's default `max_hosts_per_ip` (1024), as
/// a fleet of distinct addresses would be.
const AGENTS_PER_SOURCE: usize = 1_000;
/// Most data connections per agent (an agent's state is one byte).
const MAX_CONNECTIONS_PER_AGENT: u32 = 64;

#[derive(Args, Debug, Clone)]
pub struct SwarmArgs {
    /// Agents to emulate (each its own host_name PREFIX-NNNNN and agent_id).
    #[arg(long, value_name = "N")]
    pub agents: usize,
    /// Data connections per agent (its connection_num), 1 to 64.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub connections_per_agent: u32,
    /// Also open each agent's aside connection (needed to measure a weight change).
    #[arg(long)]
    pub aside: bool,
    /// Echo a session's bytes back (without it a session's connection is closed at once).
    #[arg(long)]
    pub serve_echo: bool,
    /// TLS to the server (verified against --ca-file, name --server-name).
    #[arg(long)]
    pub tls: bool,
    /// CA file the server certificate must chain to [default: system roots].
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca_file: Option<String>,
    /// Name the server certificate is verified against [default: the target's host].
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub server_name: Option<String>,
    /// Cluster to register into.
    #[arg(long, default_value = "c", value_name = "NAME")]
    pub cluster: String,
    /// Weight announced by every agent.
    #[arg(long, default_value_t = 10)]
    pub weight: i64,
    /// Credential policy announced: "" (none), token or hmac.
    #[arg(long, default_value = "", value_name = "POLICY")]
    pub credential_policy: String,
    /// The credential (token, or hmac secret).
    #[arg(long, value_name = "SECRET")]
    pub credential: Option<String>,
    /// Host names are PREFIX-00000, PREFIX-00001, ...
    #[arg(long, default_value = "swarm", value_name = "PREFIX")]
    pub host_prefix: String,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub concurrency: usize,
    /// Source addresses 127.0.0.1..127.0.0.M to spread connections over [default: one per
    /// 10,000 connections; 0: let the OS choose]. Loopback IPv4 targets only.
    #[arg(long, value_name = "M")]
    pub source_addrs: Option<usize>,
    /// Server processes whose CPU and RSS are measured, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "PID,...")]
    pub pids: Vec<u32>,
    /// Longest wait, after the last agent registered, for the server to go quiet; the CPU it
    /// spends until then is reported as its CPU after the last joined (needs --pids).
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub tail_secs: f64,
    /// Then join one more agent, 7 times one at a time, and (with --aside) change the first's
    /// weight, measuring the server's CPU for each until it is quiet; the median join is
    /// reported (needs --pids; meaningful when heartbeats are rare).
    #[arg(long)]
    pub one_more: bool,
    /// Then keep running, re-dial lost connections with the agent's backoff, and report the
    /// time from the first loss until every agent is back (waits up to --duration-secs, default 60).
    #[arg(long)]
    pub reconnect: bool,
    /// First retry delay, doubled per failure (the agent's reconnect_base_duration_ms).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub reconnect_base_ms: u64,
    /// Retry delay cap (the agent's reconnect_max_duration_ms).
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub reconnect_max_ms: u64,
    /// Stop waiting for every agent to register after this long.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub register_timeout_secs: f64,
}

/// TLS client settings, loaded once.
pub(crate) struct TlsDial {
    pub config: Arc<crate::tls::ClientConfig>,
    pub name: crate::tls::ServerName<'static>,
}

/// The settings of a run, checked.
pub(super) struct Plan {
    pub agents: usize,
    pub data_per_agent: u32,
    pub aside: bool,
    pub threads: usize,
    pub sources: Vec<IpAddr>,
    pub hold: Duration,
    pub register_timeout: Duration,
    pub tail: Duration,
    pub one_more: bool,
    pub progress: bool,
}

impl Plan {
    pub fn conns_per_agent(&self) -> usize {
        self.data_per_agent as usize + usize::from(self.aside)
    }

    /// The source address of an agent's connections: one per agent, as a real agent has.
    pub fn source(&self, agent: usize) -> Option<IpAddr> {
        let n = self.sources.len();
        (n > 0).then(|| self.sources[agent % n])
    }
}

fn invalid(msg: impl Into<String>) -> BenchError {
    BenchError::InvalidArgument(msg.into())
}

pub(super) fn check(
    common: &CommonArgs,
    args: &SwarmArgs,
) -> Result<(Plan, SocketAddr), BenchError> {
    let target = common
        .target
        .as_deref()
        .ok_or(BenchError::MissingTarget("swarm"))?;
    let addr = resolve(target)?;
    if args.agents == 0 {
        return Err(invalid("--agents must be at least 1"));
    }
    if !(1..=MAX_CONNECTIONS_PER_AGENT).contains(&args.connections_per_agent) {
        return Err(invalid(format!(
            "--connections-per-agent must be 1 to {MAX_CONNECTIONS_PER_AGENT}"
        )));
    }
    if args.concurrency == 0 {
        return Err(invalid("--concurrency must be at least 1"));
    }
    if args.one_more && args.pids.is_empty() {
        return Err(invalid("--one-more measures server CPU: it needs --pids"));
    }
    for (name, v) in [
        ("--tail-secs", args.tail_secs),
        ("--register-timeout-secs", args.register_timeout_secs),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(invalid(format!("{name} must be a number of seconds")));
        }
    }
    if args.reconnect_base_ms == 0 || args.reconnect_max_ms < args.reconnect_base_ms {
        return Err(invalid(
            "--reconnect-base-ms must be at least 1 and at most --reconnect-max-ms",
        ));
    }
    let extra = super::phases::JOIN_SAMPLES;
    let conns =
        (args.agents + extra) * (args.connections_per_agent as usize + usize::from(args.aside));
    let loopback_v4 = matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback());
    let count = args.source_addrs.unwrap_or(if loopback_v4 {
        conns
            .div_ceil(CONNS_PER_SOURCE)
            .max((args.agents + extra).div_ceil(AGENTS_PER_SOURCE))
    } else {
        0
    });
    if count > 0 && !loopback_v4 {
        return Err(invalid(
            "--source-addrs needs a loopback IPv4 target (127.x.x.x); use 0 for others",
        ));
    }
    if count > 254 {
        return Err(invalid("--source-addrs must be at most 254"));
    }
    let sources = (1..=count)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
        .collect();
    let default_hold = if args.reconnect { 60.0 } else { 0.0 };
    let plan = Plan {
        agents: args.agents,
        data_per_agent: args.connections_per_agent,
        aside: args.aside,
        threads: match common.threads {
            Some(0) => return Err(invalid("--threads must be at least 1")),
            Some(n) => n.min(args.agents),
            None => 1,
        },
        sources,
        hold: Duration::from_secs_f64(common.duration_secs.unwrap_or(default_hold)),
        register_timeout: Duration::from_secs_f64(args.register_timeout_secs),
        tail: Duration::from_secs_f64(args.tail_secs),
        one_more: args.one_more,
        progress: !common.no_progress,
    };
    Ok((plan, addr))
}

pub(super) fn tls_dial(args: &SwarmArgs, target: &str) -> Result<Option<TlsDial>, BenchError> {
    if !args.tls {
        return Ok(None);
    }
    let config = crate::config::AgentTlsConfig {
        ca_file: args.ca_file.clone(),
        server_name: args.server_name.clone(),
        ..Default::default()
    };
    let tls_err = |e: crate::tls::TlsError| invalid(format!("--tls: {e}"));
    Ok(Some(TlsDial {
        config: crate::tls::client_config(&config).map_err(tls_err)?,
        name: crate::tls::server_name(&config, target).map_err(tls_err)?,
    }))
}

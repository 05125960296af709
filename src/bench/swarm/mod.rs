//! `bench swarm`: many ringtun agents emulated from one process, to measure what a fleet costs a
//! server. Each agent has its own host_name and agent_id and opens `--connections-per-agent`
//! data connections (and its aside connection with `--aside`) with real handshakes (the crate's
//! codec and TLS client), answers heartbeats, and with `--serve-echo` echoes sessions.
//! Connections are spread over loopback source addresses 127.0.0.1..127.0.0.M (bound before
//! connect), so their number can exceed one address's ephemeral ports; at most `--concurrency`
//! handshakes are in flight, so the swarm, not the server's handshake limit, paces the storm.
//!
//! Phases: register every agent (time to all registered, handshakes per second, failures by
//! reason; with `--pids` the server's CPU and RSS per agent, and its CPU in the `--tail-secs`
//! after the last one joined); with `--one-more`, join one more agent and change its weight,
//! measuring the server's CPU for each until it is quiet; then hold for `--duration-secs`
//! (losses are failures), or with `--reconnect` wait for the server to go away and report how
//! long until every agent is back (re-dialling with the agent's backoff).
//!
//! It does not start servers (perf/swarm does), does not log, and does not open a backend: a
//! session without `--serve-echo` is closed. Agents run on `--threads` current-thread runtimes
//! (default 1, leaving the other cores to the server); the phases run on the calling thread.

mod conn;
mod report;
mod server_cpu;
mod tally;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::sync::{mpsc, watch, Semaphore};

use super::{resolve, BenchError, CommonArgs, Outcome};
use crate::agent::backoff::Backoff;
use crate::protocol::Role;
use crate::secret::Secret;
use conn::{Cmd, Slot};
use report::{JoinReport, Phases, ReconnectReport, RegisterReport};
use server_cpu::Procs;
use tally::Tally;

/// Connections one source address is given (of its ~28,000 ephemeral ports).
const CONNS_PER_SOURCE: usize = 10_000;
/// Most data connections per agent (an agent's state is one byte).
const MAX_CONNECTIONS_PER_AGENT: u32 = 64;
/// How often the phases look at the counters.
const POLL: Duration = Duration::from_millis(2);

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
    /// Window after the last agent registered in which the server's CPU is measured.
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    pub tail_secs: f64,
    /// Then join one more agent and (with --aside) change its weight, measuring the server's CPU
    /// for each until it is quiet (needs --pids; meaningful when heartbeats are rare).
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
    config: Arc<crate::tls::ClientConfig>,
    name: crate::tls::ServerName<'static>,
}

/// What every emulated connection shares.
pub(crate) struct Swarm {
    target: SocketAddr,
    cluster: String,
    weight: i64,
    credential_policy: String,
    credential: Option<Secret>,
    host_prefix: String,
    /// Tells this run's agent ids from another's.
    run_id: u32,
    max_connection_num: u32,
    tls: Option<TlsDial>,
    serve_echo: bool,
    reconnect: bool,
    connect_timeout: Duration,
    backoff: Backoff,
    handshakes: Semaphore,
    tally: Tally,
}

impl Swarm {
    fn host_name(&self, agent: usize) -> String {
        format!("{}-{agent:05}", self.host_prefix)
    }

    fn agent_id(&self, agent: usize) -> String {
        format!("{}-{:08x}-{agent}", self.host_prefix, self.run_id)
    }
}

/// The settings of a run, checked.
struct Plan {
    agents: usize,
    data_per_agent: u32,
    aside: bool,
    threads: usize,
    sources: Vec<IpAddr>,
    hold: Duration,
    register_timeout: Duration,
    tail: Duration,
    one_more: bool,
    progress: bool,
}

impl Plan {
    fn conns_per_agent(&self) -> usize {
        self.data_per_agent as usize + usize::from(self.aside)
    }

    /// The source address of an agent's `j`th connection.
    fn source(&self, agent: usize, j: usize) -> Option<IpAddr> {
        let n = self.sources.len();
        (n > 0).then(|| self.sources[(agent * self.conns_per_agent() + j) % n])
    }
}

fn invalid(msg: impl Into<String>) -> BenchError {
    BenchError::InvalidArgument(msg.into())
}

fn check(common: &CommonArgs, args: &SwarmArgs) -> Result<(Plan, SocketAddr), BenchError> {
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
    let conns = (args.agents + 1) * (args.connections_per_agent as usize + usize::from(args.aside));
    let loopback_v4 = matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback());
    let count = args.source_addrs.unwrap_or(if loopback_v4 {
        conns.div_ceil(CONNS_PER_SOURCE)
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

fn tls_dial(args: &SwarmArgs, target: &str) -> Result<Option<TlsDial>, BenchError> {
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

/// Raises the open-files limit to `need` (the hard limit too, where allowed).
fn raise_fd_limit(need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= need {
            return;
        }
        let want = libc::rlimit {
            rlim_cur: need,
            rlim_max: lim.rlim_max.max(need),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Runs a swarm on its own threads and returns the result without printing it.
pub(crate) fn run(common: &CommonArgs, args: &SwarmArgs) -> Result<Outcome, BenchError> {
    let (plan, target) = check(common, args)?;
    let tls = tls_dial(args, common.target.as_deref().unwrap_or_default())?;
    let procs = Procs::new(&args.pids)?;
    raise_fd_limit(((plan.agents + 1) * plan.conns_per_agent() + 256) as u64);
    let sw = Arc::new(Swarm {
        target,
        cluster: args.cluster.clone(),
        weight: args.weight,
        credential_policy: args.credential_policy.clone(),
        credential: args.credential.clone().map(Secret::new),
        host_prefix: args.host_prefix.clone(),
        run_id: fastrand::u32(..),
        max_connection_num: crate::config::agent::DEFAULT_MAX_CONNECTION_NUM
            .max(args.connections_per_agent),
        tls,
        serve_echo: args.serve_echo,
        reconnect: args.reconnect,
        connect_timeout: Duration::from_millis(common.connect_timeout_ms.max(1)),
        backoff: Backoff {
            base_ms: args.reconnect_base_ms,
            max_ms: args.reconnect_max_ms,
        },
        handshakes: Semaphore::new(args.concurrency),
        // The last slot is the agent `--one-more` joins.
        tally: Tally::new(plan.agents + 1, plan.conns_per_agent() as u8, plan.threads),
    });
    let coordinator = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    let (stop, stopped) = watch::channel(false);
    let before_rss = procs.rss_kib()?;
    let before_cpu = procs.cpu_ns()?;
    let mut threads = Vec::with_capacity(plan.threads);
    for t in 0..plan.threads {
        let slots: Vec<Slot> = (t..plan.agents)
            .step_by(plan.threads)
            .flat_map(|agent| slots_of(&plan, agent))
            .collect();
        let (sw, mut stopped) = (sw.clone(), stopped.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(BenchError::Runtime)?;
        let spawned = std::thread::Builder::new()
            .name(format!("swarm-{t}"))
            .spawn(move || {
                rt.block_on(async move {
                    for slot in slots {
                        tokio::spawn(conn::run(sw.clone(), slot, None));
                    }
                    let _ = stopped.wait_for(|s| *s).await;
                });
            })
            .map_err(BenchError::Runtime)?;
        threads.push(spawned);
    }
    let result = coordinator.block_on(phases(&sw, &plan, &procs, before_cpu, before_rss));
    let _ = stop.send(true);
    for t in threads {
        let _ = t.join();
    }
    drop(stopped);
    let phases = result?;
    Ok(report::outcome(
        common.target.as_deref().unwrap_or_default(),
        args,
        &plan,
        &sw,
        &procs,
        phases,
    ))
}

fn slots_of(plan: &Plan, agent: usize) -> Vec<Slot> {
    let data = (0..plan.data_per_agent as usize).map(move |j| Slot {
        agent,
        role: Role::Data,
        source: plan.source(agent, j),
    });
    let aside = plan.aside.then(|| Slot {
        agent,
        role: Role::Aside,
        source: plan.source(agent, plan.data_per_agent as usize),
    });
    data.chain(aside).collect()
}

/// A progress line on stderr once a second, until aborted.
fn progress(
    sw: &Arc<Swarm>,
    expected: usize,
    enabled: bool,
) -> Option<tokio::task::JoinHandle<()>> {
    let sw = sw.clone();
    enabled.then(|| {
        tokio::spawn(async move {
            let mut last = 0u64;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let c = sw.tally.counts();
                eprintln!(
                    "[{:>5.1}s] {} agents registered (of {expected}), {} handshakes/s, {} failed, {} lost",
                    sw.tally.start().elapsed().as_secs_f64(),
                    sw.tally.agents_up(),
                    c.handshakes - last,
                    c.failures,
                    c.lost
                );
                last = c.handshakes;
            }
        })
    })
}

/// Waits until `done` holds or `deadline` passes; returns whether it held.
async fn wait_for(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn phases(
    sw: &Arc<Swarm>,
    plan: &Plan,
    procs: &Procs,
    before_cpu: Vec<u64>,
    before_rss: Vec<u64>,
) -> Result<Phases, BenchError> {
    let tally = &sw.tally;
    let n = plan.agents;
    let ticker = progress(sw, n, plan.progress);
    let start = tally.start();
    let all = wait_for(start + plan.register_timeout, || {
        tally.agents_up() >= n || tally.agents_up() + tally.agents_dead() >= n
    })
    .await;
    let all = all && tally.agents_up() >= n;
    let registered_cpu = procs.cpu_ns()?;
    let registered_rss = procs.rss_kib()?;
    let counts = tally.counts();
    let latency = tally.latency();
    let secs = if all {
        tally.secs(tally.last_complete_ns())
    } else {
        start.elapsed().as_secs_f64()
    };
    eprintln!(
        "swarm: {} of {n} agents registered in {secs:.3} s ({} handshakes, {} failed)",
        tally.agents_up(),
        counts.handshakes,
        counts.failures
    );
    let (tail_cpu, tail_rss) = if procs.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        tokio::time::sleep(plan.tail).await;
        (procs.cpu_ns()?, procs.rss_kib()?)
    };
    let register = RegisterReport {
        all,
        agents_up: tally.agents_up(),
        secs,
        counts,
        latency: super::stats::Percentiles::of(&latency),
        before_cpu,
        registered_cpu,
        tail_cpu,
        before_rss,
        registered_rss,
        tail_rss,
    };
    let mut expected = n;
    let join = if plan.one_more && all {
        let j = one_more(sw, plan, procs).await?;
        if j.joined {
            expected += 1;
        }
        Some(j)
    } else {
        None
    };
    let before_hold = tally.counts();
    let reconnect = if sw.reconnect {
        Some(reconnect(sw, plan, expected).await)
    } else {
        tokio::time::sleep(plan.hold).await;
        None
    };
    let hold = tally.counts().since(&before_hold);
    if let Some(t) = ticker {
        t.abort();
    }
    Ok(Phases {
        register,
        join,
        hold,
        reconnect,
    })
}

/// Joins agent N (one more than the swarm), then changes its weight on its aside connection;
/// the server's CPU is measured for each until it is quiet.
async fn one_more(sw: &Arc<Swarm>, plan: &Plan, procs: &Procs) -> Result<JoinReport, BenchError> {
    let idle_ns_per_sec = server_cpu::idle_rate(procs, Duration::from_secs(1)).await?;
    let agent = plan.agents;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut rx = Some(rx);
    let cpu_before = procs.total_cpu_ns()?;
    let t_before = tokio::time::Instant::now();
    for slot in slots_of(plan, agent) {
        let cmds = if slot.role == Role::Aside {
            rx.take()
        } else {
            None
        };
        tokio::spawn(conn::run(sw.clone(), slot, cmds));
    }
    let limit = Instant::now() + sw.connect_timeout * 2 + Duration::from_secs(1);
    let joined = wait_for(limit, || sw.tally.agent_complete(agent)).await;
    let joined_ms = t_before.elapsed().as_secs_f64() * 1e3;
    let join = server_cpu::settle(procs, idle_ns_per_sec, cpu_before, t_before).await?;
    let weight = if joined && plan.aside {
        let cpu_before = procs.total_cpu_ns()?;
        let t_before = tokio::time::Instant::now();
        let _ = tx.send(Cmd::Weight(sw.weight + 1));
        Some(server_cpu::settle(procs, idle_ns_per_sec, cpu_before, t_before).await?)
    } else {
        None
    };
    // The aside connection keeps serving after its commands end.
    drop(tx);
    eprintln!(
        "swarm: one more agent {} in {joined_ms:.1} ms, server CPU {:.0} µs",
        if joined { "joined" } else { "did not join" },
        join.cpu_ns as f64 / 1e3
    );
    Ok(JoinReport {
        joined,
        joined_ms,
        idle_ns_per_sec,
        join,
        weight,
    })
}

/// Waits for the server to go away and every agent to be back, within the hold time.
async fn reconnect(sw: &Arc<Swarm>, plan: &Plan, expected: usize) -> ReconnectReport {
    let tally = &sw.tally;
    let deadline = Instant::now() + plan.hold;
    // An outage under way already (the server went away during the measurements) counts from
    // its first loss.
    if tally.agents_up() >= expected {
        tally.reset_first_loss();
    }
    let before = tally.counts();
    eprintln!(
        "swarm: waiting up to {:.0} s for the server to go away and every agent to come back (--reconnect)",
        plan.hold.as_secs_f64()
    );
    let outage = wait_for(deadline, || tally.agents_up() < expected).await;
    let first_loss = tally.first_loss_ns();
    let back = outage && wait_for(deadline, || tally.agents_up() >= expected).await;
    let back_in_secs = match (back, first_loss) {
        (true, Some(lost)) => Some(tally.secs(tally.last_complete_ns().saturating_sub(lost))),
        _ => None,
    };
    if let Some(s) = back_in_secs {
        eprintln!("swarm: all {expected} agents back {s:.3} s after the first loss");
    }
    ReconnectReport {
        outage,
        back,
        back_in_secs,
        agents_up: tally.agents_up(),
        expected,
        counts: tally.counts().since(&before),
    }
}

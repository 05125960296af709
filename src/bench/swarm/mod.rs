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

mod baseline;
mod conn;
mod phases;
mod plan;
mod report;
mod server_cpu;
mod tally;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use super::{BenchError, CommonArgs, Outcome};
use crate::agent::backoff::Backoff;
use crate::protocol::Role;
use crate::secret::Secret;
use conn::Slot;
pub use plan::SwarmArgs;
use plan::{Plan, TlsDial};
use server_cpu::Procs;
use tally::Tally;

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

/// Raises the open-files limit to `need` (the hard limit too, where allowed); returns the soft
/// and hard limits in force afterwards.
fn raise_fd_limit(need: u64) -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return (0, 0);
        }
        if lim.rlim_cur < need {
            let want = libc::rlimit {
                rlim_cur: need,
                rlim_max: lim.rlim_max.max(need),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                let most = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &most);
            }
            let _ = libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// Runs a swarm on its own threads and returns the result without printing it.
pub(crate) fn run(common: &CommonArgs, args: &SwarmArgs) -> Result<Outcome, BenchError> {
    let (plan, target) = plan::check(common, args)?;
    let tls = plan::tls_dial(args, common.target.as_deref().unwrap_or_default())?;
    let procs = Procs::new(&args.pids)?;
    let need = ((plan.agents + phases::JOIN_SAMPLES) * plan.conns_per_agent() + 256) as u64;
    let (limit, hard) = raise_fd_limit(need);
    if limit < need {
        return Err(BenchError::InvalidArgument(format!(
            "{} agents with {} connections each need about {need} open files, but the limit is \
             {limit} (hard limit {hard}, which this process may not raise): use fewer agents \
             or raise the limit",
            plan.agents,
            plan.conns_per_agent()
        )));
    }
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
        // The last slots are the agents `--one-more` joins.
        tally: Tally::new(
            plan.agents + phases::JOIN_SAMPLES,
            plan.conns_per_agent() as u8,
            plan.threads,
        ),
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
    let result = coordinator.block_on(phases::phases(&sw, &plan, &procs, before_cpu, before_rss));
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
    let data = (0..plan.data_per_agent as usize).map(move |_| Slot {
        agent,
        role: Role::Data,
        source: plan.source(agent),
    });
    let aside = plan.aside.then(|| Slot {
        agent,
        role: Role::Aside,
        source: plan.source(agent),
    });
    data.chain(aside).collect()
}

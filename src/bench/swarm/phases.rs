//! The phases of a swarm run, on the calling thread while the agents run on theirs: wait for
//! every agent to register, sample the server around it, `--one-more`, then hold or wait for a
//! reconnect. Waits poll the shared counters every few milliseconds and are all bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::baseline;
use super::conn::{self, Cmd};
use super::plan::Plan;
use super::report::{JoinReport, Phases, ReconnectReport, RegisterReport};
use super::server_cpu::{self, Procs};
use super::{slots_of, Swarm};
use crate::bench::BenchError;
use crate::protocol::Role;

/// How often the phases look at the counters.
const POLL: Duration = Duration::from_millis(2);
/// Longest wait for the server to go quiet after one join or weight change.
const SETTLE_MAX: Duration = Duration::from_secs(30);

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

pub(super) async fn phases(
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
    // The server may go on working (publishing snapshots) after the last agent has its answer.
    let (tail, tail_cpu, tail_rss) = if procs.is_empty() {
        (None, Vec::new(), Vec::new())
    } else {
        let before: u64 = registered_cpu.iter().sum();
        let t_before = tokio::time::Instant::now();
        let tail = server_cpu::settle(procs, 0.0, before, t_before, plan.tail).await?;
        (Some(tail), procs.cpu_ns()?, procs.rss_kib()?)
    };
    let register = RegisterReport {
        all,
        agents_up: tally.agents_up(),
        secs,
        counts,
        latency: crate::bench::stats::Percentiles::of(&latency),
        before_cpu,
        registered_cpu,
        tail,
        tail_cpu,
        before_rss,
        registered_rss,
        tail_rss,
    };
    let mut expected = n;
    let join = if plan.one_more && all {
        let j = one_more(sw, plan, procs).await?;
        expected += j.joins;
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

/// Lone joins `--one-more` measures, one agent after another; the median is reported (one
/// join's cost on this VM spreads about 2× from one to the next).
pub(super) const JOIN_SAMPLES: usize = 7;

/// Joins agents N, N+1, … one at a time (`JOIN_SAMPLES` of them, each measured until the server
/// is quiet), then changes the first one's weight on its aside connection.
async fn one_more(sw: &Arc<Swarm>, plan: &Plan, procs: &Procs) -> Result<JoinReport, BenchError> {
    let idle_ns_per_sec = server_cpu::idle_rate(procs, Duration::from_secs(1)).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut rx = Some(rx);
    let mut samples = Vec::with_capacity(JOIN_SAMPLES);
    let mut joined_ms = Vec::with_capacity(JOIN_SAMPLES);
    for agent in plan.agents..plan.agents + JOIN_SAMPLES {
        let threads_before = server_cpu::threads(procs);
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
        if !wait_for(limit, || sw.tally.agent_complete(agent)).await {
            eprintln!("swarm: one more agent ({agent}) did not join");
            break;
        }
        joined_ms.push(t_before.elapsed().as_secs_f64() * 1e3);
        let join =
            server_cpu::settle(procs, idle_ns_per_sec, cpu_before, t_before, SETTLE_MAX).await?;
        // Which threads the join woke, and how often: read after the quiet windows, so idle work
        // (heartbeats, timers) in them counts too.
        let threads: Vec<String> =
            server_cpu::thread_deltas(&threads_before, &server_cpu::threads(procs))
                .iter()
                .map(|t| format!("{} {:.0} µs/{} runs", t.name, t.cpu_ns as f64 / 1e3, t.runs))
                .collect();
        eprintln!(
            "swarm: one more join {}/{JOIN_SAMPLES}: server CPU {:.0} µs ({})",
            samples.len() + 1,
            join.cpu_ns as f64 / 1e3,
            threads.join(", ")
        );
        samples.push(join);
    }
    let joined = samples.len() == JOIN_SAMPLES;
    let weight = if joined && plan.aside {
        let cpu_before = procs.total_cpu_ns()?;
        let t_before = tokio::time::Instant::now();
        let _ = tx.send(Cmd::Weight(sw.weight + 1));
        Some(server_cpu::settle(procs, idle_ns_per_sec, cpu_before, t_before, SETTLE_MAX).await?)
    } else {
        None
    };
    // The aside connection keeps serving after its commands end.
    drop(tx);
    let joins = samples.len();
    let samples_us: Vec<f64> = samples.iter().map(|s| s.cpu_ns as f64 / 1e3).collect();
    let join = median_settled(samples);
    eprintln!(
        "swarm: {joins} more agent(s) joined one at a time, median server CPU {:.0} µs",
        join.cpu_ns as f64 / 1e3
    );
    // Measured after the joins, so it takes no CPU from them.
    let baseline_us = tokio::task::spawn_blocking(baseline::lone_connection_cpu_us)
        .await
        .map_err(|e| BenchError::Failed(format!("the baseline measurement failed: {e}")))??;
    eprintln!(
        "swarm: a lone accept, read, answer and close costs a thread {baseline_us:.0} µs here"
    );
    joined_ms.sort_by(f64::total_cmp);
    Ok(JoinReport {
        joined,
        joins,
        joined_ms: joined_ms.get(joined_ms.len() / 2).copied().unwrap_or(0.0),
        idle_ns_per_sec,
        join,
        samples_us,
        weight,
        baseline_us,
    })
}

/// The sample of median CPU (the upper one of an even count); an empty one when none.
fn median_settled(mut samples: Vec<server_cpu::Settled>) -> server_cpu::Settled {
    samples.sort_by_key(|s| s.cpu_ns);
    let mid = samples.len() / 2;
    if samples.is_empty() {
        return server_cpu::Settled {
            cpu_ns: 0,
            secs: 0.0,
            quiet: false,
        };
    }
    samples.swap_remove(mid)
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

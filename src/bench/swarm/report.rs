//! The result of a swarm run: what each phase measured, as one JSON document (`--json`) or a
//! table, and the failures that make the run fail (agents that never registered, connections
//! lost while held, agents not back after an outage). Pure formatting: no I/O.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::server_cpu::{Procs, Settled};
use super::tally::Counts;
use super::{Plan, Swarm, SwarmArgs};
use crate::bench::stats::{percentile_table, Percentiles};
use crate::bench::Outcome;

/// What the registration phase saw.
pub struct RegisterReport {
    pub all: bool,
    pub agents_up: usize,
    /// Until the last agent had every connection up (or until the phase gave up).
    pub secs: f64,
    pub counts: Counts,
    pub latency: Percentiles,
    pub before_cpu: Vec<u64>,
    pub registered_cpu: Vec<u64>,
    /// Until the server was quiet after the last agent registered (None without `--pids`).
    pub tail: Option<Settled>,
    /// At the end of `tail` (empty without `--pids`).
    pub tail_cpu: Vec<u64>,
    pub before_rss: Vec<u64>,
    pub registered_rss: Vec<u64>,
    pub tail_rss: Vec<u64>,
}

/// What `--one-more` measured.
pub struct JoinReport {
    /// Every one of the `JOIN_SAMPLES` agents joined.
    pub joined: bool,
    /// How many did.
    pub joins: usize,
    /// Median time from dialling to the init answer.
    pub joined_ms: f64,
    pub idle_ns_per_sec: f64,
    /// The median join (by CPU).
    pub join: Settled,
    /// Each join's CPU, µs, in order.
    pub samples_us: Vec<f64>,
    pub weight: Option<Settled>,
    /// The same run's floor for a lone connection (`baseline`), µs of one thread's CPU.
    pub baseline_us: f64,
}

/// What `--reconnect` saw.
pub struct ReconnectReport {
    pub outage: bool,
    pub back: bool,
    pub back_in_secs: Option<f64>,
    pub agents_up: usize,
    pub expected: usize,
    pub counts: Counts,
}

pub struct Phases {
    pub register: RegisterReport,
    pub join: Option<JoinReport>,
    /// Counts over the hold (or the reconnect wait).
    pub hold: Counts,
    pub reconnect: Option<ReconnectReport>,
}

#[derive(Serialize)]
struct ServerJson {
    pid: u32,
    cpu_source: &'static str,
    cpu_registration_us: f64,
    cpu_per_agent_us: f64,
    cpu_after_last_joined_us: Option<f64>,
    rss_before_kib: u64,
    rss_registered_kib: u64,
    rss_after_tail_kib: Option<u64>,
    rss_per_agent_kib: f64,
}

#[derive(Serialize)]
struct SettledJson {
    cpu_us: f64,
    settle_secs: f64,
    quiet: bool,
}

impl From<&Settled> for SettledJson {
    fn from(s: &Settled) -> Self {
        Self {
            cpu_us: s.cpu_ns as f64 / 1e3,
            settle_secs: s.secs,
            quiet: s.quiet,
        }
    }
}

#[derive(Serialize)]
struct CountsJson<'a> {
    handshakes: u64,
    failures: u64,
    failures_by_reason: &'a BTreeMap<&'static str, u64>,
    connections_lost: u64,
}

impl<'a> From<&'a Counts> for CountsJson<'a> {
    fn from(c: &'a Counts) -> Self {
        Self {
            handshakes: c.handshakes,
            failures: c.failures,
            failures_by_reason: &c.by_reason,
            connections_lost: c.lost,
        }
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

fn server_rows(p: &RegisterReport, procs: &Procs, agents: usize) -> Vec<ServerJson> {
    let n = agents.max(1) as f64;
    procs
        .0
        .iter()
        .enumerate()
        .map(|(i, proc)| {
            let cpu = p.registered_cpu[i].saturating_sub(p.before_cpu[i]);
            let settled_rss = p.tail_rss.get(i).copied().unwrap_or(p.registered_rss[i]);
            ServerJson {
                pid: proc.pid,
                cpu_source: proc.source().name(),
                cpu_registration_us: us(cpu),
                cpu_per_agent_us: us(cpu) / n,
                cpu_after_last_joined_us: p
                    .tail_cpu
                    .get(i)
                    .map(|t| us(t.saturating_sub(p.registered_cpu[i]))),
                rss_before_kib: p.before_rss[i],
                rss_registered_kib: p.registered_rss[i],
                rss_after_tail_kib: p.tail_rss.get(i).copied(),
                rss_per_agent_kib: (settled_rss as f64 - p.before_rss[i] as f64) / n,
            }
        })
        .collect()
}

pub fn outcome(
    target: &str,
    args: &SwarmArgs,
    plan: &Plan,
    sw: &Swarm,
    procs: &Procs,
    phases: Phases,
) -> Outcome {
    let Phases {
        register: r,
        join,
        hold,
        reconnect,
    } = phases;
    let tally = &sw.tally;
    let n = plan.agents;
    let mut failures = Vec::new();
    if !r.all {
        failures.push(format!(
            "{} of {n} agents registered within {:.1} s ({} handshakes failed)",
            r.agents_up, r.secs, r.counts.failures
        ));
    }
    if let Some(j) = &join {
        if !j.joined {
            failures.push("the --one-more agent did not join".into());
        }
    }
    match &reconnect {
        None if hold.lost > 0 => failures.push(format!(
            "{} connections lost while held: {}",
            hold.lost,
            tally.first_lost().unwrap_or_default()
        )),
        Some(rc) if !rc.outage => failures.push(format!(
            "--reconnect: the server did not go away within {:.0} s",
            plan.hold.as_secs_f64()
        )),
        Some(rc) if !rc.back => failures.push(format!(
            "--reconnect: {} of {} agents back within {:.0} s",
            rc.agents_up,
            rc.expected,
            plan.hold.as_secs_f64()
        )),
        _ => {}
    }
    let servers = server_rows(&r, procs, n);
    let handshakes_per_sec = r.counts.handshakes as f64 / r.secs.max(1e-9);
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let json = serde_json::json!({
        "mode": "swarm",
        "target": target,
        "agents": n,
        "connections_per_agent": plan.data_per_agent,
        "aside": plan.aside,
        "tls": args.tls,
        "serve_echo": args.serve_echo,
        "cluster": args.cluster,
        "source_addrs": plan.sources.len(),
        "concurrency": args.concurrency,
        "threads": plan.threads,
        "all_registered": r.all,
        "agents_registered": r.agents_up,
        "registered_secs": r.secs,
        "handshakes": r.counts.handshakes,
        "handshakes_per_sec": handshakes_per_sec,
        "handshake_failures": r.counts.failures,
        "failures_by_reason": r.counts.by_reason,
        "first_errors": tally.first_errors(),
        "handshake_us": r.latency,
        "server": servers,
        "quiet_after_last_joined_secs": r.tail.as_ref().map(|t| t.secs),
        "quiet_after_last_joined": r.tail.as_ref().map(|t| t.quiet),
        "one_more": join.as_ref().map(|j| serde_json::json!({
            "joined": j.joined,
            "joined_ms": j.joined_ms,
            "idle_cpu_us_per_sec": j.idle_ns_per_sec / 1e3,
            "join": SettledJson::from(&j.join),
            "joins": j.joins,
            "join_samples_cpu_us": j.samples_us,
            "weight_change": j.weight.as_ref().map(SettledJson::from),
            "baseline_lone_connection_us": j.baseline_us,
            "join_vs_baseline": j.join.cpu_ns as f64 / 1e3 / j.baseline_us.max(1e-9),
        })),
        "hold_secs": if reconnect.is_some() { 0.0 } else { plan.hold.as_secs_f64() },
        "hold": CountsJson::from(&hold),
        "reconnect": reconnect.as_ref().map(|rc| serde_json::json!({
            "outage_seen": rc.outage,
            "all_back": rc.back,
            "back_in_secs": rc.back_in_secs,
            "agents_registered": rc.agents_up,
            "expected": rc.expected,
            "counts": CountsJson::from(&rc.counts),
        })),
        "first_lost": tally.first_lost(),
        "pongs_sent": tally.pongs.load(relaxed),
        "sessions_served": tally.sessions.load(relaxed),
        "session_bytes_echoed": tally.session_bytes.load(relaxed),
        "sessions_refused": tally.sessions_refused.load(relaxed),
        "pool_requests": tally.pool_requests.load(relaxed),
        "drains": tally.drains.load(relaxed),
        "ok": failures.is_empty(),
        "failures": failures,
    });
    let table = table(target, args, plan, &r, &json);
    Outcome {
        json,
        table,
        failures,
    }
}

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v.get(key)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0)
}

fn table(
    target: &str,
    args: &SwarmArgs,
    plan: &Plan,
    r: &RegisterReport,
    j: &serde_json::Value,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "swarm against {target}: {} agents × ({} data{}), {}{} source addresses, concurrency {}, {} thread(s)",
        plan.agents,
        plan.data_per_agent,
        if plan.aside { " + aside" } else { "" },
        if args.tls { "TLS, " } else { "" },
        plan.sources.len(),
        args.concurrency,
        plan.threads
    );
    let _ = writeln!(
        s,
        "  {} of {} registered in {:.3} s: {} handshakes ({:.0}/s), {} failed",
        r.agents_up,
        plan.agents,
        r.secs,
        r.counts.handshakes,
        f(j, "handshakes_per_sec"),
        r.counts.failures
    );
    for (reason, count) in &r.counts.by_reason {
        let _ = writeln!(s, "    {reason}: {count}");
    }
    if let Some(errors) = j["first_errors"].as_object() {
        for (reason, text) in errors {
            let _ = writeln!(s, "    first {reason}: {}", text.as_str().unwrap_or(""));
        }
    }
    percentile_table(&mut s, &[("handshake", &r.latency)]);
    for srv in j["server"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  server pid {}: CPU {:.0} µs over registration ({:.1} µs/agent), {} after the last joined ({}); RSS {:.2} KiB/agent",
            srv["pid"],
            f(srv, "cpu_registration_us"),
            f(srv, "cpu_per_agent_us"),
            srv["cpu_after_last_joined_us"]
                .as_f64()
                .map_or("–".to_string(), |v| format!("{v:.0} µs")),
            match (r.tail.as_ref(), plan.tail.as_secs_f64()) {
                (Some(t), _) if t.quiet => format!("quiet {:.2} s after", t.secs),
                (_, cap) => format!("still busy after {cap:.0} s"),
            },
            f(srv, "rss_per_agent_kib")
        );
    }
    if let Some(m) = j["one_more"].as_object() {
        let _ = writeln!(
            s,
            "  one more agent, {} times one at a time: joined in {:.2} ms, server CPU {:.0} µs (medians; each {}; idle rate {:.0} µs/s)",
            m["joins"].as_u64().unwrap_or(0),
            m["joined_ms"].as_f64().unwrap_or(0.0),
            m["join"]["cpu_us"].as_f64().unwrap_or(0.0),
            m["join_samples_cpu_us"]
                .as_array()
                .map(|v| v
                    .iter()
                    .map(|x| format!("{:.0}", x.as_f64().unwrap_or(0.0)))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            m["idle_cpu_us_per_sec"].as_f64().unwrap_or(0.0)
        );
        let _ = writeln!(
            s,
            "  baseline: a lone accept, read, answer and close costs one thread {:.0} µs here (the join {:.1}×)",
            m["baseline_lone_connection_us"].as_f64().unwrap_or(0.0),
            m["join_vs_baseline"].as_f64().unwrap_or(0.0)
        );
        if let Some(w) = m["weight_change"].as_object() {
            let _ = writeln!(
                s,
                "  weight change: server CPU {:.0} µs",
                w["cpu_us"].as_f64().unwrap_or(0.0)
            );
        }
    }
    if let Some(rc) = j["reconnect"].as_object() {
        let _ = writeln!(
            s,
            "  reconnect: outage {}, {} of {} back{}",
            if rc["outage_seen"].as_bool() == Some(true) {
                "seen"
            } else {
                "not seen"
            },
            rc["agents_registered"],
            rc["expected"],
            rc["back_in_secs"]
                .as_f64()
                .map_or(String::new(), |v| format!(" {v:.3} s after the first loss"))
        );
    } else {
        let _ = writeln!(
            s,
            "  held {:.1} s: {} connections lost",
            plan.hold.as_secs_f64(),
            j["hold"]["connections_lost"]
        );
    }
    let _ = writeln!(
        s,
        "  pongs {}, sessions echoed {} ({} bytes), refused {}, pool requests {}, drains {}",
        j["pongs_sent"],
        j["sessions_served"],
        j["session_bytes_echoed"],
        j["sessions_refused"],
        j["pool_requests"],
        j["drains"]
    );
    s
}

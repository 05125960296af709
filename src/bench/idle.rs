//! `bench idle`: opens N connections through the target and holds them for the duration, checking
//! each every `--interval-ms` (one byte written, the same byte expected back). Reports how many
//! stayed alive, and the resident memory (VmRSS from /proc/PID/status) of each `--pids` process
//! before the connections, after every connection completed its first check (so the sessions are
//! fully set up end to end), and at the end; the growth divided by the sessions is the memory cost
//! of one idle session. Linux only for the memory part. It does not reconnect dead sessions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::progress::{self, Counters};
use super::{read_exact_within, write_all_within, BenchError, Ctx, IdleArgs, Outcome};

/// Most connection attempts in flight while establishing.
const CONNECT_CONCURRENCY: usize = 256;

#[derive(Default)]
struct Tally {
    checks_ok: AtomicU64,
    checks_failed: AtomicU64,
    first_check_failed: AtomicU64,
}

#[derive(Serialize, Clone, Copy)]
struct PidMemory {
    pid: u32,
    rss_before_kib: u64,
    rss_after_kib: u64,
    rss_end_kib: u64,
    kib_per_session: f64,
}

#[derive(Serialize)]
struct Report<'a> {
    mode: &'static str,
    target: &'a str,
    requested: usize,
    established: usize,
    connect_failures: usize,
    alive_at_end: u64,
    dead: u64,
    checks_ok: u64,
    checks_failed: u64,
    interval_ms: u64,
    hold_secs: f64,
    memory: &'a [PidMemory],
    total_kib_per_session: Option<f64>,
    first_error: Option<String>,
    ok: bool,
    failures: &'a [String],
}

/// Resident memory of a process in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Result<u64, BenchError> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| BenchError::Pid {
            pid,
            reason: e.to_string(),
        })?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| BenchError::Pid {
            pid,
            reason: "no VmRSS line in /proc/PID/status".into(),
        })
}

fn rss_all(pids: &[u32]) -> Result<Vec<u64>, BenchError> {
    pids.iter().map(|&p| rss_kib(p)).collect()
}

pub(crate) async fn run(ctx: &Ctx, args: &IdleArgs) -> Result<Outcome, BenchError> {
    let n = ctx.connections.unwrap_or(100);
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let before = rss_all(&args.pids)?;
    let counters = Arc::new(Counters::default());
    let progress = progress::spawn(counters.clone(), Some("check"), ctx.progress);

    // Establish, at most CONNECT_CONCURRENCY attempts at a time.
    let mut socks: Vec<TcpStream> = Vec::with_capacity(n);
    let mut first_error = None;
    let mut connect_failures = 0usize;
    let mut pending = JoinSet::new();
    let mut started = 0usize;
    while started < n || !pending.is_empty() {
        while started < n && pending.len() < CONNECT_CONCURRENCY {
            let ctx = ctx.clone();
            pending.spawn(async move { ctx.connect().await });
            started += 1;
        }
        match pending.join_next().await {
            Some(Ok(Ok(s))) => socks.push(s),
            Some(Ok(Err(e))) => {
                connect_failures += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Some(Err(e)) => {
                connect_failures += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            None => break,
        }
    }
    let established = socks.len();
    if established == 0 {
        if let Some(p) = progress {
            p.abort();
        }
        return Err(BenchError::Failed(format!(
            "no connection could be established: {}",
            first_error.unwrap_or_default()
        )));
    }

    // Every session does one check right away; then the memory is read.
    let tally = Arc::new(Tally::default());
    let first_round = Arc::new(Semaphore::new(0));
    let hold_start = Instant::now();
    let end = hold_start + ctx.duration;
    let mut sessions = JoinSet::new();
    for (c, s) in socks.into_iter().enumerate() {
        let (tally, first_round, counters, io) = (
            tally.clone(),
            first_round.clone(),
            counters.clone(),
            ctx.io_timeout,
        );
        // Spread the checks over the interval.
        let phase = interval.mul_f64(c as f64 / established as f64);
        sessions.spawn(async move {
            session(s, io, interval, phase, end, &tally, &first_round, &counters).await
        });
    }
    let wait_first = ctx.io_timeout * 2 + Duration::from_secs(1);
    let established_u32 = u32::try_from(established).unwrap_or(u32::MAX);
    if tokio::time::timeout(wait_first, first_round.acquire_many(established_u32))
        .await
        .is_err()
    {
        return Err(BenchError::Timeout {
            what: "the first check of every idle session",
            ms: u64::try_from(wait_first.as_millis()).unwrap_or(u64::MAX),
        });
    }
    let after = rss_all(&args.pids)?;

    let mut dead = 0u64;
    let mut alive = 0u64;
    while let Some(r) = sessions.join_next().await {
        match r {
            Ok(Ok(())) => alive += 1,
            Ok(Err(e)) => {
                dead += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                dead += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let hold_secs = hold_start.elapsed().as_secs_f64();
    let end_rss = rss_all(&args.pids)?;
    if let Some(p) = progress {
        p.abort();
    }
    let memory: Vec<PidMemory> = args
        .pids
        .iter()
        .enumerate()
        .map(|(i, &pid)| PidMemory {
            pid,
            rss_before_kib: before[i],
            rss_after_kib: after[i],
            rss_end_kib: end_rss[i],
            kib_per_session: (after[i] as f64 - before[i] as f64) / established as f64,
        })
        .collect();
    let total_kib_per_session =
        (!memory.is_empty()).then(|| memory.iter().map(|m| m.kib_per_session).sum());
    let mut failures = Vec::new();
    if dead > 0 {
        failures.push(format!(
            "{dead} of {established} idle sessions died: {}",
            first_error.as_deref().unwrap_or("")
        ));
    }
    if connect_failures > 0 {
        failures.push(format!(
            "{connect_failures} of {n} connections could not be established"
        ));
    }
    let report = Report {
        mode: "idle",
        target: &ctx.target,
        requested: n,
        established,
        connect_failures,
        alive_at_end: alive,
        dead,
        checks_ok: tally.checks_ok.load(Ordering::Relaxed),
        checks_failed: tally.checks_failed.load(Ordering::Relaxed),
        interval_ms: args.interval_ms,
        hold_secs,
        memory: &memory,
        total_kib_per_session,
        first_error,
        ok: failures.is_empty(),
        failures: &failures,
    };
    Ok(Outcome {
        json: serde_json::to_value(&report).unwrap_or_default(),
        table: table(&report),
        failures,
    })
}

fn table(r: &Report<'_>) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "idle sessions through {}: {} requested, {} established, held {:.1} s, checked every {} ms",
        r.target, r.requested, r.established, r.hold_secs, r.interval_ms
    );
    let _ = writeln!(
        s,
        "  alive at end {}, dead {}, checks ok {}, checks failed {}",
        r.alive_at_end, r.dead, r.checks_ok, r.checks_failed
    );
    if let Some(e) = &r.first_error {
        let _ = writeln!(s, "  first error: {e}");
    }
    if !r.memory.is_empty() {
        let _ = writeln!(
            s,
            "  {:>8} {:>12} {:>12} {:>12} {:>14}",
            "pid", "before KiB", "after KiB", "end KiB", "KiB/session"
        );
        for m in r.memory {
            let _ = writeln!(
                s,
                "  {:>8} {:>12} {:>12} {:>12} {:>14.2}",
                m.pid, m.rss_before_kib, m.rss_after_kib, m.rss_end_kib, m.kib_per_session
            );
        }
        if let Some(t) = r.total_kib_per_session {
            let _ = writeln!(s, "  {:>8} {:>51.2}", "total", t);
        }
    }
    s
}

/// One held session: a check now, then one per interval until `end`.
#[allow(clippy::too_many_arguments)]
async fn session(
    mut s: TcpStream,
    io: Duration,
    interval: Duration,
    phase: Duration,
    end: Instant,
    tally: &Tally,
    first_round: &Semaphore,
    counters: &Counters,
) -> Result<(), String> {
    let mut seq = 0u8;
    let first = check(&mut s, seq, io).await;
    first_round.add_permits(1);
    record(first.is_ok(), tally, counters);
    if let Err(e) = first {
        tally.first_check_failed.fetch_add(1, Ordering::Relaxed);
        return Err(format!("first check: {e}"));
    }
    let mut next = Instant::now() + phase;
    loop {
        next += interval;
        if next >= end {
            // Hold until the end without another check.
            tokio::time::sleep_until(end.into()).await;
            return Ok(());
        }
        tokio::time::sleep_until(next.into()).await;
        seq = seq.wrapping_add(1);
        let r = check(&mut s, seq, io).await;
        record(r.is_ok(), tally, counters);
        r.map_err(|e| format!("check {seq}: {e}"))?;
    }
}

fn record(ok: bool, tally: &Tally, counters: &Counters) {
    if ok {
        tally.checks_ok.fetch_add(1, Ordering::Relaxed);
        counters.add_ops(1);
    } else {
        tally.checks_failed.fetch_add(1, Ordering::Relaxed);
        counters.add_error();
    }
}

async fn check(s: &mut TcpStream, seq: u8, io: Duration) -> Result<(), BenchError> {
    write_all_within(s, &[seq], io, "sending a check byte").await?;
    let mut b = [0u8; 1];
    read_exact_within(s, &mut b, io, "reading the echoed check byte").await?;
    if b[0] != seq {
        return Err(BenchError::Protocol(format!(
            "echoed check byte {:#04x}, expected {seq:#04x}",
            b[0]
        )));
    }
    Ok(())
}

//! `bench burst`: time to first byte for bursts of new connections. Each round opens every burst
//! size's connections at once (all connect calls issued together), sends `--size` bytes on each
//! and times, per connection, the connect call to the first echoed byte; the whole echo is then
//! checked and the connection closed. Rounds are `--gap-ms` apart so a tunnel's pools can refill
//! between bursts, as between real users' bursts. Reports per burst size: percentiles of the time
//! to first byte and of the whole burst (its slowest connection), and failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use super::pattern::Pattern;
use super::stats::{nanos, new_histogram, Percentiles};
use super::{read_exact_within, read_within, write_all_within, BenchError, Ctx, Outcome};

#[derive(Args, Debug, Clone)]
pub struct BurstArgs {
    /// Burst sizes (connections opened at once), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,16,64",
        value_name = "N,..."
    )]
    pub bursts: Vec<usize>,
    /// Rounds per burst size.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub rounds: usize,
    /// Bytes echoed on each connection (at least 1).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub size: usize,
    /// Pause between bursts.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub gap_ms: u64,
}

#[derive(Serialize)]
struct BurstReport {
    connections: usize,
    rounds: usize,
    successes: u64,
    failures: u64,
    ttfb_us: Percentiles,
    burst_us: Percentiles,
    first_error: Option<String>,
}

/// One connection of a burst: its time to first byte.
async fn one(ctx: Arc<Ctx>, request: Arc<[u8]>) -> Result<Duration, BenchError> {
    let started = Instant::now();
    let mut s = ctx.connect().await?;
    write_all_within(&mut s, &request, ctx.io_timeout, "sending the request").await?;
    let mut got = vec![0u8; request.len()];
    let first = read_within(
        &mut s,
        &mut got,
        ctx.io_timeout,
        "waiting for the first byte",
    )
    .await?;
    if first == 0 {
        return Err(BenchError::Closed {
            what: "waiting for the first byte",
        });
    }
    let ttfb = started.elapsed();
    read_exact_within(
        &mut s,
        &mut got[first..],
        ctx.io_timeout,
        "reading the echo",
    )
    .await?;
    if *got != *request {
        return Err(BenchError::Protocol(
            "the echo differs from the request".into(),
        ));
    }
    let _ = s.shutdown().await;
    Ok(ttfb)
}

pub(crate) async fn run(ctx: &Ctx, args: &BurstArgs) -> Result<Outcome, BenchError> {
    if args.size == 0 || args.rounds == 0 || args.bursts.contains(&0) {
        return Err(BenchError::InvalidArgument(
            "--size, --rounds and every burst size must be at least 1".into(),
        ));
    }
    let ctx = Arc::new(ctx.clone());
    let request: Arc<[u8]> = Pattern::new(args.size).slice(0, 0, args.size).into();
    let gap = Duration::from_millis(args.gap_ms);
    let mut reports = Vec::new();
    let mut table = format!(
        "burst {} ({} B echoed, {} rounds, {} ms apart)\n{:>6} {:>8} {:>11} {:>11} {:>11} {:>11} {:>11}\n",
        ctx.target, args.size, args.rounds, args.gap_ms,
        "conns", "failed", "ttfb p50", "ttfb p90", "ttfb p99", "ttfb max", "burst p50"
    );
    let mut failures = Vec::new();
    for &n in &args.bursts {
        let (mut ttfb, mut bursts) = (new_histogram(), new_histogram());
        let (mut ok, mut failed, mut first_error) = (0u64, 0u64, None);
        for _ in 0..args.rounds {
            let mut set = JoinSet::new();
            for _ in 0..n {
                set.spawn(one(ctx.clone(), request.clone()));
            }
            let mut slowest = Duration::ZERO;
            while let Some(joined) = set.join_next().await {
                match joined
                    .map_err(|e| BenchError::Protocol(format!("a connection task failed: {e}")))
                    .and_then(|r| r)
                {
                    Ok(t) => {
                        ok += 1;
                        slowest = slowest.max(t);
                        let _ = ttfb.record(nanos(t));
                    }
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            let _ = bursts.record(nanos(slowest));
            tokio::time::sleep(gap).await;
        }
        let report = BurstReport {
            connections: n,
            rounds: args.rounds,
            successes: ok,
            failures: failed,
            ttfb_us: Percentiles::of(&ttfb),
            burst_us: Percentiles::of(&bursts),
            first_error,
        };
        let ms = |us: f64| format!("{:.2}ms", us / 1e3);
        table += &format!(
            "{:>6} {:>8} {:>11} {:>11} {:>11} {:>11} {:>11}\n",
            n,
            failed,
            ms(report.ttfb_us.p50),
            ms(report.ttfb_us.p90),
            ms(report.ttfb_us.p99),
            ms(report.ttfb_us.max),
            ms(report.burst_us.p50),
        );
        if let Some(e) = &report.first_error {
            failures.push(format!(
                "{failed} connections of bursts of {n} failed, first: {e}"
            ));
        }
        reports.push(report);
    }
    Ok(Outcome {
        json: serde_json::json!({
            "mode": "burst",
            "target": ctx.target,
            "size": args.size,
            "gap_ms": args.gap_ms,
            "bursts": reports,
        }),
        table,
        failures,
    })
}

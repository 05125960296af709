//! `bench latency`: request/response round trips of `--size` bytes over C connections, each
//! response checked against the request. Closed loop (each connection sends its next request as
//! soon as the previous answer arrives) or open loop at `--rate` requests per second spread over
//! the connections, where latency is measured from the *intended* send time, so a stall is counted
//! against every request it delayed (coordinated-omission correction, as wrk2 does); the
//! uncorrected service time is reported beside it. The open loop spins for the last 2 ms
//! before each send (tokio timers have millisecond resolution), so it costs CPU on the generator.
//! Loops allocate nothing: buffers are allocated once per connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpStream;

use super::pattern::Pattern;
use super::plot::Series;
use super::progress::{self, Counters};
use super::stats::{nanos, percentile_table, Percentiles, Shards};
use super::{
    maybe_plot, read_exact_within, write_all_within, BenchError, Ctx, LatencyArgs, Outcome,
};

#[derive(Serialize)]
struct Report<'a> {
    mode: &'static str,
    target: &'a str,
    connections: usize,
    size: usize,
    #[serde(rename = "loop")]
    loop_kind: &'static str,
    rate: Option<f64>,
    secs: f64,
    requests: u64,
    requests_per_sec: f64,
    errors: usize,
    /// Microseconds; from the intended send time in open loop.
    latency_us: Percentiles,
    /// Open loop only: from the actual send time.
    uncorrected_us: Option<Percentiles>,
    ok: bool,
    failures: &'a [String],
}

struct Shared {
    pattern: Pattern,
    corrected: Shards,
    uncorrected: Shards,
    counters: Arc<Counters>,
}

pub(crate) async fn run(ctx: &Ctx, args: &LatencyArgs) -> Result<Outcome, BenchError> {
    if args.size == 0 {
        return Err(BenchError::InvalidArgument(
            "--size must be at least 1".into(),
        ));
    }
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(BenchError::InvalidArgument(
                "--rate must be positive".into(),
            ));
        }
    }
    let n = ctx.connections.unwrap_or(1);
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        socks.push(ctx.connect().await?);
    }
    let shards = n.min(64);
    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared {
        pattern: Pattern::new(args.size),
        corrected: Shards::new(shards),
        uncorrected: Shards::new(shards),
        counters: counters.clone(),
    });
    let progress = progress::spawn(counters.clone(), Some("req"), ctx.progress);
    let start = Instant::now();
    let record_from = start + Duration::from_secs_f64(args.warmup_secs.max(0.0));
    let end = record_from + ctx.duration;
    let mut tasks = Vec::with_capacity(n);
    for (c, s) in socks.into_iter().enumerate() {
        let shared = shared.clone();
        let (size, io) = (args.size, ctx.io_timeout);
        let schedule = args.rate.map(|rate| {
            // Each connection gets rate/n, staggered so connections do not send in lockstep.
            let interval = Duration::from_secs_f64(n as f64 / rate);
            (interval, start + interval.mul_f64(c as f64 / n as f64))
        });
        tasks.push(tokio::spawn(async move {
            connection(s, c, size, io, schedule, record_from, end, &shared).await
        }));
    }
    let mut requests = 0u64;
    let mut failures = Vec::new();
    for (c, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok((count, None)) => requests += count,
            Ok((count, Some(e))) => {
                requests += count;
                failures.push(format!("connection {c}: {e}"));
            }
            Err(e) => failures.push(format!("connection {c}: task failed: {e}")),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(p) = progress {
        p.abort();
    }
    let corrected = shared.corrected.merged();
    let uncorrected = shared.uncorrected.merged();
    let measured_secs = ctx.duration.as_secs_f64();
    let recorded = corrected.len();
    let report = Report {
        mode: "latency",
        target: &ctx.target,
        connections: n,
        size: args.size,
        loop_kind: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        rate: args.rate,
        secs,
        requests,
        requests_per_sec: recorded as f64 / measured_secs,
        errors: failures.len(),
        latency_us: Percentiles::of(&corrected),
        uncorrected_us: args.rate.map(|_| Percentiles::of(&uncorrected)),
        ok: failures.is_empty(),
        failures: &failures,
    };
    let mut series = vec![Series {
        name: if args.rate.is_some() {
            "corrected (from intended send)"
        } else {
            "round trip"
        },
        histogram: &corrected,
    }];
    if args.rate.is_some() {
        series.push(Series {
            name: "uncorrected (from actual send)",
            histogram: &uncorrected,
        });
    }
    maybe_plot(
        ctx,
        &format!(
            "{} B request/response, {} connections, {} loop{} — {}",
            args.size,
            n,
            report.loop_kind,
            args.rate
                .map(|r| format!(" at {r} req/s"))
                .unwrap_or_default(),
            ctx.target
        ),
        &series,
    )?;
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
        "latency to {}: {} B, {} connections, {} loop{}, {:.2} s",
        r.target,
        r.size,
        r.connections,
        r.loop_kind,
        r.rate.map(|x| format!(" at {x} req/s")).unwrap_or_default(),
        r.secs
    );
    let _ = writeln!(
        s,
        "  {} requests recorded, {:.0} req/s, {} errors",
        r.latency_us.count, r.requests_per_sec, r.errors
    );
    match &r.uncorrected_us {
        None => percentile_table(&mut s, &[("round trip", &r.latency_us)]),
        Some(u) => percentile_table(&mut s, &[("corrected", &r.latency_us), ("uncorrected", u)]),
    }
    s
}

/// One connection's loop. Returns the requests completed and the error that ended it, if any.
#[allow(clippy::too_many_arguments)]
async fn connection(
    mut s: TcpStream,
    c: usize,
    size: usize,
    io: Duration,
    schedule: Option<(Duration, Instant)>,
    record_from: Instant,
    end: Instant,
    shared: &Shared,
) -> (u64, Option<String>) {
    let mut buf = vec![0u8; size];
    let mut i = 0u64;
    let id = c as u64;
    loop {
        let intended = match schedule {
            Some((interval, first)) => {
                let t = first + interval.mul_f64(i as f64);
                if t >= end {
                    break;
                }
                wait_until(t).await;
                Some(t)
            }
            None => None,
        };
        let sent_at = Instant::now();
        if sent_at >= end {
            break;
        }
        let req = shared.pattern.slice(id, i.wrapping_mul(size as u64), size);
        if let Err(e) = write_all_within(&mut s, req, io, "sending a request").await {
            return (i, Some(e.to_string()));
        }
        if let Err(e) = read_exact_within(&mut s, &mut buf, io, "reading a response").await {
            return (i, Some(e.to_string()));
        }
        let done = Instant::now();
        if buf != req {
            let at = buf.iter().zip(req).position(|(a, b)| a != b).unwrap_or(0);
            return (
                i,
                Some(format!(
                    "response {i} differs from its request at byte {at} (expected {:#04x}, got {:#04x})",
                    req[at], buf[at]
                )),
            );
        }
        let from = intended.unwrap_or(sent_at);
        if from >= record_from {
            shared.corrected.record(c, nanos(done - from));
            if intended.is_some() {
                shared.uncorrected.record(c, nanos(done - sent_at));
            }
        }
        shared.counters.add_ops(1);
        i += 1;
    }
    (i, None)
}

/// Waits until `t`: a timer for all but the last two milliseconds (tokio's timer may fire up to
/// about 2 ms late), then yields in a loop.
async fn wait_until(t: Instant) {
    let now = Instant::now();
    if t > now + Duration::from_millis(3) {
        tokio::time::sleep_until((t - Duration::from_millis(2)).into()).await;
    }
    while Instant::now() < t {
        tokio::task::yield_now().await;
    }
}

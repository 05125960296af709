//! `bench connect`: a new connection per request. C workers each loop: connect, echo `--size`
//! bytes (checked), close; until the duration ends. Reports connections per second, setup latency
//! (connect call to established) and request latency (connect call to echo received), and counts
//! successes and failures by kind. A failure does not stop the run; the run fails only if nothing
//! succeeded. Closing is a plain close (FIN), so the client side collects TIME_WAIT sockets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use super::pattern::Pattern;
use super::plot::Series;
use super::progress::{self, Counters};
use super::stats::{nanos, percentile_table, Percentiles, Shards};
use super::{
    connect, maybe_plot, read_exact_within, write_all_within, BenchError, ConnectArgs, Ctx, Outcome,
};

#[derive(Default)]
struct Tally {
    successes: AtomicU64,
    connect_failures: AtomicU64,
    request_failures: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn fail(&self, which: &AtomicU64, e: &BenchError) {
        which.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

#[derive(Serialize)]
struct Report<'a> {
    mode: &'static str,
    target: &'a str,
    connections: usize,
    size: usize,
    secs: f64,
    attempts: u64,
    successes: u64,
    failures: u64,
    connect_failures: u64,
    request_failures: u64,
    connections_per_sec: f64,
    setup_us: Percentiles,
    request_us: Percentiles,
    first_error: Option<String>,
    ok: bool,
}

pub(crate) async fn run(ctx: &Ctx, args: &ConnectArgs) -> Result<Outcome, BenchError> {
    let n = ctx.connections.unwrap_or(4);
    let shards = n.min(64);
    let setup = Arc::new(Shards::new(shards));
    let request = Arc::new(Shards::new(shards));
    let tally = Arc::new(Tally::default());
    let pattern = Arc::new(Pattern::new(args.size.max(1)));
    let counters = Arc::new(Counters::default());
    let progress = progress::spawn(counters.clone(), Some("conn"), ctx.progress);
    let start = Instant::now();
    let end = start + ctx.duration;
    let mut tasks = Vec::with_capacity(n);
    for c in 0..n {
        let (setup, request, tally, pattern, counters) = (
            setup.clone(),
            request.clone(),
            tally.clone(),
            pattern.clone(),
            counters.clone(),
        );
        let (addr, ct, io, size) = (ctx.addr, ctx.connect_timeout, ctx.io_timeout, args.size);
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; size];
            let mut i = 0u64;
            while Instant::now() < end {
                let t0 = Instant::now();
                let mut s = match connect(addr, ct).await {
                    Ok(s) => s,
                    Err(e) => {
                        tally.fail(&tally.connect_failures, &e);
                        counters.add_error();
                        continue;
                    }
                };
                let t1 = Instant::now();
                if size > 0 {
                    let req = pattern.slice(c as u64, i.wrapping_mul(size as u64), size);
                    i += 1;
                    let r = async {
                        write_all_within(&mut s, req, io, "sending a request").await?;
                        read_exact_within(&mut s, &mut buf, io, "reading a response").await?;
                        if buf != req {
                            return Err(BenchError::Protocol(
                                "the response differs from the request".into(),
                            ));
                        }
                        Ok(())
                    }
                    .await;
                    if let Err(e) = r {
                        tally.fail(&tally.request_failures, &e);
                        counters.add_error();
                        continue;
                    }
                }
                let t2 = Instant::now();
                drop(s);
                setup.record(c, nanos(t1 - t0));
                request.record(c, nanos(t2 - t0));
                tally.successes.fetch_add(1, Ordering::Relaxed);
                counters.add_ops(1);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(p) = progress {
        p.abort();
    }
    let (setup_h, request_h) = (setup.merged(), request.merged());
    let successes = tally.successes.load(Ordering::Relaxed);
    let connect_failures = tally.connect_failures.load(Ordering::Relaxed);
    let request_failures = tally.request_failures.load(Ordering::Relaxed);
    let first_error = tally
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut failures = Vec::new();
    if successes == 0 {
        failures.push(format!(
            "no connection succeeded: {}",
            first_error.as_deref().unwrap_or("no attempt finished")
        ));
    }
    let report = Report {
        mode: "connect",
        target: &ctx.target,
        connections: n,
        size: args.size,
        secs,
        attempts: successes + connect_failures + request_failures,
        successes,
        failures: connect_failures + request_failures,
        connect_failures,
        request_failures,
        connections_per_sec: successes as f64 / secs,
        setup_us: Percentiles::of(&setup_h),
        request_us: Percentiles::of(&request_h),
        first_error,
        ok: failures.is_empty(),
    };
    maybe_plot(
        ctx,
        &format!(
            "connection per request ({} B echo), {} concurrent — {}",
            args.size, n, ctx.target
        ),
        &[
            Series {
                name: "setup (connect)",
                histogram: &setup_h,
            },
            Series {
                name: "request (connect + echo)",
                histogram: &request_h,
            },
        ],
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
        "connect to {}: {} concurrent, {} B echo, {:.2} s",
        r.target, r.connections, r.size, r.secs
    );
    let _ = writeln!(
        s,
        "  {} attempts, {} ok, {} failed ({} connect, {} request), {:.0} conn/s",
        r.attempts,
        r.successes,
        r.failures,
        r.connect_failures,
        r.request_failures,
        r.connections_per_sec
    );
    if let Some(e) = &r.first_error {
        let _ = writeln!(s, "  first error: {e}");
    }
    percentile_table(
        &mut s,
        &[("setup", &r.setup_us), ("request", &r.request_us)],
    );
    s
}

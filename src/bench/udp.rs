//! `bench udp`: UDP request/response over C flows (one socket each, so one tunnel flow each),
//! closed loop: each flow sends a `--size`-byte datagram carrying its sequence number and waits
//! up to `--loss-timeout-ms` for the answer, which must be the request echoed. No answer in time
//! is a loss; an answer to an earlier request arriving later is counted late and ignored.
//! Reports requests per second (total and per flow: the slowest and fastest flow), round-trip
//! percentiles and loss. `bench udp-echo` is the UDP echo backend for it.
//!
//! It speaks plain UDP only and starts nothing (`perf/udp` starts the tunnels).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::UdpSocket;

use super::progress::{self, Counters};
use super::stats::{nanos, percentile_table, Percentiles, Shards};
use super::{BenchError, CommonArgs, Ctx, EchoArgs, Outcome, UdpArgs};

#[derive(Serialize)]
struct Report<'a> {
    mode: &'static str,
    target: &'a str,
    flows: usize,
    size: usize,
    secs: f64,
    sent: u64,
    received: u64,
    lost: u64,
    late: u64,
    loss_ratio: f64,
    requests_per_sec: f64,
    /// Answered requests per second (after the warmup) of the slowest and of the fastest flow.
    flow_min_requests_per_sec: f64,
    flow_max_requests_per_sec: f64,
    latency_us: Percentiles,
    ok: bool,
    failures: &'a [String],
}

/// What one flow counted.
#[derive(Default)]
struct FlowCount {
    sent: u64,
    received: u64,
    lost: u64,
    late: u64,
    /// Answers to requests sent after the warmup (what the rates count).
    recorded: u64,
}

pub(crate) async fn run(ctx: &Ctx, args: &UdpArgs) -> Result<Outcome, BenchError> {
    if !(8..=65_507).contains(&args.size) {
        return Err(BenchError::InvalidArgument(
            "--size must be within 8..=65507 (the first 8 bytes carry the sequence number)".into(),
        ));
    }
    let n = ctx.connections.unwrap_or(1);
    let mut socks = Vec::with_capacity(n);
    for _ in 0..n {
        let bind = if ctx.addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let s = UdpSocket::bind(bind)
            .await
            .map_err(|source| BenchError::Io {
                what: "binding a UDP socket",
                source,
            })?;
        s.connect(ctx.addr)
            .await
            .map_err(|source| BenchError::Connect {
                addr: ctx.addr,
                source,
            })?;
        socks.push(s);
    }
    let counters = Arc::new(Counters::default());
    let latency = Arc::new(Shards::new(n.min(64)));
    let progress = progress::spawn(counters.clone(), Some("req"), ctx.progress);
    let start = Instant::now();
    let record_from = start + Duration::from_secs_f64(args.warmup_secs.max(0.0));
    let end = record_from + ctx.duration;
    let loss_timeout = Duration::from_millis(args.loss_timeout_ms.max(1));
    let mut tasks = Vec::with_capacity(n);
    for (c, s) in socks.into_iter().enumerate() {
        let (latency, counters, size) = (latency.clone(), counters.clone(), args.size);
        tasks.push(tokio::spawn(async move {
            flow(
                s,
                c,
                size,
                loss_timeout,
                record_from,
                end,
                &latency,
                &counters,
            )
            .await
        }));
    }
    let mut total = FlowCount::default();
    let mut per_flow = Vec::with_capacity(n);
    let mut failures = Vec::new();
    for (c, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(Ok(count)) => {
                per_flow.push(count.recorded as f64);
                total.sent += count.sent;
                total.received += count.received;
                total.lost += count.lost;
                total.late += count.late;
            }
            Ok(Err(e)) => failures.push(format!("flow {c}: {e}")),
            Err(e) => failures.push(format!("flow {c}: task failed: {e}")),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(p) = progress {
        p.abort();
    }
    let histogram = latency.merged();
    let measured_secs = ctx.duration.as_secs_f64();
    let per_sec = |answered: f64| answered / measured_secs.max(1e-9);
    let slowest = per_flow.iter().copied().reduce(f64::min).unwrap_or(0.0);
    let fastest = per_flow.iter().copied().reduce(f64::max).unwrap_or(0.0);
    let report = Report {
        mode: "udp",
        target: &ctx.target,
        flows: n,
        size: args.size,
        secs,
        sent: total.sent,
        received: total.received,
        lost: total.lost,
        late: total.late,
        loss_ratio: if total.sent == 0 {
            0.0
        } else {
            total.lost as f64 / total.sent as f64
        },
        requests_per_sec: histogram.len() as f64 / measured_secs,
        flow_min_requests_per_sec: per_sec(slowest),
        flow_max_requests_per_sec: per_sec(fastest),
        latency_us: Percentiles::of(&histogram),
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
        "udp to {}: {} B, {} flows, closed loop, {:.2} s",
        r.target, r.size, r.flows, r.secs
    );
    let _ = writeln!(
        s,
        "  {:.0} req/s (flows {:.0} to {:.0}), {} sent, {} answered, {} lost ({:.3}%), {} late",
        r.requests_per_sec,
        r.flow_min_requests_per_sec,
        r.flow_max_requests_per_sec,
        r.sent,
        r.received,
        r.lost,
        r.loss_ratio * 100.0,
        r.late
    );
    percentile_table(&mut s, &[("round trip", &r.latency_us)]);
    s
}

/// One flow's closed loop.
#[allow(clippy::too_many_arguments)]
async fn flow(
    s: UdpSocket,
    c: usize,
    size: usize,
    loss_timeout: Duration,
    record_from: Instant,
    end: Instant,
    latency: &Shards,
    counters: &Counters,
) -> Result<FlowCount, BenchError> {
    let mut req = vec![0u8; size];
    for (i, b) in req.iter_mut().enumerate().skip(8) {
        *b = (i as u8).wrapping_add(c as u8);
    }
    let mut buf = vec![0u8; 65_536];
    let mut count = FlowCount::default();
    let mut seq = 0u64;
    while Instant::now() < end {
        seq += 1;
        req[..8].copy_from_slice(&seq.to_be_bytes());
        let sent_at = Instant::now();
        s.send(&req).await.map_err(|source| BenchError::Io {
            what: "sending a datagram",
            source,
        })?;
        count.sent += 1;
        let deadline = sent_at + loss_timeout;
        loop {
            let got = tokio::time::timeout_at(deadline.into(), s.recv(&mut buf)).await;
            let n = match got {
                Err(_) => {
                    count.lost += 1;
                    break;
                }
                // ICMP unreachable (nothing listens yet): that request is lost.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    count.lost += 1;
                    tokio::time::sleep_until(deadline.into()).await;
                    break;
                }
                Ok(Err(source)) => {
                    return Err(BenchError::Io {
                        what: "receiving a datagram",
                        source,
                    })
                }
                Ok(Ok(n)) => n,
            };
            let answer = &buf[..n];
            let answered_seq = answer
                .get(..8)
                .map(|b| u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
            if answered_seq != Some(seq) {
                count.late += 1;
                continue;
            }
            if answer != &req[..] {
                return Err(BenchError::Protocol(format!(
                    "answer {seq} differs from its request ({n} bytes)"
                )));
            }
            let done = Instant::now();
            count.received += 1;
            if sent_at >= record_from {
                latency.record(c, nanos(done - sent_at));
                count.recorded += 1;
            }
            counters.add_ops(1);
            break;
        }
    }
    Ok(count)
}

/// `bench udp-echo`: answers every datagram with itself, until `--duration-secs` (or killed).
pub(crate) async fn echo(common: &CommonArgs, args: &EchoArgs) -> Result<Outcome, BenchError> {
    let socket = UdpSocket::bind(&args.listen)
        .await
        .map_err(|source| BenchError::Listen {
            addr: args.listen.clone(),
            source,
        })?;
    let local = socket.local_addr().map_err(|source| BenchError::Io {
        what: "reading the listening address",
        source,
    })?;
    if common.json {
        println!("{}", serde_json::json!({ "listening": local.to_string() }));
    } else {
        println!("listening on {local}");
    }
    let echo_loop = async {
        let mut buf = vec![0u8; 65_536];
        loop {
            if let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..n], from).await;
            }
        }
    };
    match common.duration_secs {
        Some(d) => {
            let _ = tokio::time::timeout(Duration::from_secs_f64(d), echo_loop).await;
        }
        None => echo_loop.await,
    }
    Ok(Outcome {
        json: serde_json::json!({ "mode": "udp-echo", "listen": local.to_string() }),
        table: format!("udp-echo {local}: stopped\n"),
        failures: Vec::new(),
    })
}

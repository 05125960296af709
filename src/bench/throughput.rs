//! `bench throughput`: N parallel streams of pattern bytes for a duration or a byte count.
//! Echo mode verifies every byte that comes back; one-way mode sends to a `bench sink`, half-closes
//! and reads the sink's verdict (its count of verified bytes and the first wrong byte, if any).
//! All streams are connected before the clock starts. A wrong byte fails the run and names the
//! stream and offset. It does not retry or reconnect a failed stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::pattern::Pattern;
use super::progress::{self, Counters};
use super::sink::{self, Verdict, VERDICT_LEN};
use super::{
    gbits, read_exact_within, read_within, write_all_within, BenchError, Ctx, Outcome, StreamMode,
    ThroughputArgs,
};

/// When a stream stops sending.
#[derive(Debug, Clone, Copy)]
enum Limit {
    Bytes(u64),
    Until(Instant),
}

#[derive(Debug, Clone, Serialize)]
struct StreamResult {
    stream: u64,
    /// Bytes written.
    sent: u64,
    /// Bytes verified (echoed back, or counted by the sink).
    verified: u64,
    secs: f64,
    gbit_per_sec: f64,
    error: Option<String>,
}

#[derive(Serialize)]
struct Report<'a> {
    mode: &'static str,
    stream_mode: &'static str,
    target: &'a str,
    connections: usize,
    chunk: usize,
    secs: f64,
    total_sent: u64,
    total_verified: u64,
    total_gbit_per_sec: f64,
    streams: &'a [StreamResult],
    ok: bool,
    failures: &'a [String],
}

pub(crate) async fn run(ctx: &Ctx, args: &ThroughputArgs) -> Result<Outcome, BenchError> {
    if args.chunk == 0 || args.chunk > 64 * 1024 * 1024 {
        return Err(BenchError::InvalidArgument(
            "--chunk must be between 1 and 64 MiB".into(),
        ));
    }
    let n = ctx.connections.unwrap_or(1);
    let pattern = Arc::new(Pattern::new(args.chunk));
    let mut socks = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = ctx.connect().await?;
        if args.mode == StreamMode::OneWay {
            write_all_within(
                &mut s,
                &sink::header(i as u64),
                ctx.io_timeout,
                "sending the stream header",
            )
            .await?;
        }
        socks.push(s);
    }
    let counters = Arc::new(Counters::default());
    let progress = progress::spawn(counters.clone(), None, ctx.progress);
    let start = Instant::now();
    let limit = match args.bytes {
        Some(b) => Limit::Bytes(b),
        None => Limit::Until(start + ctx.duration),
    };
    let mut tasks = Vec::with_capacity(n);
    for (i, s) in socks.into_iter().enumerate() {
        let (pattern, counters, io) = (pattern.clone(), counters.clone(), ctx.io_timeout);
        let (mode, chunk) = (args.mode, args.chunk);
        tasks.push(tokio::spawn(async move {
            let id = i as u64;
            let sent = AtomicU64::new(0);
            let st = Stream {
                id,
                limit,
                pattern: &pattern,
                chunk,
                io,
                counters: &counters,
                sent: &sent,
            };
            let r = match mode {
                StreamMode::Echo => echo_stream(s, &st).await,
                StreamMode::OneWay => one_way_stream(s, &st).await,
            };
            let secs = start.elapsed().as_secs_f64();
            let sent = sent.load(Ordering::Relaxed);
            match r {
                Ok(verified) => StreamResult {
                    stream: id,
                    sent,
                    verified,
                    secs,
                    gbit_per_sec: gbits(verified, secs),
                    error: None,
                },
                Err(e) => StreamResult {
                    stream: id,
                    sent,
                    verified: 0,
                    secs,
                    gbit_per_sec: 0.0,
                    error: Some(e),
                },
            }
        }));
    }
    let mut results = Vec::with_capacity(n);
    for (i, t) in tasks.into_iter().enumerate() {
        results.push(t.await.unwrap_or_else(|e| StreamResult {
            stream: i as u64,
            sent: 0,
            verified: 0,
            secs: 0.0,
            gbit_per_sec: 0.0,
            error: Some(format!("stream task failed: {e}")),
        }));
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(p) = progress {
        p.abort();
    }
    let failures: Vec<String> = results
        .iter()
        .filter_map(|r| {
            r.error
                .as_ref()
                .map(|e| format!("stream {}: {e}", r.stream))
        })
        .collect();
    let total_sent: u64 = results.iter().map(|r| r.sent).sum();
    let total_verified: u64 = results.iter().map(|r| r.verified).sum();
    let report = Report {
        mode: "throughput",
        stream_mode: match args.mode {
            StreamMode::Echo => "echo",
            StreamMode::OneWay => "one-way",
        },
        target: &ctx.target,
        connections: n,
        chunk: args.chunk,
        secs,
        total_sent,
        total_verified,
        total_gbit_per_sec: gbits(total_verified, secs),
        streams: &results,
        ok: failures.is_empty(),
        failures: &failures,
    };
    let table = table(&report);
    Ok(Outcome {
        json: serde_json::to_value(&report).unwrap_or_default(),
        table,
        failures,
    })
}

fn table(r: &Report<'_>) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "throughput ({}) to {}: {} streams, {:.2} s, chunk {} B",
        r.stream_mode, r.target, r.connections, r.secs, r.chunk
    );
    let _ = writeln!(
        s,
        "  {:>6} {:>16} {:>16} {:>10}  status",
        "stream", "sent B", "verified B", "Gbit/s"
    );
    for st in r.streams {
        let _ = writeln!(
            s,
            "  {:>6} {:>16} {:>16} {:>10.3}  {}",
            st.stream,
            st.sent,
            st.verified,
            st.gbit_per_sec,
            st.error.as_deref().unwrap_or("ok")
        );
    }
    let _ = writeln!(
        s,
        "  {:>6} {:>16} {:>16} {:>10.3}  {}",
        "total",
        r.total_sent,
        r.total_verified,
        r.total_gbit_per_sec,
        if r.ok { "ok" } else { "FAILED" }
    );
    s
}

/// What a stream task needs.
struct Stream<'a> {
    id: u64,
    limit: Limit,
    pattern: &'a Pattern,
    chunk: usize,
    io: Duration,
    counters: &'a Counters,
    /// Bytes written so far, kept current so a failed stream still reports them.
    sent: &'a AtomicU64,
}

/// Writes pattern bytes until the limit; returns the count. `count_progress` says whether written
/// bytes feed the progress line (in echo mode the echoed bytes do instead).
async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    st: &Stream<'_>,
    count_progress: bool,
) -> Result<u64, BenchError> {
    let mut off = 0u64;
    loop {
        let len = match st.limit {
            Limit::Bytes(b) if off >= b => break,
            Limit::Bytes(b) => (b - off).min(st.chunk as u64) as usize,
            Limit::Until(t) if Instant::now() >= t => break,
            Limit::Until(_) => st.chunk,
        };
        let buf = st.pattern.slice(st.id, off, len);
        let k = match tokio::time::timeout(st.io, w.write(buf)).await {
            Err(_) => {
                return Err(BenchError::Timeout {
                    what: "writing stream data",
                    ms: u64::try_from(st.io.as_millis()).unwrap_or(u64::MAX),
                })
            }
            Ok(Err(source)) => {
                return Err(BenchError::Io {
                    what: "writing stream data",
                    source,
                })
            }
            Ok(Ok(0)) => {
                return Err(BenchError::Closed {
                    what: "writing stream data",
                })
            }
            Ok(Ok(k)) => k,
        };
        off += k as u64;
        st.sent.store(off, Ordering::Relaxed);
        if count_progress {
            st.counters.add_bytes(k as u64);
        }
    }
    Ok(off)
}

async fn echo_stream(mut s: TcpStream, st: &Stream<'_>) -> Result<u64, String> {
    let (mut r, mut w) = s.split();
    let total = AtomicU64::new(u64::MAX);
    let done = Notify::new();
    let writer = async {
        let n = send(&mut w, st, false).await.map_err(|e| e.to_string())?;
        total.store(n, Ordering::SeqCst);
        done.notify_one();
        // Half-close: an echo server that forwards EOF closes its side too.
        let _ = w.shutdown().await;
        Ok::<u64, String>(n)
    };
    let reader = async {
        let mut buf = vec![0u8; st.chunk];
        let mut off = 0u64;
        let mut writer_done = false;
        loop {
            if writer_done && off >= total.load(Ordering::SeqCst) {
                return Ok::<u64, String>(off);
            }
            tokio::select! {
                biased;
                _ = done.notified(), if !writer_done => writer_done = true,
                n = read_within(&mut r, &mut buf, st.io, "reading echoed data") => {
                    let n = n.map_err(|e| format!("{e} after {off} echoed bytes"))?;
                    if n == 0 {
                        return Err(format!(
                            "the target closed the stream after echoing {off} of {} bytes",
                            st.sent.load(Ordering::Relaxed)
                        ));
                    }
                    if let Err(m) = st.pattern.check(st.id, off, &buf[..n]) {
                        return Err(format!(
                            "corrupted byte at offset {} (expected {:#04x}, got {:#04x})",
                            m.offset, m.expected, m.got
                        ));
                    }
                    off += n as u64;
                    st.counters.add_bytes(n as u64);
                }
            }
        }
    };
    let (_, verified) = tokio::try_join!(writer, reader)?;
    Ok(verified)
}

async fn one_way_stream(mut s: TcpStream, st: &Stream<'_>) -> Result<u64, String> {
    let n = send(&mut s, st, true).await.map_err(|e| e.to_string())?;
    s.shutdown()
        .await
        .map_err(|e| format!("half-closing the stream: {e}"))?;
    let mut v = [0u8; VERDICT_LEN];
    read_exact_within(&mut s, &mut v, st.io, "reading the sink's verdict")
        .await
        .map_err(|e| e.to_string())?;
    let verdict = Verdict::from_bytes(&v).map_err(|e| e.to_string())?;
    if let Some(m) = verdict.mismatch {
        return Err(format!(
            "the sink found a corrupted byte at offset {} (expected {:#04x}, got {:#04x})",
            m.offset, m.expected, m.got
        ));
    }
    if verdict.received != n {
        return Err(format!(
            "the sink verified {} bytes but {n} were sent",
            verdict.received
        ));
    }
    Ok(verdict.received)
}

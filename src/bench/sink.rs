//! `bench sink`: the far end of one-way throughput. Each connection opens with a 16-byte header
//! ([`HEADER_MAGIC`] + stream id, u64 big-endian); the sink then reads until EOF, checking every
//! byte against that stream's pattern, and answers one [`Verdict`] before closing. After the first
//! wrong byte it keeps counting but stops checking. It serves any number of streams, until
//! `--duration-secs` (if given) or until killed; it is not an echo server and sends nothing else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::pattern::{Mismatch, Pattern};
use super::{read_exact_within, read_within, BenchError, CommonArgs, Outcome, SinkArgs};

/// First 8 bytes a one-way stream sends.
pub const HEADER_MAGIC: [u8; 8] = *b"RTBSINK1";
/// Header length: magic + stream id.
pub const HEADER_LEN: usize = 16;
/// First 4 bytes of a verdict.
pub const VERDICT_MAGIC: [u8; 4] = *b"RTBV";
/// Verdict length.
pub const VERDICT_LEN: usize = 24;
/// Read buffer size, and longest pattern window checked at once.
pub const CHUNK: usize = 256 * 1024;

/// What the sink found on one stream: `magic(4) status(1) expected(1) got(1) 0(1)
/// received(u64 BE) bad_offset(u64 BE)`. Status 0 is all bytes verified, 1 a wrong byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Pattern bytes received (the header excluded).
    pub received: u64,
    /// The first wrong byte, if any.
    #[serde(skip)]
    pub mismatch: Option<Mismatch>,
}

impl Verdict {
    pub fn to_bytes(&self) -> [u8; VERDICT_LEN] {
        let mut b = [0u8; VERDICT_LEN];
        b[..4].copy_from_slice(&VERDICT_MAGIC);
        if let Some(m) = self.mismatch {
            b[4] = 1;
            b[5] = m.expected;
            b[6] = m.got;
            b[16..24].copy_from_slice(&m.offset.to_be_bytes());
        }
        b[8..16].copy_from_slice(&self.received.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; VERDICT_LEN]) -> Result<Self, BenchError> {
        if b[..4] != VERDICT_MAGIC || b[4] > 1 {
            return Err(BenchError::Protocol(
                "the target's answer is not a sink verdict: is the target `ringtun bench sink`?"
                    .into(),
            ));
        }
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(x)
        };
        Ok(Self {
            received: u64_at(8),
            mismatch: (b[4] == 1).then(|| Mismatch {
                offset: u64_at(16),
                expected: b[5],
                got: b[6],
            }),
        })
    }
}

/// The header a one-way stream starts with.
pub fn header(stream: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&HEADER_MAGIC);
    h[8..].copy_from_slice(&stream.to_be_bytes());
    h
}

#[derive(Debug, Default)]
struct Totals {
    streams: AtomicU64,
    bytes: AtomicU64,
    corrupt: AtomicU64,
    errors: AtomicU64,
}

#[derive(Serialize)]
struct StreamLine<'a> {
    stream: u64,
    peer: &'a str,
    received: u64,
    ok: bool,
    bad_offset: Option<u64>,
}

#[derive(Serialize)]
struct SinkReport {
    mode: &'static str,
    listen: String,
    streams: u64,
    bytes: u64,
    corrupt_streams: u64,
    errors: u64,
}

/// Serves one-way streams until the duration (if any) ends.
pub(crate) async fn run(common: &CommonArgs, args: &SinkArgs) -> Result<Outcome, BenchError> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|source| BenchError::Listen {
            addr: args.listen.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| BenchError::Io {
        what: "reading the listening address",
        source,
    })?;
    // The first stdout line, so scripts and tests can learn a port-0 address.
    if common.json {
        println!("{}", serde_json::json!({ "listening": local.to_string() }));
    } else {
        println!("listening on {local}");
    }
    let io_timeout = Duration::from_millis(common.io_timeout_ms.max(1));
    let pattern = Arc::new(Pattern::new(CHUNK));
    let totals = Arc::new(Totals::default());
    let json = common.json;
    let deadline = common
        .duration_secs
        .map(|d| tokio::time::Instant::now() + Duration::from_secs_f64(d));
    let accept_loop = async {
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("sink: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (pattern, totals) = (pattern.clone(), totals.clone());
            tokio::spawn(async move {
                let peer = peer.to_string();
                match serve(sock, &pattern, io_timeout).await {
                    Ok((stream, verdict)) => {
                        totals.streams.fetch_add(1, Ordering::Relaxed);
                        totals.bytes.fetch_add(verdict.received, Ordering::Relaxed);
                        if verdict.mismatch.is_some() {
                            totals.corrupt.fetch_add(1, Ordering::Relaxed);
                        }
                        report_stream(json, stream, &peer, &verdict);
                    }
                    Err(e) => {
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("sink: stream from {peer}: {e}");
                    }
                }
            });
        }
    };
    match deadline {
        Some(d) => {
            let _ = tokio::time::timeout_at(d, accept_loop).await;
        }
        None => accept_loop.await,
    }
    let report = SinkReport {
        mode: "sink",
        listen: local.to_string(),
        streams: totals.streams.load(Ordering::Relaxed),
        bytes: totals.bytes.load(Ordering::Relaxed),
        corrupt_streams: totals.corrupt.load(Ordering::Relaxed),
        errors: totals.errors.load(Ordering::Relaxed),
    };
    let table = format!(
        "sink {}: {} streams, {} bytes, {} corrupt, {} errors\n",
        report.listen, report.streams, report.bytes, report.corrupt_streams, report.errors
    );
    let mut failures = Vec::new();
    if report.corrupt_streams > 0 {
        failures.push(format!(
            "{} streams carried corrupted bytes",
            report.corrupt_streams
        ));
    }
    Ok(Outcome {
        json: serde_json::to_value(&report).unwrap_or_default(),
        table,
        failures,
    })
}

fn report_stream(json: bool, stream: u64, peer: &str, v: &Verdict) {
    if json {
        let line = StreamLine {
            stream,
            peer,
            received: v.received,
            ok: v.mismatch.is_none(),
            bad_offset: v.mismatch.map(|m| m.offset),
        };
        println!("{}", serde_json::to_string(&line).unwrap_or_default());
    }
    match v.mismatch {
        None => eprintln!("sink: stream {stream} from {peer}: {} bytes verified", v.received),
        Some(m) => eprintln!(
            "sink: stream {stream} from {peer}: CORRUPT at offset {} (expected {:#04x}, got {:#04x}); {} bytes received",
            m.offset, m.expected, m.got, v.received
        ),
    }
}

/// Reads one stream to EOF and answers its verdict.
async fn serve(
    mut sock: TcpStream,
    pattern: &Pattern,
    io_timeout: Duration,
) -> Result<(u64, Verdict), BenchError> {
    let _ = sock.set_nodelay(true);
    let mut head = [0u8; HEADER_LEN];
    read_exact_within(
        &mut sock,
        &mut head,
        io_timeout,
        "reading the stream header",
    )
    .await?;
    if head[..8] != HEADER_MAGIC {
        return Err(BenchError::Protocol(
            "not a `bench throughput --mode one-way` stream (bad header)".into(),
        ));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&head[8..]);
    let stream = u64::from_be_bytes(id);
    let mut buf = vec![0u8; CHUNK];
    let mut verdict = Verdict {
        received: 0,
        mismatch: None,
    };
    loop {
        let n = read_within(&mut sock, &mut buf, io_timeout, "reading stream data").await?;
        if n == 0 {
            break;
        }
        if verdict.mismatch.is_none() {
            if let Err(m) = pattern.check(stream, verdict.received, &buf[..n]) {
                verdict.mismatch = Some(m);
            }
        }
        verdict.received += n as u64;
    }
    super::write_all_within(
        &mut sock,
        &verdict.to_bytes(),
        io_timeout,
        "writing the verdict",
    )
    .await?;
    let _ = sock.shutdown().await;
    Ok((stream, verdict))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_round_trips() {
        for v in [
            Verdict {
                received: 123_456_789,
                mismatch: None,
            },
            Verdict {
                received: 5,
                mismatch: Some(Mismatch {
                    offset: 4,
                    expected: 0xAA,
                    got: 0x55,
                }),
            },
        ] {
            assert_eq!(Verdict::from_bytes(&v.to_bytes()).unwrap(), v);
        }
        assert!(Verdict::from_bytes(&[0u8; VERDICT_LEN]).is_err());
    }
}

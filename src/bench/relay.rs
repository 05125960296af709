//! `bench relay`: a TCP relay that puts a slow link between two ends — an agent and its server, in
//! tests and in `perf/slowlink` — by holding every byte for a fixed one-way delay in each direction.
//!
//! Each accepted connection is relayed to `--target`. Bytes read on one side are stamped and
//! written to the other once `delay` has passed, in order; a read EOF is passed on (a write
//! shutdown) after the same delay, so half-close crosses the link as it would. A new connection
//! also pays its TCP handshake: nothing crosses before the first round trip (SYN, SYN-ACK) is over,
//! so a connection opened through the relay costs what it would over the real link. Bytes waiting
//! for their time are bounded per direction (`MAX_IN_FLIGHT_BYTES`): a full direction stops
//! reading, as a link's window would. It must not inspect or change the bytes.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{BenchError, CommonArgs, Outcome};

/// Largest chunk read at once.
const CHUNK_BYTES: usize = 16 * 1024;
/// Chunks waiting for their time per direction (at most `CHUNK_BYTES` each: 4 MiB).
const MAX_IN_FLIGHT_CHUNKS: usize = 256;
/// Bytes one direction may hold while they wait (a link's window).
pub const MAX_IN_FLIGHT_BYTES: usize = CHUNK_BYTES * MAX_IN_FLIGHT_CHUNKS;

#[derive(Args, Debug, Clone)]
pub struct RelayArgs {
    /// Address to listen on; the bound address is printed as the first line on stdout.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// Delay added to each direction (so a round trip gains twice this).
    #[arg(long, default_value_t = 25, value_name = "MS")]
    pub delay_ms: u64,
}

/// A delaying relay to one target; `spawn` starts it on the current tokio runtime.
#[derive(Debug, Clone)]
pub struct Relay {
    target: SocketAddr,
    one_way_delay: Duration,
}

impl Relay {
    /// A relay to `target` that adds nothing yet.
    pub fn to(target: SocketAddr) -> Self {
        Self {
            target,
            one_way_delay: Duration::ZERO,
        }
    }

    /// Adds `delay` to each direction.
    pub fn one_way_delay(mut self, delay: Duration) -> Self {
        self.one_way_delay = delay;
        self
    }

    /// Listens on `listen` and relays every connection until the returned handle is aborted (or
    /// the runtime ends). Returns the bound address.
    pub async fn spawn(
        self,
        listen: &str,
    ) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), BenchError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| BenchError::Listen {
                addr: listen.to_string(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| BenchError::Io {
            what: "reading the listening address",
            source,
        })?;
        Ok((local, tokio::spawn(self.accept_loop(listener))))
    }

    async fn accept_loop(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((client, _)) => {
                    tokio::spawn(self.clone().relay(client));
                }
                Err(e) => {
                    // Out of descriptors or a transient error: wait a moment instead of spinning.
                    eprintln!("relay: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn relay(self, client: TcpStream) {
        let accepted = Instant::now();
        let server = match TcpStream::connect(self.target).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("relay: connecting to {} failed: {e}", self.target);
                return;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        // The handshake's round trip: SYN and SYN-ACK each cross the link once.
        let open_at = accepted + self.one_way_delay * 2;
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let up = one_way(client_read, server_write, open_at, self.one_way_delay);
        let down = one_way(server_read, client_write, open_at, self.one_way_delay);
        tokio::join!(up, down);
    }
}

/// What a direction carries: bytes, or the EOF, each due at its time.
enum Segment {
    Bytes(Vec<u8>),
    Eof,
}

/// Moves one direction: a reader stamps chunks, a writer sends each when it is due. An error on
/// either end drops what is queued (the connection is gone).
async fn one_way(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    open_at: Instant,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Segment)>(MAX_IN_FLIGHT_CHUNKS);
    let reader = async move {
        loop {
            let mut buf = vec![0u8; CHUNK_BYTES];
            let segment = match from.read(&mut buf).await {
                Ok(0) | Err(_) => Segment::Eof,
                Ok(n) => {
                    buf.truncate(n);
                    Segment::Bytes(buf)
                }
            };
            let eof = matches!(segment, Segment::Eof);
            let due = Instant::now().max(open_at) + delay;
            if tx.send((due, segment)).await.is_err() || eof {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, segment)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            match segment {
                Segment::Bytes(bytes) => {
                    if to.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Segment::Eof => {
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    };
    tokio::join!(reader, writer);
}

pub(crate) async fn run(common: &CommonArgs, args: &RelayArgs) -> Result<Outcome, BenchError> {
    let target = common
        .target
        .as_deref()
        .ok_or(BenchError::MissingTarget("relay"))?;
    let target = super::resolve(target)?;
    let relay = Relay::to(target).one_way_delay(Duration::from_millis(args.delay_ms));
    let (local, task) = relay.spawn(&args.listen).await?;
    if common.json {
        println!("{}", serde_json::json!({ "listening": local.to_string() }));
    } else {
        println!("listening on {local}");
    }
    match common.duration_secs {
        Some(d) => {
            let _ = tokio::time::timeout(Duration::from_secs_f64(d), task).await;
        }
        None => {
            let _ = task.await;
        }
    }
    Ok(Outcome {
        json: serde_json::json!({
            "mode": "relay",
            "listen": local.to_string(),
            "target": target.to_string(),
            "delay_ms": args.delay_ms,
        }),
        table: format!("relay {local} -> {target}: stopped\n"),
        failures: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn bytes_and_eof_cross_in_order_after_the_delay() {
        let echo = echo_server().await;
        let delay = Duration::from_millis(20);
        let (addr, _task) = Relay::to(echo)
            .one_way_delay(delay)
            .spawn("127.0.0.1:0")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = s.split();
        let write = async {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let read = r.read_to_end(&mut got);
        let (_, n) = tokio::join!(write, read);
        n.unwrap();
        assert_eq!(got, sent, "the echo came back whole and in order");
        // Handshake round trip + one round trip for the data, at least.
        assert!(started.elapsed() >= delay * 4, "{:?}", started.elapsed());
    }
}

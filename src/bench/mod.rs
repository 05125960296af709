//! `ringtun bench`: a load generator and latency profiler for any TCP service, reached directly or
//! through a tunnel. Modes: `throughput` (byte streams, every byte verified), `latency`
//! (request/response percentiles, closed or open loop), `connect` (a connection per request),
//! `idle` (many held sessions and the memory they cost a process), `burst` (time to first byte
//! of bursts of new connections), a slow link (`relay`: a delay each way), two far ends: `sink` (for
//! one-way throughput) and `echo` (a backend to measure against), `udp` (UDP request/response:
//! rate, latency percentiles, loss) with its far end `udp-echo`, and `swarm` (many emulated
//! agents against a ringtun server, the only mode that speaks the tunnel protocol).
//!
//! The other modes speak plain TCP (or UDP) only. None starts tunnels or other processes (`perf/compare`
//! and `perf/swarm` do). Every wait is bounded by `--connect-timeout-ms` or
//! `--io-timeout-ms`, so a dead target ends a run with an error instead of a hang. Results go to
//! stdout (a table, or one JSON document with `--json`); progress goes to stderr.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

mod burst;
mod connect;
mod echo;
mod error;
mod idle;
mod latency;
pub mod pattern;
pub mod plot;
mod progress;
pub mod relay;
pub mod sink;
pub mod stats;
mod swarm;
mod throughput;
mod udp;

pub use burst::BurstArgs;
pub use error::BenchError;
pub use relay::RelayArgs;
pub use swarm::SwarmArgs;

/// `ringtun bench`: load generator and latency profiler.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: Mode,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Flags every mode accepts (before or after the mode name).
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Address to load, `host:port` (a tunnel frontend or the service itself).
    #[arg(long, global = true, value_name = "ADDR")]
    pub target: Option<String>,
    /// How long to run [default: 10; sink: until killed]. Fractions allowed.
    #[arg(long, global = true, value_name = "SECS")]
    pub duration_secs: Option<f64>,
    /// Parallel connections [default: throughput 1, latency 1, connect 4, idle 100].
    #[arg(long, global = true, value_name = "N")]
    pub connections: Option<usize>,
    /// Print the result as one JSON document on stdout, and nothing else on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Write a latency percentile plot (SVG) to this file.
    #[arg(long, global = true, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Load generator threads [default: number of cores].
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    /// Give up on a connection attempt after this long.
    #[arg(long, global = true, default_value_t = 3000, value_name = "MS")]
    pub connect_timeout_ms: u64,
    /// Give up on a read or write that makes no progress for this long.
    #[arg(long, global = true, default_value_t = 5000, value_name = "MS")]
    pub io_timeout_ms: u64,
    /// Do not print the progress line on stderr.
    #[arg(long, global = true)]
    pub no_progress: bool,
}

/// What to measure.
#[derive(Subcommand, Debug, Clone)]
pub enum Mode {
    /// N parallel byte streams; Gbit/s per stream and total. Every byte is verified.
    Throughput(ThroughputArgs),
    /// Request/response latency percentiles over C connections (closed loop, or open loop at --rate).
    Latency(LatencyArgs),
    /// A new connection per request: connections per second, setup and request latency.
    Connect(ConnectArgs),
    /// Time to first byte for bursts of new connections opened at once (1, 16, 64 by default).
    Burst(BurstArgs),
    /// Hold N connections open, check they stay alive, report memory of --pids per session.
    Idle(IdleArgs),
    /// Far end of `throughput --mode one-way`: verifies the pattern and answers a verdict per stream.
    Sink(SinkArgs),
    /// A TCP echo backend for the other modes (passes EOF on as a write shutdown).
    Echo(EchoArgs),
    /// A TCP relay to --target adding a delay each way: a slow link for tests and perf/slowlink.
    Relay(RelayArgs),
    /// UDP request/response over C flows: req/s (total and per flow), latency percentiles, loss.
    Udp(UdpArgs),
    /// A UDP echo backend for `udp`.
    UdpEcho(EchoArgs),
    /// N emulated ringtun agents against a server: registration time, handshakes/s, server CPU/RSS.
    Swarm(Box<SwarmArgs>),
}

/// Whether throughput bytes come back.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    /// Client → target only; the target must be `ringtun bench sink` (directly or through a tunnel).
    OneWay,
    /// The target echoes; the client verifies what comes back.
    Echo,
}

#[derive(Args, Debug, Clone)]
pub struct ThroughputArgs {
    /// one-way (to a `bench sink`) or echo (to any echo server).
    #[arg(long, value_enum, default_value_t = StreamMode::Echo)]
    pub mode: StreamMode,
    /// Send this many bytes per stream instead of running for --duration-secs.
    #[arg(long, value_name = "BYTES")]
    pub bytes: Option<u64>,
    /// Size of each write and read buffer.
    #[arg(long, default_value_t = 128 * 1024, value_name = "BYTES")]
    pub chunk: usize,
}

#[derive(Args, Debug, Clone)]
pub struct LatencyArgs {
    /// Request (and echoed response) size.
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub size: usize,
    /// Open loop: total requests per second, sent on schedule; latency is measured from the
    /// intended send time (coordinated-omission correction). Without it: closed loop.
    #[arg(long, value_name = "REQ_PER_SEC")]
    pub rate: Option<f64>,
    /// Run this long before recording.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub warmup_secs: f64,
}

#[derive(Args, Debug, Clone)]
pub struct UdpArgs {
    /// Request (and echoed answer) size; the first 8 bytes carry the sequence number.
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub size: usize,
    /// A request not answered within this long is counted lost (and the flow sends the next).
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub loss_timeout_ms: u64,
    /// Run this long before recording.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub warmup_secs: f64,
}

#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Bytes echoed on each connection before it is closed (0: connect and close only).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub size: usize,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Processes whose resident memory (VmRSS) is reported before and after, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "PID,...")]
    pub pids: Vec<u32>,
    /// How often each connection is checked (one byte echoed).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub interval_ms: u64,
}

#[derive(Args, Debug, Clone)]
pub struct SinkArgs {
    /// Address to listen on; the bound address is printed as the first line on stdout.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
}

#[derive(Args, Debug, Clone)]
pub struct EchoArgs {
    /// Address to listen on; the bound address is printed as the first line on stdout.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
}

/// The result of a completed run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The machine-readable result (`--json`).
    pub json: serde_json::Value,
    /// The human-readable result table.
    pub table: String,
    /// What went wrong in an otherwise completed run (corrupted bytes, dead sessions).
    pub failures: Vec<String>,
}

/// Runs a bench and prints its result (table or JSON) on stdout. Returns
/// [`BenchError::Failed`] after printing when the run found failures.
pub fn run_cli(args: &BenchArgs) -> Result<(), BenchError> {
    use std::io::Write;
    let outcome = run(args)?;
    let mut stdout = std::io::stdout().lock();
    if args.common.json {
        writeln!(stdout, "{}", outcome.json).map_err(BenchError::Output)?;
    } else {
        write!(stdout, "{}", outcome.table).map_err(BenchError::Output)?;
    }
    stdout.flush().map_err(BenchError::Output)?;
    if outcome.failures.is_empty() {
        Ok(())
    } else {
        for f in &outcome.failures {
            eprintln!("FAILED: {f}");
        }
        Err(BenchError::Failed(summarize(&outcome.failures)))
    }
}

fn summarize(failures: &[String]) -> String {
    match failures {
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
        [] => String::new(),
    }
}

/// Runs a bench on its own tokio runtime and returns the result without printing it.
pub fn run(args: &BenchArgs) -> Result<Outcome, BenchError> {
    let threads = match args.common.threads {
        Some(0) => {
            return Err(BenchError::InvalidArgument(
                "--threads must be at least 1".into(),
            ))
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if let Some(d) = args.common.duration_secs {
        if !(d.is_finite() && d > 0.0) {
            return Err(BenchError::InvalidArgument(
                "--duration-secs must be a positive number".into(),
            ));
        }
    }
    raise_fd_limit();
    if let Mode::Swarm(a) = &args.mode {
        return swarm::run(&args.common, a);
    }
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(BenchError::Runtime)?;
    let common = &args.common;
    rt.block_on(async {
        match &args.mode {
            Mode::Throughput(a) => throughput::run(&Ctx::new(common, "throughput")?, a).await,
            Mode::Latency(a) => latency::run(&Ctx::new(common, "latency")?, a).await,
            Mode::Connect(a) => connect::run(&Ctx::new(common, "connect")?, a).await,
            Mode::Burst(a) => burst::run(&Ctx::new(common, "burst")?, a).await,
            Mode::Idle(a) => idle::run(&Ctx::new(common, "idle")?, a).await,
            Mode::Sink(a) => sink::run(common, a).await,
            Mode::Echo(a) => echo::run(common, a).await,
            Mode::Relay(a) => relay::run(common, a).await,
            Mode::Udp(a) => udp::run(&Ctx::new(common, "udp")?, a).await,
            Mode::UdpEcho(a) => udp::echo(common, a).await,
            // Dispatched above: it runs on runtimes of its own.
            Mode::Swarm(a) => Err(BenchError::InvalidArgument(format!(
                "swarm of {} agents cannot run on the shared runtime",
                a.agents
            ))),
        }
    })
}

/// Settings shared by the client modes, resolved once.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub target: String,
    pub addr: SocketAddr,
    pub duration: Duration,
    pub connections: Option<usize>,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub plot: Option<PathBuf>,
    pub progress: bool,
}

impl Ctx {
    fn new(common: &CommonArgs, mode: &'static str) -> Result<Self, BenchError> {
        let target = common
            .target
            .clone()
            .ok_or(BenchError::MissingTarget(mode))?;
        let addr = resolve(&target)?;
        if common.connections == Some(0) {
            return Err(BenchError::InvalidArgument(
                "--connections must be at least 1".into(),
            ));
        }
        Ok(Self {
            target,
            addr,
            duration: Duration::from_secs_f64(common.duration_secs.unwrap_or(10.0)),
            connections: common.connections,
            connect_timeout: Duration::from_millis(common.connect_timeout_ms.max(1)),
            io_timeout: Duration::from_millis(common.io_timeout_ms.max(1)),
            plot: common.plot.clone(),
            progress: !common.no_progress,
        })
    }

    /// Connects to the target within the connect timeout, with `TCP_NODELAY` set.
    pub async fn connect(&self) -> Result<TcpStream, BenchError> {
        connect(self.addr, self.connect_timeout).await
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn resolve(target: &str) -> Result<SocketAddr, BenchError> {
    target
        .to_socket_addrs()
        .map_err(|e| BenchError::Resolve {
            addr: target.to_string(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| BenchError::Resolve {
            addr: target.to_string(),
            reason: "no addresses".into(),
        })
}

/// Connects within `limit`, with `TCP_NODELAY` set.
pub(crate) async fn connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, BenchError> {
    let stream = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| BenchError::ConnectTimeout {
            addr,
            ms: millis(limit),
        })?
        .map_err(|source| BenchError::Connect { addr, source })?;
    stream.set_nodelay(true).map_err(|source| BenchError::Io {
        what: "setting TCP_NODELAY",
        source,
    })?;
    Ok(stream)
}

/// `write_all` bounded by `limit`.
pub(crate) async fn write_all_within<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &[u8],
    limit: Duration,
    what: &'static str,
) -> Result<(), BenchError> {
    match tokio::time::timeout(limit, w.write_all(buf)).await {
        Err(_) => Err(BenchError::Timeout {
            what,
            ms: millis(limit),
        }),
        Ok(Err(source)) => Err(BenchError::Io { what, source }),
        Ok(Ok(())) => Ok(()),
    }
}

/// `read_exact` bounded by `limit`; EOF is [`BenchError::Closed`].
pub(crate) async fn read_exact_within<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    limit: Duration,
    what: &'static str,
) -> Result<(), BenchError> {
    match tokio::time::timeout(limit, r.read_exact(buf)).await {
        Err(_) => Err(BenchError::Timeout {
            what,
            ms: millis(limit),
        }),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(BenchError::Closed { what })
        }
        Ok(Err(source)) => Err(BenchError::Io { what, source }),
        Ok(Ok(_)) => Ok(()),
    }
}

/// `read` bounded by `limit`; returns 0 at EOF.
pub(crate) async fn read_within<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    limit: Duration,
    what: &'static str,
) -> Result<usize, BenchError> {
    match tokio::time::timeout(limit, r.read(buf)).await {
        Err(_) => Err(BenchError::Timeout {
            what,
            ms: millis(limit),
        }),
        Ok(Err(source)) => Err(BenchError::Io { what, source }),
        Ok(Ok(n)) => Ok(n),
    }
}

/// Raises the soft open-files limit to the hard limit, so `idle` and `connect` can hold many
/// sockets. Failure is ignored: the run then reports "too many open files" itself.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Gbit/s of `bytes` over `secs`.
pub(crate) fn gbits(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        bytes as f64 * 8.0 / secs / 1e9
    }
}

/// Writes the plot if `--plot` was given.
pub(crate) fn maybe_plot(
    ctx: &Ctx,
    title: &str,
    series: &[plot::Series<'_>],
) -> Result<(), BenchError> {
    match &ctx.plot {
        Some(path) => plot::write(path, title, series),
        None => Ok(()),
    }
}

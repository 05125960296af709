//! The `ringtun` command line. `anyhow` is used here and nowhere else.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "ringtun",
    version,
    about = "Reverse tunnel for cloud-edge networks"
)]
struct Cli {
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a tunnel server (cloud side).
    Server {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run an agent (edge side).
    Agent {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a server or agent config file.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Convert a MOSN config's `tunnel_agent` extend block into a ringtun agent config (stdout).
    ImportMosn {
        /// The MOSN config file (or a file holding just the extend block).
        file: PathBuf,
        /// `host:port` of the hosting listener's backend, when the MOSN file does not say.
        #[arg(long)]
        backend: Option<String>,
    },
    /// Server, agent and echo backend in one process on loopback, with traffic and a report.
    Demo {
        /// Exit after the traffic report instead of waiting for Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Ping-pong sessions to send.
        #[arg(long, default_value_t = 200)]
        sessions: usize,
    },
    /// Say whether the io_uring backend can be used here (exit 0) or why not (exit 1).
    UringProbe,
    /// Run a TCP echo backend.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Load generator and latency profiler (throughput, latency, connect, idle, sink, echo, swarm).
    Bench(ringtun::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, matches!(cli.command, Command::Demo { .. }));
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringtun: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, quiet_default: bool) {
    let default = if quiet_default { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Check { config } => {
            let kind = match ringtun::config::load_any(&config)? {
                ringtun::config::AnyConfig::Server(_) => "server",
                ringtun::config::AnyConfig::Agent(_) => "agent",
            };
            println!("{}: valid {kind} config", config.display());
            Ok(())
        }
        Command::ImportMosn { file, backend } => {
            let imported = ringtun::config::mosn::import_mosn(&file, backend.as_deref())?;
            for note in &imported.notes {
                eprintln!("note: {note}");
            }
            println!("{}", serde_json::to_string_pretty(&imported.config)?);
            Ok(())
        }
        Command::Server { config: path } => {
            // Handlers first: a signal during start must not kill the process.
            let mut signals = Signals::install()?;
            let config = ringtun::config::ServerConfig::load(&path)?;
            let server =
                ringtun::server::ServerHandle::start(config).context("server failed to start")?;
            server.set_config_path(&path);
            loop {
                match signals.next()? {
                    Signal::Hangup => match server.reload_file(&path) {
                        Ok(summary) => tracing::info!(%summary, "SIGHUP: configuration reloaded"),
                        Err(e) => tracing::warn!(
                            "SIGHUP: configuration reload refused, keeping the running one: {e}"
                        ),
                    },
                    Signal::Stop(name) => {
                        let grace_ms = server
                            .config()
                            .map_or(ringtun::config::defaults::DRAIN_TIMEOUT_MS, |c| {
                                c.drain_timeout_ms
                            });
                        tracing::info!(signal = name, grace_ms, "draining server");
                        server.drain(grace_ms);
                        return Ok(());
                    }
                }
            }
        }
        Command::Agent { config: path } => {
            let mut signals = Signals::install()?;
            let config = ringtun::config::AgentConfig::load(&path)?;
            let agent =
                ringtun::agent::AgentHandle::start(config).context("agent failed to start")?;
            loop {
                match signals.next()? {
                    Signal::Hangup => {
                        match ringtun::config::AgentConfig::load(&path) {
                            Ok(new) => {
                                tracing::info!(weight = new.weight, "SIGHUP: config re-read; weight applied (other changes but TLS files need a restart)");
                                agent.set_weight(new.weight);
                            }
                            Err(e) => {
                                tracing::warn!(
                                    "SIGHUP: config refused, keeping the running one: {e}"
                                )
                            }
                        }
                        match agent.reload_tls() {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(
                                tunnels = n,
                                "SIGHUP: TLS files re-read; new connections use them"
                            ),
                            Err(e) => tracing::warn!(
                                "SIGHUP: TLS files refused, the running ones keep serving: {e}"
                            ),
                        }
                    }
                    Signal::Stop(name) => {
                        tracing::info!(signal = name, "stopping agent gracefully");
                        agent.shutdown_graceful();
                        return Ok(());
                    }
                }
            }
        }
        Command::Echo { listen } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                println!("echo listening on {}", listener.local_addr()?);
                tokio::select! {
                    _ = ringtun::echo::serve(listener) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                anyhow::Ok(())
            })
        }
        Command::Demo { once, sessions } => demo(once, sessions),
        Command::UringProbe => match ringtun::rt::uring::probe() {
            Ok(()) => {
                println!("io_uring: available");
                Ok(())
            }
            Err(why) => anyhow::bail!("io_uring: unavailable: {why}"),
        },
        Command::Bench(args) => Ok(ringtun::bench::run_cli(&args)?),
    }
}

fn demo(once: bool, sessions: usize) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    writeln!(
        out,
        "ringtun demo: server + agent + echo backend on loopback"
    )?;
    let demo = ringtun::demo::start(&mut out)?;
    writeln!(
        out,
        "traffic        {sessions} sessions x 10 round trips of 64 bytes, then one 8 MiB echo ..."
    )?;
    let report = ringtun::demo::traffic(demo.frontend, sessions, 10)?;
    let counters = demo.server.counters();
    writeln!(
        out,
        "result         {} sessions, {} round trips, {} bytes each way, all bytes verified",
        report.sessions, report.round_trips, report.bytes_each_way
    )?;
    writeln!(
        out,
        "latency        64-byte round trip through the tunnel: p50 {} us, p99 {} us, max {} us",
        report.rtt_p50_us, report.rtt_p99_us, report.rtt_max_us
    )?;
    writeln!(
        out,
        "bulk           8 MiB echo at {:.0} MiB/s",
        report.bulk_mib_per_s
    )?;
    writeln!(
        out,
        "server         sessions started {}, ended {}, pool exhausted {}, bytes to agent {}, from agent {}",
        counters.sessions_started_total,
        counters.sessions_ended_total,
        counters.pool_exhausted_total,
        counters.bytes_to_agent_total,
        counters.bytes_from_agent_total
    )?;
    if once {
        demo.agent.shutdown();
        demo.server.shutdown();
        return Ok(());
    }
    let port = demo.frontend.port();
    writeln!(out, "\nfrontend       {}", demo.frontend)?;
    writeln!(out, "try it         nc 127.0.0.1 {port}   (type a line; the edge echo backend answers through the tunnel)")?;
    writeln!(out, "               Ctrl-C to stop")?;
    out.flush()?;
    wait_for_signal()?;
    let c = demo.server.counters();
    writeln!(
        out,
        "\nstopping: {} sessions served in total",
        c.sessions_started_total
    )?;
    demo.agent.shutdown();
    demo.server.shutdown();
    Ok(())
}

/// Blocks until SIGINT or SIGTERM; returns its name.
fn wait_for_signal() -> anyhow::Result<&'static str> {
    let mut signals = Signals::install()?;
    loop {
        if let Signal::Stop(name) = signals.next()? {
            return Ok(name);
        }
    }
}

/// A signal the process acts on.
enum Signal {
    /// SIGINT or SIGTERM: stop gracefully.
    Stop(&'static str),
    /// SIGHUP: re-read configuration.
    Hangup,
}

/// SIGINT, SIGTERM and SIGHUP, installed once, waited for on a small runtime of their own.
struct Signals {
    runtime: tokio::runtime::Runtime,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let _guard = runtime.enter();
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            runtime,
        })
    }

    /// Blocks until the next signal.
    fn next(&mut self) -> anyhow::Result<Signal> {
        let Self {
            runtime,
            int,
            term,
            hup,
        } = self;
        Ok(runtime.block_on(async {
            tokio::select! {
                _ = int.recv() => Signal::Stop("SIGINT"),
                _ = term.recv() => Signal::Stop("SIGTERM"),
                _ = hup.recv() => Signal::Hangup,
            }
        }))
    }
}

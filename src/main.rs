//! The `ringtun` command line. `anyhow` is used here and nowhere else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ringtun",
    version,
    about = "Reverse tunnel for cloud-edge networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a server or agent config file.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Load generator and latency profiler for any TCP service (through a tunnel or not).
    Bench(ringtun::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringtun: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { config } => {
            let kind = match ringtun::config::load_any(&config)? {
                ringtun::config::AnyConfig::Server(_) => "server",
                ringtun::config::AnyConfig::Agent(_) => "agent",
            };
            println!("{}: valid {kind} config", config.display());
            Ok(())
        }
        Command::Bench(args) => Ok(ringtun::bench::run_cli(&args)?),
    }
}

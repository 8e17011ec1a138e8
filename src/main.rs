//! The `swapstats` binary: one executable, a subcommand per role.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use swapstats::config::Settings;
use swapstats::telemetry::Role;

mod roles;

/// Real-time token statistics for DEX swaps.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (between built-in defaults and SWAPSTATS__* env).
    #[arg(long, global = true, env = "SWAPSTATS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Generator + all shards + HTTP/WS in one process, no external services (default).
    Standalone,
    /// Consume one Kafka partition, persist to Redis, serve its tokens.
    Shard,
    /// Answer /stats, /healthz and /ws for the whole cluster.
    Router,
    /// Write generated swaps to Kafka.
    Produce {
        /// Stop after this many swaps (default: generator.count, 0 = never).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print the effective configuration as JSON (fails on unknown keys or bad values).
    Config,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swapstats: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    let command = cli.command.unwrap_or(Command::Standalone);
    if let Command::Config = command {
        println!("{}", serde_json::to_string_pretty(&settings)?);
        return Ok(());
    }
    if let Command::Produce { count: Some(count) } = command {
        settings.generator.count = count;
    }
    let (role, partition) = match command {
        Command::Standalone | Command::Config => (Role::Standalone, None),
        Command::Shard => (
            Role::Shard,
            roles::shard::resolve_partition(&settings, swapstats::telemetry::pod_name().as_deref())
                .ok(),
        ),
        Command::Router => (Role::Router, None),
        Command::Produce { .. } => (Role::Producer, None),
    };
    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    runtime.block_on(async move {
        // Inside the runtime: the OTLP exporter's gRPC channel runs on it.
        let telemetry =
            swapstats::telemetry::init(&settings, role, partition).context("telemetry")?;
        let result = match command {
            Command::Standalone => roles::standalone::run(settings).await,
            Command::Shard => roles::shard::run(settings).await,
            Command::Router => roles::router::run(settings).await,
            Command::Produce { .. } => roles::produce::run(settings).await,
            Command::Config => Ok(()),
        };
        // Roles return on SIGINT/SIGTERM (or when done): flush spans before exit.
        telemetry.shutdown().await;
        result
    })
}

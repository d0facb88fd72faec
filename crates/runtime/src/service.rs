//! The common `main` of every service binary: parse the command line, load the
//! configuration (exit 64 listing every bad key), start logging, install the shutdown
//! signal handlers and run.

use std::fmt::Display;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, EX_CONFIG};
use crate::{shutdown, telemetry};

/// The command line every service accepts.
#[derive(Parser)]
#[command(
    version,
    about = "A mailflow service; see README.md for the configuration."
)]
struct Cli {
    /// The configuration file (`mailflow.toml`); every key can also be set with
    /// `MAILFLOW_<SECTION>__<KEY>`.
    #[arg(long, short, env = "MAILFLOW_CONFIG")]
    config: Option<PathBuf>,
}

/// Runs a service's `run(config, shutdown)` as the process's main function.
pub async fn main<F, Fut, E>(run: F) -> ExitCode
where
    F: FnOnce(Config, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let cli = Cli::parse();
    let config = match config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EX_CONFIG as u8);
        }
    };
    telemetry::init(&config.log);
    let shutdown = shutdown::on_signal();
    match run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stopped");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

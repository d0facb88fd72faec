//! The common `main` of every service binary: parse the command line, load the
//! configuration (exit 64 listing every bad key), build the tokio runtime with the
//! configured number of worker threads, start logging, turn transparent huge pages off,
//! install the shutdown signal handlers and run.

use std::fmt::Display;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, EX_USAGE};
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

/// What a service's section says about its process.
pub struct Process {
    /// The service's name in traces (`mailflow-ingress`, ...).
    pub name: &'static str,
    /// Tokio worker threads (0: one per CPU).
    pub worker_threads: usize,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Runs a service's `run(config, shutdown)` as the process's main function; `process`
/// picks the service's process settings from its section.
pub fn main<F, Fut, E>(process: fn(&Config) -> Process, run: F) -> ExitCode
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
            return ExitCode::from(EX_USAGE as u8);
        }
    };
    let settings = process(&config);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if settings.worker_threads > 0 {
        builder.worker_threads(settings.worker_threads);
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let telemetry = match telemetry::init(&config.log, &config.trace, settings.name) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(listen) = settings.metrics_listen
            && let Err(e) = crate::metrics::install(listen)
        {
            tracing::error!(error = %e, "metrics exporter not started");
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        #[cfg(target_os = "linux")]
        if let Err(e) = no_huge_pages() {
            tracing::warn!(error = %e, "transparent huge pages stay on");
        }
        let shutdown = shutdown::on_signal();
        let code = match run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "stopped");
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
        // Flushing blocks until the exporter has sent what it holds.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        code
    })
}

/// Turns transparent huge pages off for the whole process (the flag belongs to its address
/// space, so every thread and every later mapping follows it). The services allocate with
/// mimalloc, which advises its arenas for huge pages, so memory it gave back and touched
/// again came back a huge page at a time: 5 to 10 MB more peak RSS per service under load,
/// and zeroing those pages took 1.6% of the machine's CPU in a 100 KB benchmark (0.13% with
/// ordinary pages; ARCHITECTURE.md, "Where the time goes"). Heaps of tens of megabytes gain
/// nothing measurable from huge pages.
#[cfg(target_os = "linux")]
fn no_huge_pages() -> std::io::Result<()> {
    rustix::thread::disable_transparent_huge_pages(true)?;
    Ok(())
}

//! `mailflow-relay`: the delivery service binary.

use std::path::PathBuf;

use clap::Parser;
use mailflow_runtime::{EX_CONFIG, config, shutdown, telemetry};

/// mailflow's relay.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The configuration file.
    #[arg(long, short, env = "MAILFLOW_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            std::process::exit(EX_CONFIG);
        }
    };
    telemetry::init(&config.log);
    let shutdown = shutdown::on_signal();
    mailflow_relay::run(config, shutdown).await?;
    Ok(())
}

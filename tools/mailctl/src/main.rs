//! `mailctl`: the operator's command-line tool, a thin gRPC client of the Queue,
//! Directory and Quarantine services.

#![forbid(unsafe_code)]

mod directory;
mod dkim;
mod quarantine;
mod queue;
mod status;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use directory::{AliasAction, DomainAction, UserAction};
use dkim::DkimAction;
use mailflow_proto::v1::{
    GetMessageRequest, directory_client::DirectoryClient, quarantine_client::QuarantineClient,
    queue_client::QueueClient,
};
use quarantine::QuarantineAction;
use queue::QueueAction;
use tonic::transport::Channel;

/// Operate a mailflow installation.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The Queue service (the relay's gRPC address).
    #[arg(
        long,
        env = "MAILFLOW_GRPC",
        default_value = "http://127.0.0.1:50052",
        global = true
    )]
    server: String,
    /// The Directory and Quarantine services (the policy service's gRPC address).
    #[arg(
        long,
        env = "MAILFLOW_DIRECTORY_GRPC",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    directory_server: String,
    /// Print JSON instead of tables (status, watch, queue).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a message, the state of each of its recipients and its history.
    Status {
        /// The queue id from `250 2.0.0 Ok: queued as <id>`.
        #[arg(required_unless_present_any = ["message_id", "envid"])]
        queue_id: Option<String>,
        /// Find the message by its Message-ID header instead.
        #[arg(long, conflicts_with = "queue_id")]
        message_id: Option<String>,
        /// Find the message by its DSN ENVID instead.
        #[arg(long, conflicts_with_all = ["queue_id", "message_id"])]
        envid: Option<String>,
    },
    /// Follow a message live until every recipient is in a final state.
    Watch {
        /// The queue id.
        queue_id: String,
    },
    /// The queue: list, summary, retry, cancel, suspend, resume.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Local domains.
    Domain {
        #[command(subcommand)]
        action: DomainAction,
    },
    /// Users (mailboxes) of local domains.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Aliases and catch-alls of local domains.
    Alias {
        #[command(subcommand)]
        action: AliasAction,
    },
    /// DKIM signing keys of local domains.
    Dkim {
        #[command(subcommand)]
        action: DkimAction,
    },
    /// Messages held by the scan stage.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
}

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(url.to_string())
        .with_context(|| format!("invalid server address {url:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

async fn directory_client(url: &str) -> anyhow::Result<DirectoryClient<Channel>> {
    Ok(DirectoryClient::new(channel(url).await?))
}

fn grpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Status {
            queue_id,
            message_id,
            envid,
        } => {
            let mut client = QueueClient::new(channel(&cli.server).await?);
            let status = client
                .get_message(GetMessageRequest {
                    queue_id: queue_id.unwrap_or_default(),
                    message_id: message_id.unwrap_or_default(),
                    envid: envid.unwrap_or_default(),
                })
                .await
                .map_err(grpc_error)?
                .into_inner();
            if cli.json {
                println!("{}", status::status_json(&status));
            } else {
                print!("{}", status::render_status(&status));
            }
        }
        Command::Watch { queue_id } => {
            let client = QueueClient::new(channel(&cli.server).await?);
            status::watch(client, queue_id, cli.json).await?;
        }
        Command::Queue { action } => {
            let client = QueueClient::new(channel(&cli.server).await?);
            queue::queue(client, action, cli.json).await?;
        }
        Command::Domain { action } => {
            directory::domain(directory_client(&cli.directory_server).await?, action).await?;
        }
        Command::User { action } => {
            directory::user(directory_client(&cli.directory_server).await?, action).await?;
        }
        Command::Alias { action } => {
            directory::alias(directory_client(&cli.directory_server).await?, action).await?;
        }
        Command::Dkim { action } => {
            dkim::dkim(directory_client(&cli.directory_server).await?, action).await?;
        }
        Command::Quarantine { action } => {
            let client = QuarantineClient::new(channel(&cli.directory_server).await?);
            quarantine::quarantine(client, action).await?;
        }
    }
    Ok(())
}

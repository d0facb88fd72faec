//! `mailctl`: the operator's command-line tool, a thin gRPC client of the Queue and
//! Directory services.

#![forbid(unsafe_code)]

use std::io::BufRead;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use mailflow_proto::v1::{
    AddDomainRequest, AddUserRequest, GetMessageRequest, ListDomainsRequest, ListUsersRequest,
    MessageStatus, RecipientState, directory_client::DirectoryClient, queue_client::QueueClient,
};
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
    /// The Directory service (the policy service's gRPC address).
    #[arg(
        long,
        env = "MAILFLOW_DIRECTORY_GRPC",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    directory_server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a message and the state of each of its recipients.
    Status {
        /// The queue id from `250 2.0.0 Ok: queued as <id>`.
        queue_id: String,
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
}

#[derive(Subcommand)]
enum DomainAction {
    /// Make a domain local.
    Add {
        /// The domain.
        domain: String,
    },
    /// List local domains.
    List,
}

#[derive(Subcommand)]
enum UserAction {
    /// Add a user (or set its password); the password is read from standard input.
    Add {
        /// The user's address.
        address: String,
    },
    /// List users.
    List {
        /// Only this domain's users.
        #[arg(long)]
        domain: Option<String>,
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

fn grpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Status { queue_id } => {
            let mut client = QueueClient::new(channel(&cli.server).await?);
            let status = client
                .get_message(GetMessageRequest { queue_id })
                .await
                .map_err(grpc_error)?
                .into_inner();
            print!("{}", render_status(&status));
        }
        Command::Domain { action } => {
            let mut client = DirectoryClient::new(channel(&cli.directory_server).await?);
            match action {
                DomainAction::Add { domain } => {
                    let info = client
                        .add_domain(AddDomainRequest { domain })
                        .await
                        .map_err(grpc_error)?
                        .into_inner();
                    println!("domain {} added", info.domain);
                }
                DomainAction::List => {
                    let list = client
                        .list_domains(ListDomainsRequest {})
                        .await
                        .map_err(grpc_error)?
                        .into_inner();
                    for d in list.domains {
                        println!("{}", d.domain);
                    }
                }
            }
        }
        Command::User { action } => {
            let mut client = DirectoryClient::new(channel(&cli.directory_server).await?);
            match action {
                UserAction::Add { address } => {
                    let password = read_password()?;
                    let info = client
                        .add_user(AddUserRequest { address, password })
                        .await
                        .map_err(grpc_error)?
                        .into_inner();
                    println!("user {} added", info.address);
                }
                UserAction::List { domain } => {
                    let list = client
                        .list_users(ListUsersRequest {
                            domain: domain.unwrap_or_default(),
                        })
                        .await
                        .map_err(grpc_error)?
                        .into_inner();
                    for u in list.users {
                        println!("{}", u.address);
                    }
                }
            }
        }
    }
    Ok(())
}

/// The first line of standard input: passwords never travel in argv, where `ps` shows them.
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        bail!("no password on standard input");
    }
    Ok(password)
}

fn state_name(state: RecipientState) -> &'static str {
    match state {
        RecipientState::Unspecified => "unknown",
        RecipientState::Queued => "queued",
        RecipientState::Delivered => "delivered",
        RecipientState::Deferred => "deferred",
        RecipientState::Bounced => "bounced",
    }
}

fn time(t: Option<prost_types::Timestamp>) -> String {
    match t.and_then(|t| u64::try_from(t.seconds).ok()) {
        Some(secs) => httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs)),
        None => "-".into(),
    }
}

fn render_status(s: &MessageStatus) -> String {
    let sender = if s.sender.is_empty() { "<>" } else { &s.sender };
    let mut out = format!(
        "queue id:  {}\nsender:    {}\nclient:    {}\nreceived:  {}\nsize:      {}\n\n",
        s.queue_id,
        sender,
        s.client_ip,
        time(s.received_at),
        s.size
    );
    let rows: Vec<[String; 5]> = s
        .recipients
        .iter()
        .map(|r| {
            let reply = r
                .last_reply
                .as_ref()
                .map(|x| format!("{} {} {}", x.code, x.enhanced, x.text))
                .unwrap_or_else(|| "-".into());
            let relay = match (r.remote_host.as_str(), r.remote_ip.as_str()) {
                ("", _) => "-".to_string(),
                (h, "") => h.to_string(),
                (h, ip) => format!("{h}[{ip}]"),
            };
            [
                r.address.clone(),
                state_name(r.state()).to_string(),
                r.attempts.to_string(),
                relay,
                reply,
            ]
        })
        .collect();
    let header = ["RECIPIENT", "STATE", "ATTEMPTS", "RELAY", "REPLY"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailflow_proto::v1::{RecipientStatus, RemoteReply};

    #[test]
    fn renders_a_table() {
        let s = MessageStatus {
            queue_id: "Q".into(),
            sender: String::new(),
            recipients: vec![RecipientStatus {
                address: "demo@example.test".into(),
                state: RecipientState::Delivered as i32,
                attempts: 1,
                remote_host: "mx.remote.test".into(),
                remote_ip: "127.0.0.2".into(),
                last_reply: Some(RemoteReply {
                    code: 250,
                    enhanced: "2.0.0".into(),
                    text: "Ok".into(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let out = render_status(&s);
        assert!(out.contains("sender:    <>"));
        assert!(
            out.contains(
                "RECIPIENT          STATE      ATTEMPTS  RELAY                      REPLY"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "demo@example.test  delivered  1         mx.remote.test[127.0.0.2]  250 2.0.0 Ok"
            ),
            "{out}"
        );
    }
}

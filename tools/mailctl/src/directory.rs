//! `mailctl domain|user|alias`: the directory, through the policy service's `Directory`.

use std::io::BufRead;

use anyhow::{Context, bail};
use clap::Subcommand;
use mailflow_proto::v1::{
    AddAliasRequest, AddDomainRequest, AddUserRequest, AliasInfo, ListAliasesRequest,
    ListDomainsRequest, ListUsersRequest, RemoveAliasRequest, RemoveDomainRequest,
    RemoveUserRequest, SetPasswordRequest, directory_client::DirectoryClient,
};
use tonic::transport::Channel;

use crate::grpc_error;

/// `mailctl domain ...`
#[derive(Subcommand)]
pub enum DomainAction {
    /// Make a domain local, or change how its mail is delivered.
    Add {
        /// The domain.
        domain: String,
        /// `maildir:/path`, `lmtp:host:port` (Dovecot) or `smtp:[host]:port`; the relay's
        /// Maildir root when not given.
        #[arg(long)]
        transport: Option<String>,
    },
    /// List local domains.
    List,
    /// Stop treating a domain as local (refused while it has users or aliases).
    Rm {
        /// The domain.
        domain: String,
    },
}

/// `mailctl user ...`
#[derive(Subcommand)]
pub enum UserAction {
    /// Add a user (or replace it); the password is read from standard input.
    Add {
        /// The user's address.
        address: String,
    },
    /// Change an existing user's password, read from standard input.
    Passwd {
        /// The user's address.
        address: String,
    },
    /// List users.
    List {
        /// Only this domain's users.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Remove a user (its mailbox on disk is kept).
    Rm {
        /// The user's address.
        address: String,
    },
}

/// `mailctl alias ...`
#[derive(Subcommand)]
pub enum AliasAction {
    /// Send mail for an address (or, with `@domain`, for every address of the domain that
    /// is neither a user nor an alias) to the targets; adds to an existing alias.
    Add {
        /// `local@domain`, or `@domain` for the catch-all.
        source: String,
        /// Where the mail goes, local or remote addresses.
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// List aliases.
    List {
        /// Only this domain's aliases.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Remove targets from an alias, or the whole alias when no target is given.
    Rm {
        /// `local@domain` or `@domain`.
        source: String,
        /// The targets to remove.
        targets: Vec<String>,
    },
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

/// ` via <transport>` when the domain has its own transport.
fn via(transport: &str) -> String {
    if transport.is_empty() {
        String::new()
    } else {
        format!(" via {transport}")
    }
}

/// One alias as `source -> target, target`.
fn render_alias(alias: &AliasInfo) -> String {
    format!("{} -> {}", alias.source, alias.targets.join(", "))
}

/// Runs a `domain` command.
pub async fn domain(
    mut client: DirectoryClient<Channel>,
    action: DomainAction,
) -> anyhow::Result<()> {
    match action {
        DomainAction::Add { domain, transport } => {
            let info = client
                .add_domain(AddDomainRequest {
                    domain,
                    transport: transport.unwrap_or_default(),
                })
                .await
                .map_err(grpc_error)?
                .into_inner();
            println!("domain {} added{}", info.domain, via(&info.transport));
        }
        DomainAction::List => {
            let list = client
                .list_domains(ListDomainsRequest {})
                .await
                .map_err(grpc_error)?
                .into_inner();
            for d in list.domains {
                println!("{}{}", d.domain, via(&d.transport));
            }
        }
        DomainAction::Rm { domain } => {
            client
                .remove_domain(RemoveDomainRequest {
                    domain: domain.clone(),
                })
                .await
                .map_err(grpc_error)?;
            println!("domain {domain} removed");
        }
    }
    Ok(())
}

/// Runs a `user` command.
pub async fn user(mut client: DirectoryClient<Channel>, action: UserAction) -> anyhow::Result<()> {
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
        UserAction::Passwd { address } => {
            let password = read_password()?;
            let info = client
                .set_password(SetPasswordRequest { address, password })
                .await
                .map_err(grpc_error)?
                .into_inner();
            println!("password of {} changed", info.address);
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
        UserAction::Rm { address } => {
            client
                .remove_user(RemoveUserRequest {
                    address: address.clone(),
                })
                .await
                .map_err(grpc_error)?;
            println!("user {address} removed");
        }
    }
    Ok(())
}

/// Runs an `alias` command.
pub async fn alias(
    mut client: DirectoryClient<Channel>,
    action: AliasAction,
) -> anyhow::Result<()> {
    match action {
        AliasAction::Add { source, targets } => {
            let alias = client
                .add_alias(AddAliasRequest { source, targets })
                .await
                .map_err(grpc_error)?
                .into_inner();
            println!("{}", render_alias(&alias));
        }
        AliasAction::List { domain } => {
            let list = client
                .list_aliases(ListAliasesRequest {
                    domain: domain.unwrap_or_default(),
                })
                .await
                .map_err(grpc_error)?
                .into_inner();
            for a in list.aliases {
                println!("{}", render_alias(&a));
            }
        }
        AliasAction::Rm { source, targets } => {
            let left = client
                .remove_alias(RemoveAliasRequest {
                    source: source.clone(),
                    targets,
                })
                .await
                .map_err(grpc_error)?
                .into_inner()
                .remaining;
            match left {
                Some(alias) => println!("{}", render_alias(&alias)),
                None => println!("alias {source} removed"),
            }
        }
    }
    Ok(())
}

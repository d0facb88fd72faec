//! `mailctl queue ...`: lists, the summary, and the controls of the relay's `Queue`.

use std::time::SystemTime;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use mailflow_proto::v1::{
    CancelRequest, DomainRequest, ListMessagesRequest, MessageState, MessageSummary,
    QueueSummaryRequest, QueueSummaryResponse, RecipientState, RetryRequest,
    queue_client::QueueClient,
};
use tonic::transport::Channel;

use crate::grpc_error;
use crate::status::{rfc3339, state_name, table, time};

/// The states `--state` takes.
#[derive(Clone, Copy, ValueEnum)]
pub enum State {
    /// Accepted by the ingress, not routed yet.
    Accepted,
    /// Routed, waiting for its first attempt.
    Queued,
    /// Tried and waiting for a retry.
    Deferred,
    /// Delivered.
    Delivered,
    /// Bounced.
    Bounced,
    /// Held by the scan stage.
    Quarantined,
    /// Bounced because the queue lifetime ran out.
    Expired,
    /// Dropped by an operator.
    Discarded,
}

impl From<State> for MessageState {
    fn from(s: State) -> Self {
        match s {
            State::Accepted => MessageState::Accepted,
            State::Queued => MessageState::Queued,
            State::Deferred => MessageState::Deferred,
            State::Delivered => MessageState::Delivered,
            State::Bounced => MessageState::Bounced,
            State::Quarantined => MessageState::Quarantined,
            State::Expired => MessageState::Expired,
            State::Discarded => MessageState::Discarded,
        }
    }
}

/// `mailctl queue ...`
#[derive(Subcommand)]
pub enum QueueAction {
    /// Messages, newest first.
    List {
        /// Only messages with a recipient in this state.
        #[arg(long, value_enum)]
        state: Option<State>,
        /// Only this envelope sender (`<>` for the null sender).
        #[arg(long)]
        sender: Option<String>,
        /// Only messages to this recipient.
        #[arg(long)]
        recipient: Option<String>,
        /// Only messages to this recipient domain.
        #[arg(long)]
        domain: Option<String>,
        /// Received since: a time (`2026-11-28T12:00:00Z`) or an age (`2h`).
        #[arg(long)]
        since: Option<String>,
        /// Received before: a time or an age.
        #[arg(long)]
        until: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after a previous page.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Counts by state and by waiting destination, oldest first waiting mail.
    Summary,
    /// Try deferred mail now: one message, a domain's, or all.
    Retry {
        /// The queue id.
        queue_id: Option<String>,
        /// Every deferred message for this domain.
        #[arg(long, conflicts_with = "queue_id")]
        domain: Option<String>,
        /// Every deferred message.
        #[arg(long, conflicts_with_all = ["queue_id", "domain"])]
        all: bool,
    },
    /// Stop delivering a message: drop its pending recipients, or bounce them.
    Cancel {
        /// The queue id.
        queue_id: String,
        /// Bounce (the sender gets a notice) instead of dropping silently.
        #[arg(long)]
        bounce: bool,
    },
    /// Hold delivery to a domain.
    Suspend {
        /// The domain.
        domain: String,
    },
    /// Release a suspended domain and try its mail now.
    Resume {
        /// The domain.
        domain: String,
    },
}

/// A time argument: RFC 3339, or an age before now.
fn when(text: &str, field: &str) -> anyhow::Result<prost_types::Timestamp> {
    let at = match humantime::parse_duration(text) {
        Ok(age) => SystemTime::now().checked_sub(age).with_context(|| {
            format!("--{field}: {text:?} is further back than this clock reaches")
        })?,
        Err(_) => humantime::parse_rfc3339_weak(text)
            .with_context(|| format!("--{field}: {text:?} is neither a time nor an age"))?,
    };
    Ok(at.into())
}

fn summary_rows(messages: &[MessageSummary]) -> Vec<Vec<String>> {
    messages
        .iter()
        .map(|m| {
            let sender = if m.sender.is_empty() { "<>" } else { &m.sender };
            let rcpts: Vec<String> = m
                .recipients
                .iter()
                .map(|r| format!("{} ({})", r.address, state_name(r.state())))
                .collect();
            vec![
                m.queue_id.clone(),
                time(m.received_at),
                m.size.to_string(),
                sender.to_string(),
                rcpts.join(", "),
            ]
        })
        .collect()
}

fn render_summary(s: &QueueSummaryResponse) -> String {
    let mut out = format!("messages: {}\n", s.messages);
    if let Some(oldest) = s.oldest {
        out.push_str(&format!("oldest waiting: {}\n", time(Some(oldest))));
    }
    out.push('\n');
    let states: Vec<Vec<String>> = s
        .states
        .iter()
        .map(|c| {
            vec![
                state_name(RecipientState::try_from(c.state).unwrap_or_default()).to_string(),
                c.recipients.to_string(),
                c.messages.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&["STATE", "RECIPIENTS", "MESSAGES"], &states));
    if !s.domains.is_empty() {
        out.push('\n');
        let domains: Vec<Vec<String>> = s
            .domains
            .iter()
            .map(|d| {
                vec![
                    d.domain.clone(),
                    d.queued.to_string(),
                    d.deferred.to_string(),
                    time(d.oldest),
                    if d.suspended { "suspended" } else { "" }.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["DOMAIN", "QUEUED", "DEFERRED", "OLDEST", ""],
            &domains,
        ));
    }
    out
}

/// Runs one `mailctl queue` command, printing a table or, with `json`, JSON.
pub async fn queue(
    mut client: QueueClient<Channel>,
    action: QueueAction,
    json: bool,
) -> anyhow::Result<()> {
    match action {
        QueueAction::List {
            state,
            sender,
            recipient,
            domain,
            since,
            until,
            limit,
            page_token,
        } => {
            let request = ListMessagesRequest {
                state: state.map_or(0, |s| MessageState::from(s) as i32),
                sender: sender.unwrap_or_default(),
                recipient: recipient.unwrap_or_default(),
                recipient_domain: domain.unwrap_or_default(),
                since: since.as_deref().map(|t| when(t, "since")).transpose()?,
                until: until.as_deref().map(|t| when(t, "until")).transpose()?,
                page_size: limit,
                page_token: page_token.unwrap_or_default(),
            };
            let page = client
                .list_messages(request)
                .await
                .map_err(grpc_error)?
                .into_inner();
            if json {
                let messages: Vec<serde_json::Value> = page
                    .messages
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "queue_id": m.queue_id,
                            "sender": m.sender,
                            "received_at": rfc3339(m.received_at),
                            "size": m.size,
                            "message_id": m.message_id,
                            "recipients": m.recipients.iter().map(|r| serde_json::json!({
                                "address": r.address,
                                "state": state_name(r.state()),
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"messages": messages, "next_page_token": page.next_page_token})
                );
            } else {
                print!(
                    "{}",
                    table(
                        &["QUEUE ID", "RECEIVED", "SIZE", "SENDER", "RECIPIENTS"],
                        &summary_rows(&page.messages),
                    )
                );
                if !page.next_page_token.is_empty() {
                    println!("more: --page-token {}", page.next_page_token);
                }
            }
        }
        QueueAction::Summary => {
            let s = client
                .queue_summary(QueueSummaryRequest {})
                .await
                .map_err(grpc_error)?
                .into_inner();
            if json {
                let states: Vec<serde_json::Value> = s
                    .states
                    .iter()
                    .map(|c| serde_json::json!({
                        "state": state_name(RecipientState::try_from(c.state).unwrap_or_default()),
                        "recipients": c.recipients,
                        "messages": c.messages,
                    }))
                    .collect();
                let domains: Vec<serde_json::Value> = s
                    .domains
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "domain": d.domain, "queued": d.queued, "deferred": d.deferred,
                            "oldest": rfc3339(d.oldest), "suspended": d.suspended,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"messages": s.messages, "oldest": rfc3339(s.oldest), "states": states, "domains": domains})
                );
            } else {
                print!("{}", render_summary(&s));
            }
        }
        QueueAction::Retry {
            queue_id,
            domain,
            all,
        } => {
            if queue_id.is_none() && domain.is_none() && !all {
                bail!("give a queue id, --domain or --all");
            }
            let moved = client
                .retry(RetryRequest {
                    queue_id: queue_id.unwrap_or_default(),
                    domain: domain.unwrap_or_default(),
                    all,
                })
                .await
                .map_err(grpc_error)?
                .into_inner()
                .jobs;
            print_result(
                json,
                serde_json::json!({"jobs": moved}),
                &format!("{moved} job(s) sent for delivery now"),
            );
        }
        QueueAction::Cancel { queue_id, bounce } => {
            let n = client
                .cancel(CancelRequest {
                    queue_id: queue_id.clone(),
                    bounce,
                })
                .await
                .map_err(grpc_error)?
                .into_inner()
                .recipients;
            let what = if bounce { "bounced" } else { "dropped" };
            print_result(
                json,
                serde_json::json!({"queue_id": queue_id, "recipients": n, "bounced": bounce}),
                &format!("{queue_id}: {n} recipient(s) {what}"),
            );
        }
        QueueAction::Suspend { domain } | QueueAction::Resume { domain }
            if domain.trim().is_empty() =>
        {
            bail!("a domain is required");
        }
        QueueAction::Suspend { domain } => {
            let r = client
                .suspend(DomainRequest { domain })
                .await
                .map_err(grpc_error)?
                .into_inner();
            print_result(
                json,
                serde_json::json!({"domain": r.domain, "suspended": true}),
                &format!("delivery to {} suspended", r.domain),
            );
        }
        QueueAction::Resume { domain } => {
            let r = client
                .resume(DomainRequest { domain })
                .await
                .map_err(grpc_error)?
                .into_inner();
            print_result(
                json,
                serde_json::json!({"domain": r.domain, "suspended": false, "jobs": r.jobs}),
                &format!(
                    "delivery to {} resumed; {} job(s) sent now",
                    r.domain, r.jobs
                ),
            );
        }
    }
    Ok(())
}

fn print_result(json: bool, value: serde_json::Value, text: &str) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_given_as_an_age_or_a_date() {
        let hour_ago = SystemTime::try_from(when("1h", "since").unwrap()).unwrap();
        let age = SystemTime::now().duration_since(hour_ago).unwrap();
        assert!(age >= Duration::from_secs(3600) && age < Duration::from_secs(3660));
        let date = when("2026-01-02T03:04:05Z", "until").unwrap();
        assert_eq!(date.seconds, 1_767_323_045);
        let err = when("300000000000y", "since").unwrap_err().to_string();
        assert!(err.contains("--since"), "{err}");
        assert!(when("yesterday", "since").is_err());
    }
}

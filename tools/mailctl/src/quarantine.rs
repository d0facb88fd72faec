//! `mailctl quarantine`: messages the scan stage held, through the policy service's
//! `Quarantine`.

use std::time::{Duration, UNIX_EPOCH};

use clap::Subcommand;
use mailflow_proto::v1::{
    ListQuarantineRequest, QuarantineEntry, QuarantineRequest, quarantine_client::QuarantineClient,
};
use tonic::transport::Channel;

use crate::grpc_error;

/// `mailctl quarantine ...`
#[derive(Subcommand)]
pub enum QuarantineAction {
    /// List held messages, oldest first.
    List,
    /// Deliver a held message (it is not scanned again).
    Release {
        /// The queue id.
        queue_id: String,
    },
    /// Drop a held message without telling its sender.
    Delete {
        /// The queue id.
        queue_id: String,
    },
}

/// One held message on one line: id, since when, size, sender, recipients, subject, why.
pub fn render_entry(e: &QuarantineEntry) -> String {
    let since = e
        .quarantined_at
        .and_then(|t| u64::try_from(t.seconds).ok())
        .map_or("-".into(), |s| {
            httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s))
        });
    let sender = if e.sender.is_empty() { "<>" } else { &e.sender };
    format!(
        "{}  {since}  {} B  {sender} -> {}  {:?}  ({})",
        e.queue_id,
        e.size,
        e.recipients.join(","),
        e.subject,
        e.reason
    )
}

/// Runs one `mailctl quarantine` command.
pub async fn quarantine(
    mut client: QuarantineClient<Channel>,
    action: QuarantineAction,
) -> anyhow::Result<()> {
    match action {
        QuarantineAction::List => {
            let list = client
                .list(ListQuarantineRequest {})
                .await
                .map_err(grpc_error)?
                .into_inner();
            if list.entries.is_empty() {
                println!("quarantine is empty");
            }
            for e in &list.entries {
                println!("{}", render_entry(e));
            }
        }
        QuarantineAction::Release { queue_id } => {
            let e = client
                .release(QuarantineRequest { queue_id })
                .await
                .map_err(grpc_error)?
                .into_inner();
            println!("{} released", e.queue_id);
        }
        QuarantineAction::Delete { queue_id } => {
            let e = client
                .delete(QuarantineRequest { queue_id })
                .await
                .map_err(grpc_error)?
                .into_inner();
            println!("{} deleted", e.queue_id);
        }
    }
    Ok(())
}

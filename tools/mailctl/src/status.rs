//! `mailctl status` and `watch`: a message, its recipients and its history, as tables or
//! JSON; and the table and JSON helpers the other commands share.

use std::time::{Duration, UNIX_EPOCH};

use mailflow_proto::v1::{
    DeliveryEvent, MessageStatus, RecipientState, WatchMessageRequest, queue_client::QueueClient,
    watch_update,
};
use tonic::transport::Channel;

pub fn state_name(state: RecipientState) -> &'static str {
    match state {
        RecipientState::Unspecified => "unknown",
        RecipientState::Queued => "queued",
        RecipientState::Delivered => "delivered",
        RecipientState::Deferred => "deferred",
        RecipientState::Bounced => "bounced",
        RecipientState::Quarantined => "quarantined",
        RecipientState::Discarded => "discarded",
        RecipientState::Accepted => "accepted",
    }
}

pub fn time(t: Option<prost_types::Timestamp>) -> String {
    match t.and_then(|t| u64::try_from(t.seconds).ok()) {
        Some(secs) => httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs)),
        None => "-".into(),
    }
}

pub fn render_status(s: &MessageStatus) -> String {
    let sender = if s.sender.is_empty() { "<>" } else { &s.sender };
    let mut out = format!(
        "queue id:  {}\nsender:    {}\nclient:    {}\nreceived:  {}\nsize:      {}\n\n",
        s.queue_id,
        sender,
        s.client_ip,
        time(s.received_at),
        s.size
    );
    let rows: Vec<[String; 6]> = s
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
            let tls = r
                .tls
                .as_ref()
                .map_or_else(|| "-".to_string(), |t| t.version.clone());
            let recipient = if r.original.is_empty() {
                r.address.clone()
            } else {
                format!("{} (via {})", r.address, r.original)
            };
            [
                recipient,
                state_name(r.state()).to_string(),
                r.attempts.to_string(),
                relay,
                tls,
                reply,
            ]
        })
        .collect();
    out.push_str(&table(
        &["RECIPIENT", "STATE", "ATTEMPTS", "RELAY", "TLS", "REPLY"],
        &rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
    ));
    if !s.history.is_empty() {
        out.push_str("\nhistory:\n");
        for e in &s.history {
            out.push_str("  ");
            out.push_str(&render_event(e));
            out.push('\n');
        }
    }
    out
}

/// One event on one line: when, recipient, state, attempt, relay and reply.
pub fn render_event(e: &DeliveryEvent) -> String {
    let reply = e
        .reply
        .as_ref()
        .map(|x| format!("{} {} {}", x.code, x.enhanced, x.text))
        .unwrap_or_default();
    let relay = if e.remote_host.is_empty() {
        String::new()
    } else {
        format!(" via {}[{}]", e.remote_host, e.remote_ip)
    };
    let tls = e
        .tls
        .as_ref()
        .map_or(String::new(), |t| format!(" {}", t.version));
    format!(
        "{}  {}  {} (attempt {}){relay}{tls}: {reply}",
        time(e.at),
        e.recipient,
        state_name(e.state()),
        e.attempt
    )
}

/// Prints a message's status and then each event as it happens, until every recipient is
/// in a final state.
pub async fn watch(
    mut client: QueueClient<Channel>,
    queue_id: String,
    json: bool,
) -> anyhow::Result<()> {
    let mut updates = client
        .watch_message(WatchMessageRequest { queue_id })
        .await
        .map_err(crate::grpc_error)?
        .into_inner();
    while let Some(update) = updates.message().await.map_err(crate::grpc_error)? {
        match update.update {
            Some(watch_update::Update::Status(s)) if json => println!("{}", status_json(&s)),
            Some(watch_update::Update::Status(s)) => print!("{}\nevents:\n", render_status(&s)),
            Some(watch_update::Update::Event(e)) if json => println!("{}", event_json(&e)),
            Some(watch_update::Update::Event(e)) => println!("  {}", render_event(&e)),
            None => {}
        }
    }
    Ok(())
}

/// Rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A timestamp as RFC 3339 text, for JSON.
pub fn rfc3339(t: Option<prost_types::Timestamp>) -> serde_json::Value {
    match t {
        Some(t) => serde_json::Value::String(t.to_string()),
        None => serde_json::Value::Null,
    }
}

/// An event as JSON.
pub fn event_json(e: &DeliveryEvent) -> serde_json::Value {
    serde_json::json!({
        "queue_id": e.queue_id,
        "recipient": e.recipient,
        "state": state_name(e.state()),
        "attempt": e.attempt,
        "at": rfc3339(e.at),
        "remote_host": e.remote_host,
        "remote_ip": e.remote_ip,
        "reply": e.reply.as_ref().map(|r| serde_json::json!({"code": r.code, "enhanced": r.enhanced, "text": r.text})),
        "tls": e.tls.as_ref().map(|t| serde_json::json!({"version": t.version, "cipher": t.cipher})),
        "next_attempt_at": rfc3339(e.next_attempt_at),
    })
}

/// A message status as JSON.
pub fn status_json(s: &MessageStatus) -> serde_json::Value {
    serde_json::json!({
        "queue_id": s.queue_id,
        "sender": s.sender,
        "client_ip": s.client_ip,
        "received_at": rfc3339(s.received_at),
        "size": s.size,
        "message_id": s.message_id,
        "envid": s.envid,
        "recipients": s.recipients.iter().map(|r| serde_json::json!({
            "address": r.address,
            "original": r.original,
            "state": state_name(r.state()),
            "attempts": r.attempts,
            "remote_host": r.remote_host,
            "remote_ip": r.remote_ip,
            "reply": r.last_reply.as_ref().map(|x| serde_json::json!({"code": x.code, "enhanced": x.enhanced, "text": x.text})),
            "tls": r.tls.as_ref().map(|t| serde_json::json!({"version": t.version, "cipher": t.cipher})),
            "updated_at": rfc3339(r.updated_at),
            "next_attempt_at": rfc3339(r.next_attempt_at),
        })).collect::<Vec<_>>(),
        "history": s.history.iter().map(event_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailflow_proto::v1::{RecipientStatus, RemoteReply, TlsInfo};

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
                original: "team@example.test".into(),
                tls: Some(TlsInfo {
                    version: "TLSv1.3".into(),
                    cipher: "TLS13_AES_128_GCM_SHA256".into(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let out = render_status(&s);
        assert!(out.contains("sender:    <>"));
        assert!(
            out.contains(
                "RECIPIENT                                  STATE      ATTEMPTS  RELAY                      TLS      REPLY"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "demo@example.test (via team@example.test)  delivered  1         mx.remote.test[127.0.0.2]  TLSv1.3  250 2.0.0 Ok"
            ),
            "{out}"
        );
    }
}

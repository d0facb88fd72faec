//! `mailctl status`: a message and its recipients as a table.

use std::time::{Duration, UNIX_EPOCH};

use mailflow_proto::v1::{MessageStatus, RecipientState};

fn state_name(state: RecipientState) -> &'static str {
    match state {
        RecipientState::Unspecified => "unknown",
        RecipientState::Queued => "queued",
        RecipientState::Delivered => "delivered",
        RecipientState::Deferred => "deferred",
        RecipientState::Bounced => "bounced",
        RecipientState::Quarantined => "quarantined",
        RecipientState::Discarded => "discarded",
    }
}

fn time(t: Option<prost_types::Timestamp>) -> String {
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
    let header = ["RECIPIENT", "STATE", "ATTEMPTS", "RELAY", "TLS", "REPLY"].map(String::from);
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

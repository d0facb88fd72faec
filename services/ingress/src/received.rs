//! The `Received:` trace header (RFC 5321 §4.4) the ingress prepends to every message.

use std::net::IpAddr;
use std::time::SystemTime;

use mailflow_proto::v1::TlsInfo;
use mailflow_report::rfc5322_date;

/// The facts the header records.
pub struct Trace<'a> {
    /// The EHLO/HELO name the client gave.
    pub helo: &'a str,
    /// The client's address.
    pub client_ip: IpAddr,
    /// Our host name.
    pub hostname: &'a str,
    /// The protocol keyword of RFC 3848 (SMTP, ESMTP ...).
    pub protocol: &'a str,
    /// The TLS session, if the message came encrypted.
    pub tls: Option<&'a TlsInfo>,
    /// The queue id.
    pub queue_id: &'a str,
    /// The single recipient, if there is exactly one (more would disclose the envelope).
    pub recipient: Option<&'a str>,
    /// When the message was received.
    pub at: SystemTime,
}

/// Formats the header, folded, with CRLF line endings.
pub fn header(t: &Trace<'_>) -> String {
    let ip = match t.client_ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    // Only what a domain or an address literal may hold: a `;` would end the field's
    // tokens early (RFC 5322 §3.6.7), parentheses would open a comment.
    let helo: String = t
        .helo
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'))
        .take(255)
        .collect();
    let helo = if helo.is_empty() { "unknown" } else { &helo };
    let mut out = format!("Received: from {helo} ([{ip}])\r\n");
    if let Some(tls) = t.tls {
        out.push_str(&format!(
            "\t(using {} with cipher {})\r\n",
            tls.version, tls.cipher
        ));
    }
    out.push_str(&format!(
        "\tby {} (mailflow) with {} id {}",
        t.hostname, t.protocol, t.queue_id
    ));
    if let Some(rcpt) = t.recipient {
        out.push_str(&format!("\r\n\tfor <{rcpt}>"));
    }
    out.push_str(&format!("; {}\r\n", rfc5322_date(t.at)));
    out
}

/// The `with` keyword of RFC 3848 (and RFC 6531 for SMTPUTF8): ESMTP plus `S` for TLS and
/// `A` for an authenticated session.
pub fn protocol(extended: bool, utf8: bool, tls: bool, auth: bool) -> String {
    if !extended {
        return "SMTP".into();
    }
    let base = if utf8 { "UTF8SMTP" } else { "ESMTP" };
    format!(
        "{base}{}{}",
        if tls { "S" } else { "" },
        if auth { "A" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_a_folded_header() {
        let h = header(&Trace {
            helo: "client.test (evil)",
            client_ip: "192.0.2.7".parse().unwrap(),
            hostname: "mx.example.test",
            protocol: "ESMTPSA",
            tls: Some(&TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_256_GCM_SHA384".into(),
            }),
            queue_id: "01ABC",
            recipient: Some("u@example.test"),
            at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        });
        assert_eq!(
            h,
            "Received: from client.testevil ([192.0.2.7])\r\n\t(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)\r\n\tby mx.example.test (mailflow) with ESMTPSA id 01ABC\r\n\tfor <u@example.test>; Fri, 15 Jan 2027 08:00:00 +0000\r\n"
        );
    }

    #[test]
    fn helo_names_are_cut_to_what_a_domain_may_hold() {
        let from = |helo: &str| {
            let h = header(&Trace {
                helo,
                client_ip: "192.0.2.7".parse().unwrap(),
                hostname: "mx.example.test",
                protocol: "ESMTP",
                tls: None,
                queue_id: "01ABC",
                recipient: None,
                at: UNIX_EPOCH,
            });
            h.lines().next().unwrap().to_string()
        };
        assert_eq!(from("()"), "Received: from unknown ([192.0.2.7])");
        assert_eq!(from("a;b"), "Received: from ab ([192.0.2.7])");
        assert_eq!(
            from("[192.0.2.7]"),
            "Received: from [192.0.2.7] ([192.0.2.7])"
        );
    }

    #[test]
    fn protocol_keywords() {
        assert_eq!(protocol(false, false, true, true), "SMTP");
        assert_eq!(protocol(true, false, false, false), "ESMTP");
        assert_eq!(protocol(true, false, true, false), "ESMTPS");
        assert_eq!(protocol(true, false, false, true), "ESMTPA");
        assert_eq!(protocol(true, false, true, true), "ESMTPSA");
        assert_eq!(protocol(true, true, true, true), "UTF8SMTPSA");
    }
}

//! The scan stage: what the route stage checks and adds before a message is routed.
//!
//! - forged `Authentication-Results` fields claiming our host name are removed (RFC 8601
//!   §5);
//! - a mail loop (too many `Received` fields) and the content rules decide whether the
//!   message is delivered, quarantined or refused;
//! - mail from outside (unauthenticated, not from `relay_networks`) is verified (SPF, DKIM,
//!   ARC, DMARC) and gets an `Authentication-Results` field; a DMARC `p=reject` failure is
//!   quarantined;
//! - mail from our own users and networks is DKIM-signed with its sender domain's key.
//!
//! Added fields go into the body's prefix: a large body is not copied to add a few lines.

pub mod rules;
pub mod verify;

use std::net::IpAddr;

use ipnet::IpNet;
use mail_auth::MessageAuthenticator;
use mailflow_proto::v1::{AcceptedMessage, StoredDkimKey};
use mailflow_runtime::config::{RuleAction, ScanConfig};

use mailflow_smtp::header;

use crate::checks;
use crate::dkim;

/// What happens to a scanned message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Route it.
    Deliver,
    /// Hold it for an operator, for this reason.
    Quarantine(String),
    /// Refuse it (`550 5.7.1` for every recipient, reported to the sender), for this reason.
    Reject(String),
}

/// The outcome of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// What to do.
    pub decision: Decision,
    /// Header fields to put before the message (`Authentication-Results` or
    /// `DKIM-Signature`).
    pub prefix: Vec<u8>,
    /// The message without the forged fields, when it had some.
    pub rewritten: Option<Vec<u8>>,
    /// The subject and Message-ID.
    pub headline: Headline,
}

/// What lists show of a message's header: the quarantine list its subject, the status
/// record its Message-ID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headline {
    /// The `Subject` field, unfolded.
    pub subject: String,
    /// The `Message-ID` field without its angle brackets.
    pub message_id: String,
}

/// The headline of `message`.
pub fn headline(message: &[u8]) -> Headline {
    headline_of(&header::fields(message))
}

/// The headline of a message whose header fields are `fields`.
fn headline_of(fields: &[header::Field<'_>]) -> Headline {
    let value = |name: &str| {
        fields
            .iter()
            .find(|f| f.is(name))
            .map(|f| f.value())
            .unwrap_or_default()
    };
    let message_id = value("Message-ID");
    Headline {
        subject: bounded(value("Subject")),
        message_id: bounded(
            message_id
                .trim_matches(|c: char| c == '<' || c == '>' || c.is_whitespace())
                .to_string(),
        ),
    }
}

/// The longest Subject or Message-ID kept for status records and the quarantine: a line's
/// limit (RFC 5322 §2.1.1). A longer value is cut at a character boundary, so that a huge
/// header field cannot make a record too large to store (NATS' maximum payload).
const HEADLINE_MAX: usize = 998;

fn bounded(mut value: String) -> String {
    if value.len() > HEADLINE_MAX {
        let mut end = HEADLINE_MAX;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
    value
}

/// Where a message comes from, as far as authentication goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From outside: verified.
    Outside(IpAddr),
    /// From an authenticated user or a trusted network: signed.
    Own,
    /// Written by mailflow itself (delivery status notifications): neither.
    Internal,
}

/// The scanner, shared by the route stage's tasks.
pub struct Scanner {
    /// DNS lookups for SPF, DKIM, DMARC and ARC.
    authenticator: MessageAuthenticator,
    /// Our authentication service identifier (the ingress host name).
    hostname: String,
    /// Clients whose mail is ours (signed, not verified).
    relay_networks: Vec<IpNet>,
    /// The checks to run.
    config: ScanConfig,
}

impl Scanner {
    /// A scanner answering as `hostname`.
    pub fn new(
        authenticator: MessageAuthenticator,
        hostname: String,
        relay_networks: Vec<IpNet>,
        config: ScanConfig,
    ) -> Self {
        Self {
            authenticator,
            hostname,
            relay_networks,
            config,
        }
    }

    /// Where `msg` comes from.
    pub fn origin(&self, msg: &AcceptedMessage) -> Origin {
        let Ok(ip) = msg.client_ip.parse::<IpAddr>() else {
            return Origin::Internal;
        };
        if !msg.auth_identity.is_empty() || checks::trusted(ip, &self.relay_networks) {
            Origin::Own
        } else {
            Origin::Outside(ip)
        }
    }

    /// Scans `content` (the whole message) of `msg`; `key` signs it when it is our own
    /// mail.
    pub async fn scan(
        &self,
        msg: &AcceptedMessage,
        content: &[u8],
        key: Option<&StoredDkimKey>,
    ) -> Scanned {
        let rewritten = header::without(content, |f| {
            f.is("Authentication-Results")
                && header::authserv_id(&f.value()).eq_ignore_ascii_case(&self.hostname)
        });
        let message = rewritten.as_deref().unwrap_or(content);
        let fields = header::fields(message);
        let finding = rules::mail_loop(&fields, self.config.max_received)
            .or_else(|| rules::check(message, &fields, header::section_len(message), &self.config));
        let mut decision = match finding {
            None => Decision::Deliver,
            Some(f) if f.action == RuleAction::Reject => Decision::Reject(f.reason),
            Some(f) => Decision::Quarantine(f.reason),
        };
        let mut prefix = Vec::new();
        match self.origin(msg) {
            Origin::Outside(ip) if self.config.verify => {
                let mail_from = msg.mail_from.as_ref().map_or("", |m| m.address.as_str());
                let envelope = verify::Envelope {
                    ip,
                    helo: &msg.helo,
                    mail_from,
                };
                let verified = verify::verify(
                    &self.authenticator,
                    &self.hostname,
                    message,
                    envelope,
                    &msg.spf,
                )
                .await;
                prefix.extend_from_slice(verified.header.as_bytes());
                if let Some(domain) = verified.dmarc_reject
                    && self.config.dmarc_reject_quarantine
                    && decision == Decision::Deliver
                {
                    decision = Decision::Quarantine(format!("DMARC policy reject for {domain}"));
                }
            }
            Origin::Own => {
                if let Some(key) = key {
                    match dkim::sign(key, message) {
                        Ok(signature) => prefix.extend_from_slice(signature.as_bytes()),
                        Err(e) => {
                            tracing::warn!(queue_id = %msg.queue_id, error = %e, "not DKIM-signed")
                        }
                    }
                }
            }
            Origin::Outside(_) | Origin::Internal => {}
        }
        let headline = headline_of(&fields);
        Scanned {
            decision,
            prefix,
            rewritten,
            headline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headline_keeps_at_most_a_line_of_each_value() {
        let long_id = format!("<{}@x.test>", "a".repeat(5000));
        // 'é' is two octets: a cut must not split it.
        let long_subject = format!("{}é{}", "s".repeat(997), "t".repeat(10));
        let message = format!("Message-ID: {long_id}\r\nSubject: {long_subject}\r\n\r\nbody\r\n");
        let h = headline(message.as_bytes());
        assert_eq!(h.message_id.len(), HEADLINE_MAX);
        assert!(h.message_id.starts_with("aaa"));
        assert_eq!(h.subject, "s".repeat(997));
        let short = headline(b"Message-ID: <id@x.test>\r\nSubject: hi\r\n\r\n");
        assert_eq!(
            (short.message_id.as_str(), short.subject.as_str()),
            ("id@x.test", "hi")
        );
    }
}

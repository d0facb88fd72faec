//! Delivering one job by its domain's transport: into Maildir, over LMTP, to a fixed SMTP
//! server (a smarthost) or to the domain's mail exchangers. Every recipient gets an
//! [`Outcome`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mailflow_proto::v1::{
    BodyType, DeliveryJob, DsnReturn, MailFrom, RecipientState, RemoteReply, TlsInfo, route,
};
use mailflow_smtp::ServerReply;

use crate::maildir::LocalDelivery;
use crate::smtp_client::{
    self, ClientConfig, ConnectionCache, Credentials, Envelope, EnvelopeRcpt, HostFailure,
};
use mailflow_dns::{MxResolver, ResolveError, Target};
use mailflow_mta_sts::Mode;
use mailflow_report::notify_of;
use mailflow_runtime::config::Transport;
use mailflow_smtp::params;

use crate::dane::{Dane, HostDane};
use crate::destination::Unreachable;
use crate::mta_sts::MtaSts;
use tokio_rustls::TlsConnector;

/// The result of one delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Delivered, deferred or bounced.
    pub state: RecipientState,
    /// The answer that decided it.
    pub reply: RemoteReply,
    /// The host that answered (empty for local delivery).
    pub remote_host: String,
    /// Its address.
    pub remote_ip: String,
    /// The TLS session the answer came over, if any.
    pub tls: Option<TlsInfo>,
    /// Where an accepted message went, which decides what a success notice says.
    pub handoff: Handoff,
    /// The reply is the remote host's own; otherwise it was decided here (a refused
    /// connection, a missing extension, a mail loop), with the host only tried, and a
    /// notice names no remote MTA for it (RFC 3464 §2.3.6).
    pub by_remote: bool,
}

/// Where an accepted message went (RFC 3461 §5.2): a success notice says `delivered` for a
/// mailbox, `relayed` for a next hop that does not take DSN requests along, and nothing
/// for one that does (its notices come from there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handoff {
    /// Into a mailbox: Maildir, or an LMTP server (final delivery, RFC 2033).
    #[default]
    Mailbox,
    /// To a next hop over SMTP that does not offer DSN.
    Relayed,
    /// To a next hop over SMTP that offers DSN and took the requests along.
    DsnRelayed,
}

impl Outcome {
    /// An outcome with no remote host.
    pub fn new(state: RecipientState, code: u32, enhanced: &str, text: String) -> Self {
        Self {
            state,
            reply: RemoteReply {
                code,
                enhanced: enhanced.into(),
                text,
            },
            remote_host: String::new(),
            remote_ip: String::new(),
            tls: None,
            handoff: Handoff::Mailbox,
            by_remote: false,
        }
    }

    fn from_reply(
        reply: &ServerReply,
        host: &str,
        addr: SocketAddr,
        tls: Option<&TlsInfo>,
    ) -> Self {
        let state = if reply.is_success() {
            RecipientState::Delivered
        } else if reply.is_transient() {
            RecipientState::Deferred
        } else {
            RecipientState::Bounced
        };
        Self {
            state,
            reply: RemoteReply {
                code: u32::from(reply.code),
                enhanced: reply.enhanced.map(|e| e.to_string()).unwrap_or_default(),
                text: reply.text(),
            },
            remote_host: host.to_string(),
            remote_ip: addr.ip().to_string(),
            tls: tls.cloned(),
            handoff: Handoff::Mailbox,
            by_remote: true,
        }
    }
}

/// The outcome of a REQUIRETLS message (RFC 8689) for a remote destination that cannot
/// have a verified path. It may only travel over TLS whose certificate was verified
/// (MTA-STS in enforce mode for the destination, or DANE for the host), to a next hop that
/// offers REQUIRETLS, so it is returned with `5.7.30` rather than sent over a path the
/// sender forbade (§4.2.1). `verifiable` is false when neither can apply (no MTA-STS
/// enforcement, and DANE off or not an MX delivery); otherwise each host is judged.
pub fn requiretls_refusal(mail_from: &MailFrom, verifiable: bool) -> Option<Outcome> {
    (mail_from.requiretls && !verifiable).then(|| {
        Outcome::new(
            RecipientState::Bounced,
            550,
            "5.7.30",
            "REQUIRETLS: no verified TLS path (MTA-STS or DANE) to the destination".into(),
        )
    })
}

/// True when the envelope or the header section holds UTF-8, so the next hop must support
/// SMTPUTF8. Like Postfix, a message whose only UTF-8 is in the body (carried by 8BITMIME) is
/// delivered to a peer without SMTPUTF8 rather than bounced (RFC 6531 §3.2 leaves this to
/// the client).
pub fn needs_smtputf8(sender: &str, rcpts: &[Pending], content: &[u8]) -> bool {
    let header_end = content
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(content.len());
    !sender.is_ascii()
        || rcpts.iter().any(|(_, r)| !r.is_ascii())
        || !content[..header_end].is_ascii()
}

/// What the deliverer needs to know.
#[derive(Clone)]
pub struct Deliverer {
    /// Our EHLO name and the Maildir file names' host part.
    pub hostname: String,
    /// Host names that are ours (this relay's and the ingress'): a mail exchanger greeting
    /// with one of them is ourselves, and the mail would loop.
    pub own_names: Vec<String>,
    /// Root of local Maildirs.
    pub maildir_root: PathBuf,
    /// MX lookups.
    pub resolver: MxResolver,
    /// All remote mail goes here when set (`host:port`), unless `transports` says otherwise.
    pub smarthost: Option<String>,
    /// Transports by domain, from the configuration.
    pub transports: BTreeMap<String, Transport>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Per-reply timeout.
    pub command_timeout: Duration,
    /// Idle connections to reuse.
    pub connections: Arc<ConnectionCache>,
    /// Opportunistic STARTTLS.
    pub tls: TlsConnector,
    /// Verified TLS, for destinations whose MTA-STS policy is in enforce mode.
    pub verified_tls: TlsConnector,
    /// MTA-STS policies (none when disabled).
    pub mta_sts: Option<Arc<MtaSts>>,
    /// Destinations recently unreachable.
    pub unreachable: Arc<Unreachable>,
    /// DANE lookups (none when disabled).
    pub dane: Option<Arc<Dane>>,
    /// Credentials for the smarthost and `smtp:` transports, if they want them.
    pub smarthost_auth: Option<Credentials>,
}

/// The outcome of a delivery that found ourselves at an MX host (Postfix's "mail for ...
/// loops back to myself", decided here, not by a remote server): returned (`5.4.6`) when
/// that host is the best MX, since every other is worse; deferred (`4.4.6`) otherwise, as
/// the better ones may answer later.
fn looped(domain: &str, best: bool) -> Outcome {
    let text = format!("mail for {domain} loops back to myself");
    if best {
        Outcome::new(RecipientState::Bounced, 554, "5.4.6", text)
    } else {
        Outcome::new(RecipientState::Deferred, 451, "4.4.6", text)
    }
}

/// What an unreachable destination is remembered by: the fixed server of a transport, or
/// the domain whose MX hosts are tried.
fn unreachable_key(transport: &Transport, domain: &str) -> String {
    transport.endpoint().unwrap_or_else(|| domain.to_string())
}

impl Deliverer {
    /// True when `job` would be deferred at once because its destination was found
    /// unreachable recently (no connection is made, so no per-destination slot is needed).
    pub fn known_unreachable(&self, job: &DeliveryJob, transport: &Transport) -> bool {
        self.unreachable
            .check(&unreachable_key(transport, &job.domain))
            .is_some()
    }
}

/// A recipient of the job still to be delivered: its index in the message and address.
pub type Pending = (u32, String);

impl Deliverer {
    /// How `job` leaves: the transport the directory gave it, else the configured one for
    /// its domain, else Maildir for a local domain and the smarthost or the MX hosts for a
    /// remote one.
    pub fn transport(&self, job: &DeliveryJob) -> Transport {
        if !job.transport.is_empty() {
            match job.transport.parse() {
                Ok(t) => return t,
                Err(e) => {
                    tracing::warn!(domain = %job.domain, error = %e, "directory transport ignored")
                }
            }
        }
        if let Some(t) = self.transports.get(&job.domain) {
            return t.clone();
        }
        match job.route.as_ref().and_then(|r| r.kind.as_ref()) {
            Some(route::Kind::Local(_)) => Transport::Maildir(self.maildir_root.clone()),
            _ => self
                .smarthost
                .as_ref()
                .and_then(|s| format!("smtp:{s}").parse().ok())
                .unwrap_or(Transport::Mx),
        }
    }

    /// Delivers `content` to `pending` recipients of `job` by `transport` (from
    /// [`Deliverer::transport`]).
    pub async fn deliver(
        &self,
        transport: &Transport,
        job: &DeliveryJob,
        pending: &[Pending],
        content: Bytes,
    ) -> Vec<Outcome> {
        match transport {
            Transport::Maildir(root) => {
                self.deliver_local(root.clone(), job, pending, content)
                    .await
            }
            transport => self.deliver_remote(transport, job, pending, &content).await,
        }
    }

    async fn deliver_local(
        &self,
        root: PathBuf,
        job: &DeliveryJob,
        pending: &[Pending],
        content: Bytes,
    ) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(pending.len());
        for (index, rcpt) in pending {
            let root = root.clone();
            let hostname = self.hostname.clone();
            let queue_id = job.queue_id.clone();
            let sender = job
                .mail_from
                .as_ref()
                .map(|m| m.address.clone())
                .unwrap_or_default();
            let received_secs = job.received_at.map_or(0, |t| t.seconds);
            let rcpt = rcpt.clone();
            let content = content.clone();
            let index = *index;
            let written = tokio::task::spawn_blocking(move || {
                LocalDelivery {
                    root: &root,
                    hostname: &hostname,
                    queue_id: &queue_id,
                    index,
                    received_secs,
                    sender: &sender,
                    recipient: &rcpt,
                }
                .write(&content)
            })
            .await;
            out.push(match written {
                Ok(Ok(path)) => Outcome::new(
                    RecipientState::Delivered,
                    250,
                    "2.0.0",
                    format!("delivered to maildir ({})", path.display()),
                ),
                Ok(Err(e)) => Outcome::new(
                    RecipientState::Deferred,
                    451,
                    "4.3.0",
                    format!("maildir delivery failed: {e}"),
                ),
                Err(e) => Outcome::new(
                    RecipientState::Deferred,
                    451,
                    "4.3.0",
                    format!("maildir delivery interrupted: {e}"),
                ),
            });
        }
        out
    }

    /// Where to connect for `transport`: its host for SMTP and LMTP, the domain's MX hosts
    /// otherwise.
    async fn targets(&self, transport: &Transport, domain: &str) -> Result<Vec<Target>, Outcome> {
        if let Some(endpoint) = transport.endpoint() {
            let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(endpoint.as_str()).await {
                Ok(a) => a.collect(),
                Err(e) => {
                    return Err(Outcome::new(
                        RecipientState::Deferred,
                        451,
                        "4.4.3",
                        format!("cannot resolve {transport}: {e}"),
                    ));
                }
            };
            let host = endpoint
                .rsplit_once(':')
                .map_or(endpoint.as_str(), |(h, _)| h)
                .trim_matches(['[', ']'])
                .to_string();
            return Ok(vec![Target {
                host,
                addrs,
                preference: 0,
            }]);
        }
        self.resolver.targets(domain).await.map_err(|e| {
            let (state, code, enh) = match &e {
                ResolveError::NullMx(_) => (RecipientState::Bounced, 556, "5.1.10"),
                e if e.is_permanent() => (RecipientState::Bounced, 550, "5.1.2"),
                _ => (RecipientState::Deferred, 451, "4.4.3"),
            };
            Outcome::new(state, code, enh, e.to_string())
        })
    }

    /// Applies the destination's MTA-STS policy to MX delivery (RFC 8461 §4): in enforce
    /// mode only the MX hosts the policy lists remain, and `Ok(true)` asks for verified TLS.
    /// Fixed servers (smarthost, `smtp:`, LMTP) are not MX hosts and are not affected.
    async fn mta_sts_enforced(
        &self,
        transport: &Transport,
        domain: &str,
        targets: &mut Vec<Target>,
    ) -> Result<bool, Outcome> {
        let Some(sts) = self
            .mta_sts
            .as_ref()
            .filter(|_| *transport == Transport::Mx)
        else {
            return Ok(false);
        };
        let Some(policy) = sts.policy(domain).await else {
            return Ok(false);
        };
        if policy.mode != Mode::Enforce {
            // Testing mode: delivered as usual; the result is only logged (no TLSRPT yet).
            tracing::info!(%domain, "MTA-STS policy in testing mode");
            return Ok(false);
        }
        targets.retain(|t| policy.allows(&t.host));
        if targets.is_empty() {
            return Err(Outcome::new(
                RecipientState::Deferred,
                451,
                "4.7.5",
                format!("MTA-STS policy of {domain}: none of its MX hosts is listed in the policy"),
            ));
        }
        Ok(true)
    }

    async fn deliver_remote(
        &self,
        transport: &Transport,
        job: &DeliveryJob,
        pending: &[Pending],
        content: &[u8],
    ) -> Vec<Outcome> {
        let lmtp = matches!(transport, Transport::Lmtp { .. });
        let key = unreachable_key(transport, &job.domain);
        if let Some(outcome) = self.unreachable.check(&key) {
            return vec![outcome; pending.len()];
        }
        let mut targets = match self.targets(transport, &job.domain).await {
            Ok(t) => t,
            Err(outcome) => return vec![outcome; pending.len()],
        };
        // The best MX of the records, before an MTA-STS policy leaves some out: a host that
        // turns out to be ourselves is the best only when no better one exists at all.
        let best = targets.iter().map(|t| t.preference).min().unwrap_or(0);
        let enforced = match self
            .mta_sts_enforced(transport, &job.domain, &mut targets)
            .await
        {
            Ok(enforced) => enforced,
            Err(outcome) => return vec![outcome; pending.len()],
        };
        let mail_from = job.mail_from.clone().unwrap_or_default();
        // LMTP is final delivery into a mailbox, not transit: REQUIRETLS does not apply.
        let requiretls = mail_from.requiretls && !lmtp;
        let dane_applies = self.dane.is_some() && matches!(transport, Transport::Mx);
        if requiretls
            && let Some(refusal) = requiretls_refusal(&mail_from, enforced || dane_applies)
        {
            return vec![refusal; pending.len()];
        }
        let env = Envelope {
            from: &mail_from.address,
            rcpts: pending
                .iter()
                .map(|(index, address)| {
                    let given = job
                        .recipients
                        .iter()
                        .find(|r| r.index == *index)
                        .and_then(|r| r.recipient.as_ref());
                    EnvelopeRcpt {
                        address,
                        notify: given.and_then(notify_of),
                        orcpt: given.map_or("", |r| r.dsn_orcpt.as_str()),
                    }
                })
                .collect(),
            body: content,
            eight_bit: mail_from.body() == BodyType::EightBitMime,
            smtputf8: mail_from.smtputf8 && needs_smtputf8(&mail_from.address, pending, content),
            requiretls,
            ret: match mail_from.dsn_ret() {
                DsnReturn::Full => Some(params::DsnReturn::Full),
                DsnReturn::Headers => Some(params::DsnReturn::Headers),
                DsnReturn::Unspecified => None,
            },
            envid: &mail_from.dsn_envid,
        };
        let config = ClientConfig {
            helo: &self.hostname,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            tls: &self.tls,
            // Credentials go to smarthosts only, never to an MX host or an LMTP server.
            auth: match transport {
                Transport::Smtp { .. } => self.smarthost_auth.as_ref(),
                _ => None,
            },
            lmtp,
            verified: enforced.then_some(&self.verified_tls),
            // Mail loops through an MX record pointing at us. Postfix checks sessions on
            // port 25 only; our MX port is configurable, so MX delivery is what counts: a
            // smarthost, an `smtp:` transport (a content filter) or LMTP may well be a
            // server on this host under this name.
            own_names: match transport {
                Transport::Mx => &self.own_names,
                _ => &[],
            },
        };
        let mut last_failure = None;
        // Whether some server answered: only when none did is the destination down.
        let mut answered = false;
        // Hosts whose addresses could not be looked up for now are not tried (when none had
        // any, the lookup failed and the mail was deferred already).
        for target in targets.iter().filter(|t| !t.addrs.is_empty()) {
            // DANE (RFC 7672) for this MX host takes precedence over MTA-STS (RFC 8461 §2).
            let host_dane = match (&self.dane, transport) {
                (Some(dane), Transport::Mx) => dane.host(&job.domain, &target.host).await,
                _ => HostDane::None,
            };
            let dane_tls;
            let mut host_config = config;
            // Without MTA-STS enforcement, REQUIRETLS mail goes only to hosts whose
            // certificate DANE checks.
            let unverified = requiretls && !enforced && !host_dane.verifies();
            let required_by = match host_dane {
                HostDane::None | HostDane::Required(_) if unverified => {
                    let failure = HostFailure::NoVerifiedPath {
                        host: target.host.clone(),
                    };
                    last_failure = Some((target.host.clone(), failure, None));
                    continue;
                }
                HostDane::None => enforced.then_some("MTA-STS policy"),
                HostDane::Required(records) => {
                    dane_tls = smtp_client::tls::dane(records);
                    host_config.verified = Some(&dane_tls);
                    Some("DANE")
                }
                HostDane::Unusable(reason) => {
                    let failure = HostFailure::Unverifiable {
                        host: target.host.clone(),
                        reason,
                    };
                    last_failure = Some((target.host.clone(), failure, Some("DANE")));
                    continue;
                }
            };
            for addr in &target.addrs {
                let delivered = smtp_client::deliver(
                    *addr,
                    &target.host,
                    &host_config,
                    &env,
                    &self.connections,
                )
                .await;
                match delivered {
                    Ok(delivered) => {
                        self.unreachable.clear(&key);
                        let handoff = match (lmtp, delivered.dsn) {
                            (true, _) => Handoff::Mailbox,
                            (false, true) => Handoff::DsnRelayed,
                            (false, false) => Handoff::Relayed,
                        };
                        return delivered
                            .replies
                            .iter()
                            .map(|r| Outcome {
                                handoff,
                                ..Outcome::from_reply(
                                    r,
                                    &target.host,
                                    *addr,
                                    delivered.tls.as_ref(),
                                )
                            })
                            .collect();
                    }
                    // Hosts no better than ourselves are not tried (they would send the
                    // mail back here, as Postfix never tries them).
                    Err(failure @ HostFailure::Loop { .. }) => {
                        tracing::warn!(host = %target.host, %addr, error = %failure, "mail loop");
                        // The host stays in the log and the status; a notice names no
                        // remote MTA for it (`by_remote` is false).
                        let outcome = Outcome {
                            remote_host: target.host.clone(),
                            remote_ip: addr.ip().to_string(),
                            ..looped(&job.domain, target.preference == best)
                        };
                        return vec![outcome; pending.len()];
                    }
                    Err(failure) => {
                        tracing::info!(host = %target.host, %addr, error = %failure, "mail exchanger failed; trying the next");
                        answered |= !failure.silent();
                        last_failure = Some((target.host.clone(), failure, required_by));
                    }
                }
            }
        }
        // No server answered at all: leave the destination alone for a while.
        let silent = !answered && last_failure.as_ref().is_some_and(|(_, f, _)| f.silent());
        let outcome = match last_failure {
            Some((host, HostFailure::Refused { addr, reply }, _)) => {
                Outcome::from_reply(&reply, &host, addr, None)
            }
            // Like Postfix's smtp_skip_5xx_greeting: a server that will not talk to us is
            // that server's trouble, not a verdict on the message.
            Some((host, failure @ HostFailure::Unwelcome { addr, .. }, _)) => Outcome {
                remote_host: host,
                remote_ip: addr.ip().to_string(),
                ..Outcome::new(RecipientState::Deferred, 451, "4.4.0", failure.to_string())
            },
            Some((host, HostFailure::NoSmtpUtf8 { addr }, _)) => Outcome {
                remote_host: host,
                remote_ip: addr.ip().to_string(),
                ..Outcome::new(
                    RecipientState::Bounced,
                    553,
                    "5.6.7",
                    "the mail exchanger does not support SMTPUTF8, which this message needs".into(),
                )
            },
            Some((host, failure @ HostFailure::No8BitMime { addr }, _)) => Outcome {
                remote_host: host,
                remote_ip: addr.ip().to_string(),
                ..Outcome::new(RecipientState::Bounced, 554, "5.6.3", failure.to_string())
            },
            Some((host, failure @ HostFailure::NoRequireTls { addr }, _)) => Outcome {
                remote_host: host,
                remote_ip: addr.ip().to_string(),
                ..Outcome::new(RecipientState::Bounced, 550, "5.7.30", failure.to_string())
            },
            Some((host, failure @ HostFailure::NoVerifiedPath { .. }, _)) => Outcome {
                remote_host: host,
                ..Outcome::new(RecipientState::Bounced, 550, "5.7.30", failure.to_string())
            },
            Some((host, failure @ HostFailure::Auth { .. }, _)) => Outcome {
                remote_host: host,
                ..Outcome::new(RecipientState::Deferred, 451, "4.7.0", failure.to_string())
            },
            // RFC 8461 §5, RFC 7672 §2.2: when TLS is required, a failure defers the mail; it
            // never goes in plaintext.
            Some((
                host,
                failure @ (HostFailure::Tls { .. }
                | HostFailure::TlsRequired { .. }
                | HostFailure::Unverifiable { .. }),
                Some(required_by),
            )) => Outcome {
                remote_host: host,
                ..Outcome::new(
                    RecipientState::Deferred,
                    451,
                    "4.7.5",
                    format!("{required_by} of {}: {failure}", job.domain),
                )
            },
            Some((host, failure, _)) => Outcome {
                remote_host: host,
                ..Outcome::new(RecipientState::Deferred, 451, "4.4.1", failure.to_string())
            },
            None => Outcome::new(
                RecipientState::Deferred,
                451,
                "4.4.3",
                format!("no address to deliver to for {}", job.domain),
            ),
        };
        if silent {
            self.unreachable.mark(&key, &outcome);
        }
        vec![outcome; pending.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::{MailFrom, RecipientState, needs_smtputf8, requiretls_refusal};

    #[test]
    fn requiretls_mail_is_never_sent_over_an_unverified_path() {
        let plain = MailFrom::default();
        assert!(requiretls_refusal(&plain, false).is_none());
        let strict = MailFrom {
            requiretls: true,
            ..MailFrom::default()
        };
        assert!(requiretls_refusal(&strict, true).is_none());
        let refusal = requiretls_refusal(&strict, false).unwrap();
        assert_eq!(refusal.state, RecipientState::Bounced);
        assert_eq!(
            (refusal.reply.code, refusal.reply.enhanced.as_str()),
            (550, "5.7.30")
        );
    }

    #[test]
    fn smtputf8_needed_only_for_utf8_envelope_or_headers() {
        let ascii = vec![(0, "bob@remote.test".to_string())];
        assert!(!needs_smtputf8(
            "a@x.test",
            &ascii,
            "Subject: hi\r\n\r\nGrüße\r\n".as_bytes()
        ));
        assert!(needs_smtputf8(
            "a@x.test",
            &ascii,
            "Subject: Grüße\r\n\r\nhi\r\n".as_bytes()
        ));
        assert!(needs_smtputf8(
            "jöran@x.test",
            &ascii,
            b"Subject: hi\r\n\r\n"
        ));
        let utf8 = vec![(0, "ü@remote.test".to_string())];
        assert!(needs_smtputf8("a@x.test", &utf8, b"Subject: hi\r\n\r\n"));
    }
}

//! The SMTP client: one transaction to one host, over a cached connection when there is
//! one, encrypted with STARTTLS whenever the server offers it.

mod conn;
mod stage;
pub mod tls;
mod transaction;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mailflow_proto::v1::TlsInfo;
use mailflow_smtp::ServerReply;
use mailflow_smtp::params::{DsnReturn, Notify};
use tokio_rustls::TlsConnector;

pub use stage::Stage;
pub(crate) use transaction::BODY_PIECE;

use conn::{Ready, open};
use transaction::transaction;

/// The envelope and content of one transaction.
pub struct Envelope<'a> {
    /// The reverse path, empty for `<>`.
    pub from: &'a str,
    /// The recipients.
    pub rcpts: Vec<EnvelopeRcpt<'a>>,
    /// The content, CRLF lines, not dot-stuffed.
    pub body: &'a [u8],
    /// The client declared BODY=8BITMIME.
    pub eight_bit: bool,
    /// The transaction needs SMTPUTF8.
    pub smtputf8: bool,
    /// The sender asked for REQUIRETLS (RFC 8689): the next hop must offer it.
    pub requiretls: bool,
    /// RET= the sender gave (RFC 3461 §4.3), taken along to a next hop offering DSN.
    pub ret: Option<DsnReturn>,
    /// ENVID= the sender gave (§4.4), decoded; empty when none.
    pub envid: &'a str,
}

/// One recipient and the DSN request that goes along with it to a next hop offering DSN
/// (RFC 3461 §5.2.2), so that the notices it owes come from the hop that knows.
pub struct EnvelopeRcpt<'a> {
    /// The address.
    pub address: &'a str,
    /// NOTIFY= as given, `None` when the sender gave none.
    pub notify: Option<Notify>,
    /// ORCPT= as given (`rfc822;addr`, decoded), or empty.
    pub orcpt: &'a str,
}

/// Timeouts and our name.
#[derive(Clone, Copy)]
pub struct ClientConfig<'a> {
    /// The name sent with EHLO/HELO.
    pub helo: &'a str,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Wait for each reply.
    pub command_timeout: Duration,
    /// Starts TLS after STARTTLS.
    pub tls: &'a TlsConnector,
    /// Credentials to authenticate with (the smarthost's), if any.
    pub auth: Option<&'a Credentials>,
    /// Speak LMTP (RFC 2033) instead of SMTP.
    pub lmtp: bool,
    /// TLS is required and verified with this connector (MTA-STS enforce): no STARTTLS, a
    /// failed handshake or a certificate that does not match the host fails the host,
    /// never falling back to plaintext.
    pub verified: Option<&'a TlsConnector>,
    /// Host names that are ours: an SMTP server greeting or answering EHLO with one of them
    /// is ourselves (not checked over LMTP, as with Postfix).
    pub own_names: &'a [String],
}

/// A user name and password for AUTH PLAIN (RFC 4954, RFC 4616).
#[derive(Clone)]
pub struct Credentials {
    /// The authentication identity.
    pub username: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Why the transaction failed as a whole (before any recipient got its own answer).
#[derive(Debug, thiserror::Error)]
pub enum HostFailure {
    /// Could not connect.
    #[error("connect to {addr} failed: {reason}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The connection broke or timed out.
    #[error("lost connection with {addr} while {stage}: {reason}")]
    Lost {
        /// The address.
        addr: SocketAddr,
        /// What we were doing.
        stage: Stage,
        /// Why.
        reason: String,
    },
    /// The server greeted with a permanent refusal (5xx): it will not talk to us.
    #[error("{addr} refused to talk to us: {} {}", reply.code, reply.text())]
    Unwelcome {
        /// The address.
        addr: SocketAddr,
        /// The greeting.
        reply: ServerReply,
    },
    /// The server gave our own host name: the session is with ourselves, and the mail
    /// would come back here (an MX or transport pointing at us).
    #[error(
        "{addr} greeted us as {name}, our own name: mail for this destination loops back to us"
    )]
    Loop {
        /// The address.
        addr: SocketAddr,
        /// The name it gave.
        name: String,
    },
    /// The server refused the session or the sender.
    #[error("{addr} said: {} {}", reply.code, reply.text())]
    Refused {
        /// The address.
        addr: SocketAddr,
        /// The refusal.
        reply: ServerReply,
    },
    /// Authentication was needed and failed, or could not be done safely (no TLS, no AUTH
    /// PLAIN); deferred, never bounced: the fix is on our side.
    #[error("authentication with {addr} failed: {reason}")]
    Auth {
        /// The address.
        addr: SocketAddr,
        /// Why, with the server's reply when it gave one.
        reason: String,
    },
    /// The TLS handshake after STARTTLS failed.
    #[error("TLS with {addr} failed: {reason}")]
    Tls {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The message requires REQUIRETLS and the server does not offer it (RFC 8689 §4.2.1).
    #[error("{addr} does not offer REQUIRETLS, which the sender asked for")]
    NoRequireTls {
        /// The address.
        addr: SocketAddr,
    },
    /// The host cannot be used safely: its DANE TLSA records could not be looked up or
    /// validated (RFC 7672 §2.2).
    #[error("{host}: {reason}")]
    Unverifiable {
        /// The MX host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The message requires REQUIRETLS and this host has no verified TLS path: neither
    /// MTA-STS in enforce mode nor DANE TLSA records (RFC 8689 §4.2.1).
    #[error("{host} has no verified TLS path (neither MTA-STS nor DANE), which REQUIRETLS needs")]
    NoVerifiedPath {
        /// The MX host.
        host: String,
    },
    /// TLS is required (MTA-STS) and the server does not offer STARTTLS.
    #[error("{addr} does not offer STARTTLS, which the destination's policy requires")]
    TlsRequired {
        /// The address.
        addr: SocketAddr,
    },
    /// The content has 8-bit octets and the server lacks 8BITMIME (RFC 6152 §3).
    #[error("{addr} does not support 8BITMIME, which this message needs")]
    No8BitMime {
        /// The address.
        addr: SocketAddr,
    },
    /// The transaction needs SMTPUTF8 and the server lacks it (RFC 6531 §3.4).
    #[error("{addr} does not support SMTPUTF8")]
    NoSmtpUtf8 {
        /// The address.
        addr: SocketAddr,
    },
}

impl HostFailure {
    /// True when the server never answered: the connection failed, or it gave no
    /// greeting. Only such a failure says the destination is down (Postfix's dead hosts); a
    /// session lost later is one message's failure.
    pub fn silent(&self) -> bool {
        match self {
            HostFailure::Connect { .. } => true,
            HostFailure::Lost { stage, .. } => *stage == Stage::Greeting,
            _ => false,
        }
    }
}

/// How long an idle connection is kept for the next message to the same address (Postfix
/// keeps them 2 s by default; servers commonly allow minutes).
const REUSE_TIME: Duration = Duration::from_secs(5);
/// Idle connections kept per address.
const MAX_IDLE_PER_ADDR: usize = 20;

/// What an idle connection is kept under: the address, the host name it was opened for,
/// whether it speaks LMTP, and whether its TLS was verified. An opportunistic session never
/// serves a delivery that requires verification, and a session verified for one host name
/// never serves another at the same address (whose certificate was not checked).
type CacheKey = (SocketAddr, String, bool, bool);

/// Idle connections, so consecutive messages to one destination skip the connect, greeting
/// and EHLO.
#[derive(Default)]
pub struct ConnectionCache {
    /// Idle, ready connections.
    idle: Mutex<HashMap<CacheKey, Vec<Ready>>>,
}

impl ConnectionCache {
    fn take(&self, key: CacheKey) -> Option<Ready> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&key)?;
        while let Some(ready) = list.pop() {
            if ready.idle_since.elapsed() < REUSE_TIME {
                return Some(ready);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, mut ready: Ready) {
        ready.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let key = (addr, ready.host.clone(), ready.lmtp, ready.verified);
        let list = idle.entry(key).or_default();
        list.retain(|r| r.idle_since.elapsed() < REUSE_TIME);
        if list.len() < MAX_IDLE_PER_ADDR {
            list.push(ready);
        }
    }
}

/// What a transaction produced.
pub struct Delivered {
    /// Each recipient's final reply: its RCPT refusal, or the reply to the end of DATA.
    pub replies: Vec<ServerReply>,
    /// The TLS session it ran over.
    pub tls: Option<TlsInfo>,
    /// The server offered DSN, so the DSN requests went along: notices about the accepted
    /// recipients are its to send now.
    pub dsn: bool,
}

/// Runs one transaction with the server at `addr` (named `host`, for SNI), on a cached
/// connection when there is one.
pub async fn deliver(
    addr: SocketAddr,
    host: &str,
    config: &ClientConfig<'_>,
    env: &Envelope<'_>,
    cache: &ConnectionCache,
) -> Result<Delivered, HostFailure> {
    let key = (
        addr,
        host.to_string(),
        config.lmtp,
        config.verified.is_some(),
    );
    if let Some(mut ready) = cache.take(key) {
        match transaction(&mut ready, env).await {
            // The server closed the idle connection (or says it will): start afresh.
            Err(HostFailure::Lost {
                stage: Stage::MailFrom,
                ..
            }) => {}
            Err(HostFailure::Refused { reply, .. }) if reply.code == 421 => {}
            result => return finish(addr, ready, result, cache).await,
        }
    }
    let mut ready = match open(addr, host, config, true).await {
        // A failed handshake leaves no usable session; like Postfix at security level
        // "may", try again in plaintext rather than not deliver (unless TLS is required).
        Err(HostFailure::Tls { reason, .. }) if config.verified.is_none() => {
            tracing::info!(%addr, %reason, "TLS handshake failed; retrying without TLS");
            open(addr, host, config, false).await?
        }
        other => other?,
    };
    let result = transaction(&mut ready, env).await;
    finish(addr, ready, result, cache).await
}

/// Keeps a healthy connection for the next message; ends the others politely.
async fn finish(
    addr: SocketAddr,
    mut ready: Ready,
    result: Result<Vec<ServerReply>, HostFailure>,
    cache: &ConnectionCache,
) -> Result<Delivered, HostFailure> {
    let tls = ready.tls.clone();
    let dsn = ready.has("DSN");
    match &result {
        Ok(_) => cache.put(addr, ready),
        Err(HostFailure::Lost { .. }) => {}
        Err(_) => {
            // The outcome is already decided.
            ready.conn.quit().await;
        }
    }
    result.map(|replies| Delivered { replies, tls, dsn })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_server_that_never_answered_is_silent() {
        let addr = SocketAddr::from(([192, 0, 2, 1], 25));
        let lost = |stage| HostFailure::Lost {
            addr,
            stage,
            reason: "timeout".into(),
        };
        let refused = HostFailure::Connect {
            addr,
            reason: "connection refused".into(),
        };
        assert!(refused.silent());
        assert!(lost(Stage::Greeting).silent());
        assert!(!lost(Stage::EndOfData).silent());
        assert!(!lost(Stage::MailFrom).silent());
    }
}

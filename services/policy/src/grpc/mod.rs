//! The gRPC services: `Policy` (in-session checks), `Directory` and `Quarantine`.

mod directory;
mod quarantine;

pub use directory::DirectoryService;
pub use quarantine::QuarantineService;

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use ipnet::IpNet;
use mail_auth::MessageAuthenticator;
use mailflow_dns::MxResolver;
use mailflow_proto::v1::{
    AuthenticateRequest, AuthenticateResponse, CheckConnectionRequest, CheckRecipientRequest,
    CheckSenderRequest, SessionInfo, Verdict, authenticate_response::Result as AuthResult,
    policy_server, verdict::Action,
};
use mailflow_smtp::address;
use tonic::{Request, Response, Status};

use crate::auth::{self, AuthError, FailureCounter};
use crate::checks::{self, Client, Destination};
use crate::directory::{Directory, DirectoryError};
use crate::rate::RateLimiter;
use crate::scan::verify::{self, Envelope};

/// gRPC `Policy`.
pub struct PolicyService {
    /// SPF lookups of senders, over the same resolver as `dns`.
    pub authenticator: MessageAuthenticator,
    /// Where local domains and users are looked up.
    pub directory: Directory,
    /// Networks allowed to relay without authentication.
    pub relay_networks: Vec<IpNet>,
    /// Failed AUTH attempts per client IP.
    pub failures: FailureCounter,
    /// Where remote domains' mail goes (null MX, unknown domains); answers cached by TTL.
    pub dns: MxResolver,
    /// Message and connection rate limits, when configured.
    pub rates: Option<RateLimiter>,
    /// DNS blocklists asked about connecting clients.
    pub dnsbl_zones: Vec<String>,
    /// Refuse senders whose SPF result is `fail` (or a temporary error).
    pub spf_enforce: bool,
    /// Our name, the SPF "receiving host" (`%{r}`).
    pub hostname: String,
}

impl PolicyService {
    /// The sender check before rate limits: ownership for an authenticated client, the
    /// domain for an unauthenticated one on the MX port.
    async fn sender_verdict(
        &self,
        ip: IpAddr,
        session: &SessionInfo,
        sender: &str,
    ) -> Result<Verdict, Status> {
        let identity = &session.auth_identity;
        if sender.is_empty() {
            // The null sender of notifications is always allowed.
            return Ok(checks::decide_sender(sender, identity, true));
        }
        if !identity.is_empty() {
            let owned = self
                .directory
                .view(|d| d.owns(identity, sender))
                .await
                .map_err(unavailable_dir)?;
            return Ok(checks::decide_sender(sender, identity, owned));
        }
        let trusted = checks::trusted(ip, &self.relay_networks);
        // Only an unauthenticated sender from outside on the MX port has its domain checked.
        let domain = address::parse_mailbox(sender)
            .ok()
            .filter(|m| !m.is_address_literal() && session.listener == "mx" && !trusted)
            .map(|m| m.domain);
        let Some(domain) = domain else {
            return Ok(checks::decide_sender(sender, "", true));
        };
        // Our own domains exist; whether a client may use them is SPF's and DMARC's concern.
        let local = self
            .directory
            .view(|dir| dir.is_local(&domain))
            .await
            .map_err(unavailable_dir)?;
        if local {
            return Ok(checks::decide_sender(sender, "", true));
        }
        let verdict = checks::decide_sender_domain(sender, &self.mail_domain(&domain).await);
        if verdict.action() != Action::Accept {
            return Ok(verdict);
        }
        let envelope = Envelope {
            ip,
            helo: &session.helo,
            mail_from: sender,
        };
        let spf = verify::spf(&self.authenticator, &self.hostname, envelope)
            .await
            .result();
        tracing::debug!(%sender, client = %ip, spf = %spf, "SPF evaluated");
        Ok(Verdict {
            spf: verify::spf_name(spf),
            ..checks::decide_spf(sender, spf, self.spf_enforce)
        })
    }

    /// What DNS says about a domain's mail: `Ok` when it has somewhere to go.
    async fn mail_domain(&self, domain: &str) -> Result<(), mailflow_dns::ResolveError> {
        self.dns.targets(domain).await.map(|_| ())
    }
}

/// Records a check's latency in `mailflow_policy_check_seconds` when dropped, whichever
/// way the handler returns.
struct Timed {
    /// The check's name (the metric's label).
    check: &'static str,
    /// When the request arrived.
    started: Instant,
}

impl Timed {
    fn start(check: &'static str) -> Self {
        Self {
            check,
            started: Instant::now(),
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        metrics::histogram!("mailflow_policy_check_seconds", "check" => self.check)
            .record(self.started.elapsed().as_secs_f64());
    }
}

fn client_ip(session: Option<&SessionInfo>) -> Result<IpAddr, Status> {
    let session = session.ok_or_else(|| Status::invalid_argument("session is required"))?;
    session
        .client_ip
        .parse()
        .map_err(|_| Status::invalid_argument("session.client_ip is not an IP address"))
}

fn unavailable_dir(e: DirectoryError) -> Status {
    tracing::warn!(error = %e, "directory lookup failed");
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl policy_server::Policy for PolicyService {
    async fn check_connection(
        &self,
        request: Request<CheckConnectionRequest>,
    ) -> Result<Response<Verdict>, Status> {
        let _timed = Timed::start("connection");
        let ip = client_ip(request.into_inner().session.as_ref())?;
        let accept = |no_cache| Verdict {
            no_cache,
            ..checks::accept()
        };
        // Trusted networks are neither counted nor looked up (like Postfix's
        // smtpd_client_event_limit_exceptions and a permit_mynetworks first).
        if checks::trusted(ip, &self.relay_networks) {
            return Ok(Response::new(accept(false)));
        }
        let counted = self.rates.as_ref().filter(|r| r.limits_connections());
        if let Some(limiter) = counted
            && let Some(refusal) = limiter
                .connection(ip, SystemTime::now())
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?
        {
            return Ok(Response::new(refusal));
        }
        for zone in &self.dnsbl_zones {
            if self.dns.listed(ip, zone).await {
                tracing::info!(client = %ip, %zone, "client on a blocklist");
                return Ok(Response::new(checks::blocklisted(ip, zone)));
            }
        }
        Ok(Response::new(accept(counted.is_some())))
    }

    async fn check_recipient(
        &self,
        request: Request<CheckRecipientRequest>,
    ) -> Result<Response<Verdict>, Status> {
        let _timed = Timed::start("recipient");
        let req = request.into_inner();
        let ip = client_ip(req.session.as_ref())?;
        let authenticated = req
            .session
            .as_ref()
            .is_some_and(|s| !s.auth_identity.is_empty());
        let Ok(rcpt) = address::parse_mailbox(&req.recipient) else {
            return Ok(Response::new(checks::bad_address(&req.recipient)));
        };
        let client = Client {
            ip,
            authenticated,
            relay_networks: &self.relay_networks,
        };
        let local = if rcpt.is_address_literal() {
            None
        } else {
            self.directory
                .view(|d| {
                    d.is_local(&rcpt.domain).then(|| {
                        if d.exists(&rcpt.plain_local(), &rcpt.domain) {
                            Destination::LocalUser
                        } else {
                            Destination::UnknownLocalUser
                        }
                    })
                })
                .await
                .map_err(unavailable_dir)?
        };
        let dest = match local {
            Some(dest) => dest,
            None if checks::needs_dns(&rcpt, client) => {
                Destination::Remote(self.mail_domain(&rcpt.domain).await)
            }
            None => Destination::Remote(Ok(())),
        };
        Ok(Response::new(checks::decide_recipient(
            &rcpt, &dest, client,
        )))
    }

    async fn check_sender(
        &self,
        request: Request<CheckSenderRequest>,
    ) -> Result<Response<Verdict>, Status> {
        let _timed = Timed::start("sender");
        let req = request.into_inner();
        let ip = client_ip(req.session.as_ref())?;
        let session = req.session.unwrap_or_default();
        let mut verdict = self.sender_verdict(ip, &session, &req.sender).await?;
        if let Some(limiter) = self.rates.as_ref().filter(|r| r.limits_messages()) {
            // Only a message that would otherwise start counts against the limits.
            if verdict.action() == Action::Accept
                && let Some(refusal) = limiter
                    .hit(ip, &session.auth_identity, SystemTime::now())
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?
            {
                verdict = refusal;
            }
            verdict.no_cache = true;
        }
        Ok(Response::new(verdict))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let _timed = Timed::start("authenticate");
        let req = request.into_inner();
        let ip = client_ip(req.session.as_ref())?;
        let answer = |result: AuthResult, identity: String| {
            Ok(Response::new(AuthenticateResponse {
                result: result as i32,
                identity,
            }))
        };
        let unavailable = |e: AuthError| Status::unavailable(e.to_string());
        if self.failures.exhausted(ip).await.map_err(unavailable)? {
            tracing::warn!(client = %ip, "AUTH refused: too many failures");
            return answer(AuthResult::TooManyFailures, String::new());
        }
        let user = match address::parse_mailbox(&req.username) {
            Ok(m) => self
                .directory
                .user(&m.plain_local(), &m.domain)
                .await
                .map_err(unavailable_dir)?,
            Err(_) => None,
        };
        let verified = match user {
            Some(user) => {
                let password = req.password;
                tokio::task::spawn_blocking(move || {
                    auth::verify(&user, &password).then_some(user.address)
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?
            }
            None => None,
        };
        match verified {
            Some(identity) => {
                tracing::info!(client = %ip, %identity, mechanism = %req.mechanism, "AUTH succeeded");
                answer(AuthResult::Ok, identity)
            }
            None => {
                self.failures
                    .record_failure(ip)
                    .await
                    .map_err(unavailable)?;
                tracing::warn!(client = %ip, username = %req.username, mechanism = %req.mechanism, "AUTH failed");
                answer(AuthResult::BadCredentials, String::new())
            }
        }
    }
}

//! MTA-STS (RFC 8461) for the relay: a domain's policy is looked up in DNS
//! (`_mta-sts.<domain>` TXT), fetched over HTTPS from `mta-sts.<domain>` with a verified
//! certificate, and cached for its `max_age`. A cached policy keeps applying while DNS or
//! the policy host are unreachable or stripped (§5.1): that is what defeats a downgrade.
//! The parsing is in `crates/mta-sts`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailflow_dns::MxResolver;
use mailflow_mta_sts::http::{self, HttpError};
use mailflow_mta_sts::{Mode, Policy, PolicyError, record_id};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// The largest policy response read (§3.3 suggests 64 KiB for the body).
const MAX_RESPONSE: u64 = 64 * 1024 + 8 * 1024;

/// Why a policy could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The policy host has no address, or DNS failed.
    #[error("policy host: {0}")]
    Resolve(#[from] mailflow_dns::ResolveError),
    /// Connecting, the TLS handshake (an unverifiable certificate) or reading failed.
    #[error("fetching the policy: {0}")]
    Io(String),
    /// The response is not HTTP.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The response is not `200` with `text/plain`.
    #[error("policy host answered {status} ({media_type})")]
    Status {
        /// The status code.
        status: u16,
        /// The media type.
        media_type: String,
    },
    /// The policy is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// A cached policy.
struct Cached {
    /// The id of the DNS record it was fetched for.
    id: String,
    /// The policy.
    policy: Arc<Policy>,
    /// When `max_age` runs out.
    expires: Instant,
}

/// Policies of destination domains, per relay process.
pub struct MtaSts {
    /// TXT and address lookups.
    resolver: MxResolver,
    /// Verified TLS towards the policy hosts.
    tls: TlsConnector,
    /// The HTTPS port of policy hosts (443).
    port: u16,
    /// How long a fetch may take.
    timeout: Duration,
    /// Policies by domain.
    cache: Mutex<HashMap<String, Cached>>,
}

impl MtaSts {
    /// Looks up policies with `resolver` and fetches them over `tls` on `port`.
    pub fn new(resolver: MxResolver, tls: TlsConnector, port: u16, timeout: Duration) -> Self {
        Self {
            resolver,
            tls,
            port,
            timeout,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The policy that applies to `domain`, if any (a `none` policy counts as none).
    pub async fn policy(&self, domain: &str) -> Option<Arc<Policy>> {
        let domain = domain.to_ascii_lowercase();
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(&domain)
                .filter(|c| c.expires > Instant::now())
                .map(|c| (c.id.clone(), c.policy.clone()))
        };
        let id = match self.resolver.txt(&format!("_mta-sts.{domain}")).await {
            Ok(records) => {
                let ids: Vec<&str> = records.iter().filter_map(|r| record_id(r).ok()).collect();
                // More than one record is no record (§3.1).
                (ids.len() == 1).then(|| ids[0].to_string())
            }
            Err(e) => {
                tracing::debug!(%domain, error = %e, "MTA-STS record lookup failed");
                None
            }
        };
        let policy = match (id, cached) {
            (Some(id), Some((cached_id, policy))) if cached_id == id => Some(policy),
            (Some(id), cached) => match self.fetch(&domain).await {
                Ok(policy) => {
                    let policy = Arc::new(policy);
                    let entry = Cached {
                        id,
                        policy: policy.clone(),
                        expires: Instant::now() + policy.max_age,
                    };
                    self.cache
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(domain.clone(), entry);
                    tracing::info!(%domain, mode = ?policy.mode, "MTA-STS policy fetched");
                    Some(policy)
                }
                Err(e) => {
                    tracing::warn!(%domain, error = %e, "MTA-STS policy not fetched; using the cached one if any");
                    cached.map(|(_, p)| p)
                }
            },
            (None, cached) => cached.map(|(_, p)| p),
        };
        policy.filter(|p| p.mode != Mode::None)
    }

    /// Fetches `https://mta-sts.<domain>/.well-known/mta-sts.txt`, without redirects.
    async fn fetch(&self, domain: &str) -> Result<Policy, FetchError> {
        let host = format!("mta-sts.{domain}");
        let addrs = self.resolver.addresses(&host, self.port).await?;
        let io = |e: &dyn std::fmt::Display| FetchError::Io(e.to_string());
        let name = ServerName::try_from(host.clone()).map_err(|e| io(&e))?;
        // One address after another: a policy host whose first address fails (an IPv6
        // route missing, one server down) is still asked at its others.
        let exchange = async {
            let mut last = FetchError::Io("no address".into());
            for addr in addrs {
                let attempt = async {
                    let tcp = TcpStream::connect(addr).await.map_err(|e| io(&e))?;
                    let mut tls = self
                        .tls
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| io(&e))?;
                    tls.write_all(http::request(domain).as_bytes())
                        .await
                        .map_err(|e| io(&e))?;
                    // A TLS stream may keep what the socket did not take until flushed.
                    tls.flush().await.map_err(|e| io(&e))?;
                    let mut response = Vec::new();
                    match (&mut tls)
                        .take(MAX_RESPONSE)
                        .read_to_end(&mut response)
                        .await
                    {
                        Ok(_) => Ok(response),
                        // Many servers close without close_notify; the response is whole
                        // when it parses (a truncated one does not).
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(response),
                        Err(e) => Err(io(&e)),
                    }
                };
                match attempt.await {
                    Ok(response) => return Ok(response),
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "MTA-STS policy host address failed; trying the next");
                        last = e;
                    }
                }
            }
            Err(last)
        };
        let response = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| FetchError::Io("timeout".into()))??;
        let response = http::parse_response(&response)?;
        if response.status != 200 || response.media_type != "text/plain" {
            return Err(FetchError::Status {
                status: response.status,
                media_type: response.media_type,
            });
        }
        Ok(Policy::parse(&String::from_utf8_lossy(&response.body))?)
    }
}

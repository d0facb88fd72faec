//! Finding where a domain's mail goes: MX records in RFC 5321 §5.1 order, the implicit MX
//! (A/AAAA) when there is none, and the null MX of RFC 7505.

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::dnssec::TrustAnchors;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};

/// One host to try, with its addresses (none when they could not be looked up for now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host name (the MX exchange, or the domain itself).
    pub host: String,
    /// Its addresses with the SMTP port.
    pub addrs: Vec<SocketAddr>,
    /// Its MX preference (0 for the domain itself when it has no MX, and for a fixed
    /// server): the lowest is the best MX.
    pub preference: u16,
}

/// Why no target could be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The domain publishes a null MX: it accepts no mail (RFC 7505).
    #[error("domain {0} does not accept mail (null MX)")]
    NullMx(String),
    /// The domain does not exist.
    #[error("domain {0} not found")]
    NoSuchDomain(String),
    /// The domain exists but has no MX and no address.
    #[error("no mail exchanger or address for {0}")]
    NoAddress(String),
    /// DNS failed; try again later.
    #[error("DNS lookup for {domain} failed: {reason}")]
    Temporary {
        /// The name looked up.
        domain: String,
        /// The resolver's error.
        reason: String,
    },
}

impl ResolveError {
    /// True when retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, ResolveError::Temporary { .. })
    }
}

/// An address as a DNSBL query name (RFC 5782 §2.1 and §2.4): IPv4 octets reversed,
/// IPv6 nibbles reversed.
pub fn reversed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .rev()
            .flat_map(|byte| [byte & 0x0f, byte >> 4])
            .map(|nibble| format!("{nibble:x}"))
            .collect::<Vec<_>>()
            .join("."),
    }
}

/// RFC 5321 §5.1: the lowest preference first, and hosts of equal preference in random
/// order (`random` decides), so that senders spread their load over them.
pub fn by_preference(mut mx: Vec<(u16, String)>, random: &impl BuildHasher) -> Vec<(u16, String)> {
    mx.sort_by_cached_key(|(preference, host)| (*preference, random.hash_one(host)));
    mx
}

/// Resolves destinations with hickory.
#[derive(Clone)]
pub struct MxResolver {
    /// The hickory resolver (it caches answers by TTL).
    resolver: TokioResolver,
    /// The SMTP port of mail exchangers (25).
    port: u16,
}

/// Why the resolver could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the DNS resolver: {0}")]
pub struct ResolverSetupError(String);

/// A hickory resolver over `servers` (the system's when empty); `validation` asks for
/// DNSSEC validation, with a trust anchor file or the root's keys.
fn resolver(
    servers: &[SocketAddr],
    validation: Option<Option<&std::path::Path>>,
) -> Result<TokioResolver, ResolverSetupError> {
    let err = |e: hickory_resolver::net::NetError| ResolverSetupError(e.to_string());
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio().map_err(err)?
    } else {
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                for conn in &mut ns.connections {
                    conn.port = s.port();
                }
                ns
            })
            .collect();
        let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);
        Resolver::builder_with_config(config, TokioRuntimeProvider::default())
    };
    match validation {
        Some(Some(path)) => {
            let anchors = TrustAnchors::from_file(path)
                .map_err(|e| ResolverSetupError(format!("{}: {e}", path.display())))?;
            builder = builder.with_trust_anchor(std::sync::Arc::new(anchors));
        }
        Some(None) => builder.options_mut().validate = true,
        None => {}
    }
    builder.build().map_err(err)
}

impl MxResolver {
    /// A resolver using `servers`, or the system's nameservers when empty.
    pub fn new(servers: &[SocketAddr], port: u16) -> Result<Self, ResolverSetupError> {
        Ok(Self {
            resolver: resolver(servers, None)?,
            port,
        })
    }

    /// A DNSSEC-validating resolver over `servers` (answers carry their proof), trusting
    /// the root's keys, or the DNSKEY records of the `trust_anchor` file when given.
    pub fn validating(
        servers: &[SocketAddr],
        trust_anchor: Option<&std::path::Path>,
    ) -> Result<TokioResolver, ResolverSetupError> {
        resolver(servers, Some(trust_anchor))
    }

    /// The hickory resolver underneath, for other lookups over the same nameservers and
    /// cache (SPF, DKIM and DMARC records).
    pub fn hickory(&self) -> TokioResolver {
        self.resolver.clone()
    }

    /// True when `ip` is listed in the DNS blocklist `zone` (RFC 5782: an A record in
    /// 127.0.0.0/8 for the reversed address under the zone). A lookup that fails counts as
    /// not listed: a broken blocklist must not stop mail.
    pub async fn listed(&self, ip: IpAddr, zone: &str) -> bool {
        let name = format!("{}.{}.", reversed(ip), zone.trim_end_matches('.'));
        match self.resolver.ipv4_lookup(name.as_str()).await {
            Ok(answer) => answer
                .answers()
                .iter()
                .any(|r| matches!(&r.data, RData::A(a) if a.0.octets()[0] == 127)),
            Err(_) => false,
        }
    }

    /// The TXT records at `name`, each one's strings joined (RFC 7208 §3.3, RFC 8461
    /// §3.1); none when the name or the records do not exist.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, ResolveError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.txt_lookup(fqdn.as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(ResolveError::Temporary {
                domain: name.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// The addresses of `host` with `port`.
    pub async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(ips) => Ok(ips.iter().map(|ip| SocketAddr::new(ip, port)).collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => {
                Err(ResolveError::NoAddress(host.to_string()))
            }
            Err(e) => Err(ResolveError::Temporary {
                domain: host.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// The hosts to try for `domain`, most preferred first.
    pub async fn targets(&self, domain: &str) -> Result<Vec<Target>, ResolveError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let temporary = |e: &dyn std::fmt::Display| ResolveError::Temporary {
            domain: domain.to_string(),
            reason: e.to_string(),
        };
        let hosts = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mx: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                if mx.len() == 1 && mx[0].1.trim_end_matches('.').is_empty() {
                    return Err(ResolveError::NullMx(domain.to_string()));
                }
                by_preference(mx, &RandomState::new())
            }
            Err(e) if e.is_nx_domain() => {
                return Err(ResolveError::NoSuchDomain(domain.to_string()));
            }
            // No MX records: the domain itself is the implicit MX (RFC 5321 §5.1).
            Err(e) if e.is_no_records_found() => vec![(0, fqdn.clone())],
            Err(e) => return Err(temporary(&e)),
        };
        let mut targets = Vec::new();
        let mut last_error = None;
        for (preference, host) in hosts {
            let addrs = match self.resolver.lookup_ip(host.as_str()).await {
                Ok(ips) => ips
                    .iter()
                    .map(|ip: IpAddr| SocketAddr::new(ip, self.port))
                    .collect(),
                Err(e) if e.is_nx_domain() || e.is_no_records_found() => continue,
                // Kept without addresses: it is still an MX host of the domain, one that
                // may answer later, and it outranks the hosts after it (a host that turns
                // out to be ourselves is the best MX only when no better one exists).
                Err(e) => {
                    last_error = Some(temporary(&e));
                    Vec::new()
                }
            };
            targets.push(Target {
                host: host.trim_end_matches('.').to_string(),
                addrs,
                preference,
            });
        }
        if targets.iter().any(|t| !t.addrs.is_empty()) {
            return Ok(targets);
        }
        Err(last_error.unwrap_or_else(|| ResolveError::NoAddress(domain.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsbl_names_reverse_the_address() {
        assert_eq!(reversed("192.0.2.99".parse().unwrap()), "99.2.0.192");
        let v6 = reversed("2001:db8:1:2:3:4:567:89ab".parse().unwrap());
        assert_eq!(
            v6,
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2"
        );
    }

    #[test]
    fn preference_first_and_equal_ones_shuffled() {
        let mx = || {
            vec![
                (20, "backup.test.".to_string()),
                (10, "a.test.".to_string()),
                (10, "b.test.".to_string()),
            ]
        };
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..64 {
            let order = by_preference(mx(), &RandomState::new());
            assert_eq!(order[2], (20, "backup.test.".to_string()));
            firsts.insert(order[0].1.clone());
        }
        assert_eq!(
            firsts.len(),
            2,
            "both equal-preference hosts come first sometimes"
        );
    }
}

//! DANE for SMTP (RFC 7672): when a destination's MX records and an MX host's TLSA records
//! are DNSSEC-validated, the connection to that host must use TLS and its certificate must
//! match a usable TLSA record (DANE-TA or DANE-EE); otherwise the mail is deferred, never
//! sent in plaintext. Lookups go through a validating resolver; matching is in
//! [`matches`], pure and unit-tested.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::dnssec::Proof;
use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_resolver::proto::rr::{RData, RecordType};
use rustls::RootCertStore;
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;

/// A usable TLSA record (RFC 7672 §3.1: PKIX usages are not usable for SMTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// True for DANE-TA (2): a trust anchor in the chain; false for DANE-EE (3).
    pub trust_anchor: bool,
    /// True when the record selects the SubjectPublicKeyInfo, false for the whole
    /// certificate.
    pub spki: bool,
    /// `Raw`, `Sha256` or `Sha512`.
    pub matching: Matching,
    /// The association data.
    pub data: Vec<u8>,
}

/// What DANE asks of one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostDane {
    /// No secure TLSA records: opportunistic TLS (or MTA-STS) as usual.
    None,
    /// TLS is mandatory and the certificate must match one of these; with none usable,
    /// TLS is still mandatory but unauthenticated (RFC 7672 §2.2).
    Required(Vec<Tlsa>),
    /// The TLSA lookup failed or did not validate: the host must not be used (§2.2).
    Unusable(String),
}

impl HostDane {
    /// True when the host's certificate will be checked against its records: secure TLSA
    /// records, at least one of them usable (with none usable TLS is mandatory but checks
    /// no certificate).
    pub fn verifies(&self) -> bool {
        matches!(self, HostDane::Required(records) if !records.is_empty())
    }
}

/// How long a domain's DNSSEC status is remembered: proving that a zone is unsigned can
/// take several lookups up the tree, and most domains are unsigned. A failed lookup is not
/// remembered.
const SECURE_FOR: Duration = Duration::from_secs(300);

/// What DNSSEC says of a domain's MX records.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MxProof {
    /// Validated: its hosts' TLSA records count (§2.2.1).
    Secure,
    /// Provably unsigned (or no MX records): no DANE.
    Insecure,
    /// The answer failed validation (bogus or indeterminate) or could not be had: the
    /// records may be forged and DANE stripped, so none of its hosts may be used and the
    /// mail waits (§2.1.1).
    Failed(String),
}

/// What the DNSSEC proofs of one answer's records come to.
fn proof_of(proofs: impl IntoIterator<Item = Proof>) -> Result<bool, Proof> {
    let mut secure = true;
    for proof in proofs {
        match proof {
            Proof::Secure => {}
            Proof::Insecure => secure = false,
            failed => return Err(failed),
        }
    }
    Ok(secure)
}

/// DNSSEC-validated lookups for DANE.
pub struct Dane {
    /// The validating resolver.
    resolver: TokioResolver,
    /// The SMTP port, part of the TLSA name (`_25._tcp.<host>`).
    port: u16,
    /// What DNSSEC says of each domain's MX records, once known, and since when; the
    /// first delivery to a domain looks it up and concurrent ones wait for that answer
    /// (a burst of mail to a new domain makes one validation, not one per message).
    secure: Mutex<HashMap<String, Arc<SecureCell>>>,
}

/// A domain's DNSSEC status, looked up once.
struct SecureCell {
    /// When the lookup started; it is redone after [`SECURE_FOR`].
    since: Instant,
    /// The answer, once there.
    secure: tokio::sync::OnceCell<MxProof>,
}

impl Dane {
    /// Looks up through `resolver`, which must validate.
    pub fn new(resolver: TokioResolver, port: u16) -> Self {
        Self {
            resolver,
            port,
            secure: Mutex::new(HashMap::new()),
        }
    }

    /// What DNSSEC says of the MX records of `domain`: only when they are secure do its
    /// hosts' TLSA records count (§2.2.1).
    async fn mx_proof(&self, domain: &str) -> MxProof {
        let cell = {
            let mut map = self.secure.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if map.len() > 10_000 {
                map.retain(|_, c| now.duration_since(c.since) < SECURE_FOR);
            }
            let fresh = || {
                Arc::new(SecureCell {
                    since: now,
                    secure: tokio::sync::OnceCell::new(),
                })
            };
            let cell = map.entry(domain.to_string()).or_insert_with(fresh);
            if now.duration_since(cell.since) >= SECURE_FOR {
                *cell = fresh();
            }
            cell.clone()
        };
        let proof = cell
            .secure
            .get_or_init(|| async {
                let fqdn = format!("{}.", domain.trim_end_matches('.'));
                match self.resolver.mx_lookup(fqdn.as_str()).await {
                    Ok(lookup) => {
                        let answers = lookup.answers();
                        match proof_of(answers.iter().map(|r| r.proof)) {
                            Ok(secure) if secure && !answers.is_empty() => MxProof::Secure,
                            Ok(_) => MxProof::Insecure,
                            Err(proof) => MxProof::Failed(format!(
                                "the MX records of {domain} failed DNSSEC validation ({proof})"
                            )),
                        }
                    }
                    // No MX records: the address fallback is not DANE's concern here.
                    Err(e) if e.is_no_records_found() || e.is_nx_domain() => MxProof::Insecure,
                    Err(e) => MxProof::Failed(format!(
                        "the MX records of {domain} could not be validated: {e}"
                    )),
                }
            })
            .await
            .clone();
        if matches!(proof, MxProof::Failed(_)) {
            // Asked again by the next delivery rather than remembered.
            let mut map = self.secure.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(domain).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                map.remove(domain);
            }
        }
        proof
    }

    /// What DANE asks of `host`, an MX host of `domain`.
    pub async fn host(&self, domain: &str, host: &str) -> HostDane {
        match self.mx_proof(domain).await {
            MxProof::Secure => {}
            MxProof::Insecure => return HostDane::None,
            MxProof::Failed(reason) => return HostDane::Unusable(reason),
        }
        let name = format!("_{}._tcp.{}.", self.port, host.trim_end_matches('.'));
        match self.resolver.lookup(name.as_str(), RecordType::TLSA).await {
            Ok(lookup) => {
                let answers = lookup.answers();
                match proof_of(answers.iter().map(|r| r.proof)) {
                    Ok(true) => {}
                    // Insecure TLSA records are ignored (§2.2).
                    Ok(false) => return HostDane::None,
                    // Bogus or indeterminate: the host must not be used (§2.2).
                    Err(proof) => {
                        return HostDane::Unusable(format!(
                            "the TLSA records {name} failed DNSSEC validation ({proof})"
                        ));
                    }
                }
                HostDane::Required(
                    answers
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::TLSA(t) => {
                                usable(t.cert_usage, t.selector, t.matching, &t.cert_data)
                            }
                            _ => None,
                        })
                        .collect(),
                )
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => HostDane::None,
            Err(e) => HostDane::Unusable(format!("TLSA lookup for {name} failed: {e}")),
        }
    }
}

/// The record as DANE for SMTP uses it, or `None` when it is not usable.
pub fn usable(
    usage: CertUsage,
    selector: Selector,
    matching: Matching,
    data: &[u8],
) -> Option<Tlsa> {
    let trust_anchor = match usage {
        CertUsage::DaneTa => true,
        CertUsage::DaneEe => false,
        _ => return None,
    };
    let spki = match selector {
        Selector::Full => false,
        Selector::Spki => true,
        _ => return None,
    };
    matches!(
        matching,
        Matching::Raw | Matching::Sha256 | Matching::Sha512
    )
    .then(|| Tlsa {
        trust_anchor,
        spki,
        matching,
        data: data.to_vec(),
    })
}

/// True when `cert` (DER) matches `record`'s selector and matching type.
fn associated(record: &Tlsa, cert: &CertificateDer<'_>) -> bool {
    let selected = if record.spki {
        match ParsedCertificate::try_from(cert) {
            Ok(parsed) => parsed.subject_public_key_info().as_ref().to_vec(),
            Err(_) => return false,
        }
    } else {
        cert.as_ref().to_vec()
    };
    let algorithm = match record.matching {
        Matching::Sha256 => &ring::digest::SHA256,
        Matching::Sha512 => &ring::digest::SHA512,
        _ => return selected == record.data,
    };
    ring::digest::digest(algorithm, &selected).as_ref() == record.data.as_slice()
}

/// True when the presented chain satisfies one of `records` (RFC 7672 §3): DANE-EE matches
/// the end-entity certificate, names and dates ignored; DANE-TA matches a certificate of
/// the chain, which must then be a valid path to the end entity for `host`.
pub fn matches(
    records: &[Tlsa],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    host: &ServerName<'_>,
    now: UnixTime,
    algorithms: &WebPkiSupportedAlgorithms,
) -> bool {
    records.iter().any(|record| {
        if !record.trust_anchor {
            return associated(record, end_entity);
        }
        intermediates.iter().any(|anchor| {
            if !associated(record, anchor) {
                return false;
            }
            let mut roots = RootCertStore::empty();
            let Ok(parsed) = ParsedCertificate::try_from(end_entity) else {
                return false;
            };
            roots.add(anchor.clone()).is_ok()
                && verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &roots,
                    intermediates,
                    now,
                    algorithms.all,
                )
                .is_ok()
                && verify_server_name(&parsed, host).is_ok()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    fn algorithms() -> WebPkiSupportedAlgorithms {
        rustls::crypto::ring::default_provider().signature_verification_algorithms
    }

    fn sha256(data: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, data)
            .as_ref()
            .to_vec()
    }

    #[test]
    fn only_usable_records_verify_a_host() {
        let record = usable(CertUsage::DaneEe, Selector::Spki, Matching::Sha256, b"x").unwrap();
        assert!(HostDane::Required(vec![record]).verifies());
        assert!(!HostDane::Required(Vec::new()).verifies());
        assert!(!HostDane::None.verifies());
        assert!(!HostDane::Unusable("bogus".into()).verifies());
    }

    #[test]
    fn any_failed_proof_fails_the_answer() {
        use Proof::*;
        assert_eq!(proof_of([Secure, Secure]), Ok(true));
        assert_eq!(proof_of([Secure, Insecure]), Ok(false));
        assert_eq!(proof_of([Insecure, Bogus, Secure]), Err(Bogus));
        assert_eq!(proof_of([Indeterminate]), Err(Indeterminate));
        assert_eq!(proof_of([]), Ok(true));
    }

    #[test]
    fn only_dane_usages_with_known_selectors_are_usable() {
        assert!(usable(CertUsage::DaneEe, Selector::Spki, Matching::Sha256, b"x").is_some());
        assert!(usable(CertUsage::DaneTa, Selector::Full, Matching::Raw, b"x").is_some());
        assert!(usable(CertUsage::PkixEe, Selector::Spki, Matching::Sha256, b"x").is_none());
        assert!(usable(CertUsage::PkixTa, Selector::Spki, Matching::Sha256, b"x").is_none());
        assert!(usable(CertUsage::DaneEe, Selector::Private, Matching::Sha256, b"x").is_none());
        assert!(usable(CertUsage::DaneEe, Selector::Spki, Matching::Private, b"x").is_none());
    }

    #[test]
    fn dane_ee_matches_the_key_whatever_the_name() {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["other.name".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let spki = ParsedCertificate::try_from(&der)
            .unwrap()
            .subject_public_key_info()
            .as_ref()
            .to_vec();
        let host = ServerName::try_from("mx.example.test").unwrap();
        let record = |spki: bool, matching, data: Vec<u8>| Tlsa {
            trust_anchor: false,
            spki,
            matching,
            data,
        };
        let now = UnixTime::now();
        let algs = algorithms();
        for good in [
            record(true, Matching::Sha256, sha256(&spki)),
            record(true, Matching::Raw, spki.clone()),
            record(false, Matching::Sha256, sha256(der.as_ref())),
        ] {
            assert!(matches(&[good], &der, &[], &host, now, &algs));
        }
        let wrong = record(true, Matching::Sha256, sha256(b"another key"));
        assert!(!matches(
            std::slice::from_ref(&wrong),
            &der,
            &[],
            &host,
            now,
            &algs
        ));
        assert!(!matches(&[], &der, &[], &host, now, &algs));
        // One matching record among others is enough.
        let right = record(true, Matching::Sha256, sha256(&spki));
        assert!(matches(&[wrong, right], &der, &[], &host, now, &algs));
    }

    #[test]
    fn dane_ta_needs_a_valid_chain_for_the_host() {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["mx.example.test".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let ca_der = ca.der().clone();
        let record = Tlsa {
            trust_anchor: true,
            spki: false,
            matching: Matching::Sha256,
            data: sha256(ca_der.as_ref()),
        };
        let now = UnixTime::now();
        let algs = algorithms();
        let host = ServerName::try_from("mx.example.test").unwrap();
        let chain = [ca_der.clone()];
        assert!(matches(
            std::slice::from_ref(&record),
            leaf.der(),
            &chain,
            &host,
            now,
            &algs
        ));
        // The anchor must be presented, and the name must fit.
        assert!(!matches(
            std::slice::from_ref(&record),
            leaf.der(),
            &[],
            &host,
            now,
            &algs
        ));
        let other = ServerName::try_from("mx.elsewhere.test").unwrap();
        assert!(!matches(&[record], leaf.der(), &chain, &other, now, &algs));
    }
}

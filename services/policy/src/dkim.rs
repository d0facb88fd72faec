//! DKIM keys (RFC 6376, RFC 8463): generating a domain's key pair, the DNS TXT record that
//! publishes it, and signing a message with it.

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mail_auth::dkim::generate::DkimKeyPair;
use mailflow_proto::v1::{DkimAlgorithm, DkimKeyInfo, StoredDkimKey};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};

/// RSA keys are 2048 bits: the size RFC 8301 recommends and every DNS TXT record holds.
const RSA_BITS: usize = 2048;

/// The header fields signed (RFC 6376 §5.4.1's list, minus the rarely present ones).
/// `From` is listed twice so that a second From added in transit breaks the signature.
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// Why a key could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The crypto library refused (key generation, a damaged stored key, signing).
    #[error("DKIM: {0}")]
    Crypto(String),
    /// A stored key without a known algorithm.
    #[error("DKIM key of {0} has no known algorithm")]
    Algorithm(String),
}

fn crypto(e: impl std::fmt::Display) -> DkimError {
    DkimError::Crypto(e.to_string())
}

/// A new key pair for `domain`: (private key, public key as published). RSA generation
/// takes a while; call it off the async threads.
pub fn generate(
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
) -> Result<StoredDkimKey, DkimError> {
    let (algorithm, private_key, public_key) = match algorithm {
        DkimAlgorithm::Ed25519Sha256 => {
            let (private, public) = DkimKeyPair::generate_ed25519()
                .map_err(crypto)?
                .into_inner();
            (DkimAlgorithm::Ed25519Sha256, private, public)
        }
        DkimAlgorithm::RsaSha256 | DkimAlgorithm::Unspecified => {
            let (private, public) = DkimKeyPair::generate_rsa(RSA_BITS)
                .map_err(crypto)?
                .into_inner();
            (DkimAlgorithm::RsaSha256, private, spki_from_pkcs1(&public))
        }
    };
    Ok(StoredDkimKey {
        domain: domain.to_string(),
        selector: selector.to_string(),
        algorithm: algorithm as i32,
        private_key: private_key.into(),
        public_key: public_key.into(),
    })
}

/// The selector used when the operator names none: `mf` and today's date, so that the
/// next key (a rotation) gets a different name and both records can be published at once.
pub fn default_selector(now: SystemTime) -> String {
    // `Sat, 28 Nov 2026 12:00:00 GMT`
    let http = httpdate::fmt_http_date(now);
    let parts: Vec<&str> = http.split_whitespace().collect();
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| parts.get(2) == Some(m))
    .map_or(0, |i| i + 1);
    let (day, year) = (
        parts.get(1).unwrap_or(&"00"),
        parts.get(3).unwrap_or(&"0000"),
    );
    format!("mf{year}{month:02}{day}")
}

/// Wraps a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo (RFC 5280 §4.1, RFC 3279 §2.3.1):
/// the form `p=` carries for RSA, which every verifier reads.
pub fn spki_from_pkcs1(pkcs1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
    const ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0x00];
    bits.extend_from_slice(pkcs1);
    let bit_string = der(0x03, &bits);
    der(0x30, &[ALGORITHM, bit_string.as_slice()].concat())
}

/// One DER TLV with a definite length.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// What the operator publishes, and sees in listings.
pub fn info(key: &StoredDkimKey) -> DkimKeyInfo {
    let k = match key.algorithm() {
        DkimAlgorithm::Ed25519Sha256 => "ed25519",
        _ => "rsa",
    };
    DkimKeyInfo {
        domain: key.domain.clone(),
        selector: key.selector.clone(),
        algorithm: key.algorithm,
        dns_name: format!("{}._domainkey.{}", key.selector, key.domain),
        dns_txt: format!("v=DKIM1; k={k}; p={}", STANDARD.encode(&key.public_key)),
    }
}

/// The `DKIM-Signature` header field (with its CRLF) for `message`.
pub fn sign(key: &StoredDkimKey, message: &[u8]) -> Result<String, DkimError> {
    let signature = match key.algorithm() {
        DkimAlgorithm::Ed25519Sha256 => {
            DkimSigner::from_key(Ed25519Key::from_pkcs8_der(&key.private_key).map_err(crypto)?)
                .domain(key.domain.as_str())
                .selector(key.selector.as_str())
                .headers(SIGNED_HEADERS.iter().copied())
                .sign(message)
        }
        DkimAlgorithm::RsaSha256 => {
            let der = PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(key.private_key.as_ref()));
            DkimSigner::from_key(RsaKey::<Sha256>::from_key_der(der).map_err(crypto)?)
                .domain(key.domain.as_str())
                .selector(key.selector.as_str())
                .headers(SIGNED_HEADERS.iter().copied())
                .sign(message)
        }
        DkimAlgorithm::Unspecified => return Err(DkimError::Algorithm(key.domain.clone())),
    };
    Ok(signature.map_err(crypto)?.to_header())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn spki_wraps_the_rsa_key_with_long_form_lengths() {
        let pkcs1 = vec![0x30; 270];
        let spki = spki_from_pkcs1(&pkcs1);
        // SEQUENCE, two-octet length: 15 (algorithm) + 4 + 1 + 270 (bit string).
        assert_eq!(&spki[..4], &[0x30, 0x82, 0x01, 0x22]);
        assert_eq!(&spki[4..19][..4], &[0x30, 0x0d, 0x06, 0x09]);
        // BIT STRING of 271 octets: 0 unused bits, then the key.
        assert_eq!(&spki[19..24], &[0x03, 0x82, 0x01, 0x0f, 0x00]);
        assert_eq!(&spki[24..], pkcs1.as_slice());
        assert_eq!(der(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        assert_eq!(der(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
    }

    #[test]
    fn the_default_selector_is_dated() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_867_200);
        assert_eq!(default_selector(at), "mf20261128");
        assert_eq!(default_selector(SystemTime::UNIX_EPOCH), "mf19700101");
    }

    #[test]
    fn an_ed25519_key_publishes_its_raw_public_key_and_signs() {
        let key = generate("example.test", "s1", DkimAlgorithm::Ed25519Sha256).unwrap();
        let published = info(&key);
        assert_eq!(published.dns_name, "s1._domainkey.example.test");
        let p = published
            .dns_txt
            .strip_prefix("v=DKIM1; k=ed25519; p=")
            .unwrap();
        assert_eq!(STANDARD.decode(p).unwrap().len(), 32);
        let header = sign(&key, b"From: a@example.test\r\nSubject: x\r\n\r\nbody\r\n").unwrap();
        assert!(header.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"));
        assert!(header.contains("d=example.test") && header.contains("s=s1"));
        assert!(header.ends_with("\r\n"));
    }

    #[test]
    fn a_key_without_algorithm_is_refused() {
        let key = StoredDkimKey {
            domain: "example.test".into(),
            ..Default::default()
        };
        assert!(matches!(sign(&key, b"x"), Err(DkimError::Algorithm(_))));
    }
}

//! TLS on both sides: the crypto provider the ingress and the relay use, and what a
//! session is recorded as (the ingress's Received header and the relay's delivery
//! events).

use mailflow_proto::v1::TlsInfo;
use rustls::crypto::{CryptoProvider, ring};

/// rustls' ring provider with AES-128-GCM first in each TLS version (the rest in rustls'
/// order): AES-256-GCM with SHA-384, rustls' first choice, hashes the TLS 1.3 key schedule
/// with SHA-512, which common server CPUs have no instructions for where they have them
/// for SHA-256, and its 256-bit key adds nothing over a key exchange (X25519, P-256) of
/// 128-bit strength. The ingress chooses by this order whatever the client's; the relay
/// offers it, for servers that follow the client's order (Postfix by default).
pub fn provider() -> CryptoProvider {
    let mut provider = ring::default_provider();
    // A stable sort: AES-128-GCM ahead, each version's order otherwise kept.
    provider
        .cipher_suites
        .sort_by_key(|s| !aes_128_gcm(s.suite()));
    provider
}

/// Whether a cipher suite is AES-128-GCM (in TLS 1.3, with SHA-256).
fn aes_128_gcm(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite,
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

/// The negotiated protocol version (`TLSv1.3`) and cipher suite of a session.
pub fn session_info(state: &rustls::CommonState) -> TlsInfo {
    let version = match state.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let cipher = state
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    TlsInfo { version, cipher }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AES-128-GCM leads in each version; nothing is dropped.
    #[test]
    fn aes_128_gcm_comes_first() {
        let suites: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites.len(), ring::default_provider().cipher_suites.len());
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let tls12 = suites
            .iter()
            .position(|s| *s == rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
        let aes256 = suites
            .iter()
            .position(|s| *s == rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384);
        assert!(tls12 < aes256, "{suites:?}");
    }
}

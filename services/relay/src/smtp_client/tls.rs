//! TLS towards mail exchangers: opportunistic, as Postfix's `smtp_tls_security_level = may`
//! and RFC 7435 describe. The session is encrypted whenever the server offers STARTTLS, but
//! its certificate is not checked: MX host names are not authenticated by plain DNS, so a
//! check could only turn encrypted deliveries into plaintext ones, never stop an active
//! attacker (MTA-STS and DANE are how a domain asks for verification). Handshake
//! signatures are still verified, so the session is bound to the key the server presented.
//!
//! When a domain does ask (MTA-STS in enforce mode), the [`verified`] connector checks the
//! certificate against the Web PKI roots (plus `tls_ca_file`) and the MX host name.

use std::net::SocketAddr;
use std::sync::Arc;

use mailflow_proto::v1::TlsInfo;

use crate::dane::{self, Tlsa};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Accepts any certificate (opportunistic TLS), or one that matches DANE TLSA records;
/// checks the handshake signatures either way.
#[derive(Debug)]
struct Opportunistic {
    /// The algorithms signatures are checked with.
    provider: Arc<CryptoProvider>,
    /// The usable TLSA records the certificate must match (DANE); none accepts any
    /// certificate.
    dane: Vec<Tlsa>,
}

impl ServerCertVerifier for Opportunistic {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        if self.dane.is_empty()
            || dane::matches(
                &self.dane,
                end_entity,
                intermediates,
                server_name,
                now,
                algorithms,
            )
        {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "DANE: the certificate matches no TLSA record".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The connector for opportunistic STARTTLS (TLS 1.2 and 1.3, ring).
pub fn opportunistic() -> TlsConnector {
    dane(Vec::new())
}

/// The connector for a host with DANE TLSA records (RFC 7672): the certificate must match
/// one of `records`; with none (no usable record), any certificate is accepted, but TLS is
/// still required by the caller.
pub fn dane(records: Vec<Tlsa>) -> TlsConnector {
    let provider = Arc::new(mailflow_runtime::tls::provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(Opportunistic {
                    provider,
                    dane: records,
                }))
                .with_no_client_auth()
        });
    match config {
        Ok(config) => TlsConnector::from(Arc::new(config)),
        // The ring provider supports the default versions; this cannot fail.
        Err(e) => unreachable!("ring supports TLS 1.2 and 1.3: {e}"),
    }
}

/// Why the verifying connector could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot read trust anchors from {path}: {reason}")]
pub struct CaError {
    /// The CA file.
    pub path: std::path::PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// The connector for verified TLS: the Web PKI roots (webpki-roots) and the certificates of
/// `ca_file` (PEM) as trust anchors, and the server's name checked.
pub fn verified(ca_file: Option<&std::path::Path>) -> Result<TlsConnector, CaError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let error = |reason: String| CaError {
            path: path.to_path_buf(),
            reason,
        };
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| error(e.to_string()))? {
            let cert = cert.map_err(|e| error(e.to_string()))?;
            roots.add(cert).map_err(|e| error(e.to_string()))?;
        }
    }
    let provider = Arc::new(mailflow_runtime::tls::provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(config) => Ok(TlsConnector::from(Arc::new(config))),
        Err(e) => unreachable!("ring supports TLS 1.2 and 1.3: {e}"),
    }
}

/// The name sent in SNI: the MX host name, or the address when there is none.
pub fn server_name(host: &str, addr: SocketAddr) -> ServerName<'static> {
    ServerName::try_from(host.trim_end_matches('.').to_string())
        .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()))
}

/// The negotiated version and cipher suite.
pub fn session_info(stream: &TlsStream<TcpStream>) -> TlsInfo {
    mailflow_runtime::tls::session_info(stream.get_ref().1)
}

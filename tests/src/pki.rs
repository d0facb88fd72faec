//! A test certificate authority: certificates that verify, for tests of verified TLS
//! (MTA-STS). The relay trusts it through `tls_ca_file`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio_rustls::TlsAcceptor;

/// A CA that signs server certificates.
pub struct TestCa {
    /// The CA certificate and key.
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA.
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mailflow test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    /// Writes the CA certificate (PEM) into `dir`; returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }

    /// A TLS acceptor presenting a certificate for `names`, signed by this CA.
    pub fn acceptor(&self, names: &[&str]) -> TlsAcceptor {
        self.leaf(names).0
    }

    /// [`TestCa::acceptor`], and the SHA-256 of the certificate's public key in hex: the
    /// data of a DANE-EE `3 1 1` TLSA record for it.
    pub fn leaf(&self, names: &[&str]) -> (TlsAcceptor, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let parsed = rustls::server::ParsedCertificate::try_from(cert.der()).unwrap();
        let spki = ring::digest::digest(
            &ring::digest::SHA256,
            parsed.subject_public_key_info().as_ref(),
        );
        let spki_hex: String = spki.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        (TlsAcceptor::from(Arc::new(config)), spki_hex)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

//! TLS for the ingress: rustls (ring), TLS 1.2 and 1.3 only, with the certificate reloaded
//! from its PEM files when they change, so that rotation (cert-manager) needs no restart and
//! drops no session: new handshakes use the new certificate, open sessions keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration or the key.
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificate files and what was last loaded from them.
#[derive(Debug)]
struct Loaded {
    /// Modification times of (cert, key) when loaded.
    stamps: (Option<SystemTime>, Option<SystemTime>),
    /// The key pair in use.
    key: Arc<CertifiedKey>,
}

/// Serves the current certificate and reloads it when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    /// The chain's PEM file.
    cert_path: PathBuf,
    /// The key's PEM file.
    key_path: PathBuf,
    /// The current certificate.
    current: RwLock<Loaded>,
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn pem_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads a certificate chain and its key.
pub fn load_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| pem_error(cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(cert_path, e))?;
    if certs.is_empty() {
        return Err(pem_error(cert_path, "no certificate in file"));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| pem_error(key_path, e))?;
    let signing = ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| pem_error(key_path, e))?;
    let certified = CertifiedKey::new(certs, signing);
    // A key that is not the certificate's would fail every handshake: refused here, so a
    // reload caught between writing the two files keeps the old pair.
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(e) => Err(pem_error(
            key_path,
            format!("not the certificate's key: {e}"),
        )),
    }
}

impl ReloadingCert {
    /// Loads the files once; fails if they are unusable.
    pub fn new(cert_path: PathBuf, key_path: PathBuf) -> Result<Self, TlsError> {
        let stamps = (mtime(&cert_path), mtime(&key_path));
        let key = Arc::new(load_key(&cert_path, &key_path)?);
        Ok(Self {
            cert_path,
            key_path,
            current: RwLock::new(Loaded { stamps, key }),
        })
    }

    /// Reloads if either file changed; a broken new file keeps the old certificate in use.
    pub fn reload_if_changed(&self) {
        let stamps = (mtime(&self.cert_path), mtime(&self.key_path));
        let unchanged = self
            .current
            .read()
            .map(|c| c.stamps == stamps)
            .unwrap_or(false);
        if unchanged {
            return;
        }
        match load_key(&self.cert_path, &self.key_path) {
            Ok(key) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Loaded {
                        stamps,
                        key: Arc::new(key),
                    };
                    tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "new TLS certificate unusable; keeping the old one")
            }
        }
    }

    /// Checks the files every `interval` until `shutdown`.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => self.reload_if_changed(),
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.key.clone())
    }
}

/// An acceptor for TLS 1.2 and 1.3 using `cert`.
pub fn acceptor(cert: Arc<ReloadingCert>) -> Result<TlsAcceptor, TlsError> {
    let provider = mailflow_runtime::tls::provider();
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    // Postfix follows the client's order (`tls_preempt_cipherlist = no`); we choose by
    // ours, for cost: clients list AES-256-GCM with SHA-384 first (see
    // `mailflow_runtime::tls::provider`). Measured with `bench/e2e` (STARTTLS, a handshake
    // per message): see ARCHITECTURE.md.
    config.ignore_client_order = true;
    // Stateless session tickets (RFC 5077, RFC 8446 §4.6.1), as Postfix's smtpd issues
    // them: a sending MTA caches one session per destination and offers it on each of its
    // connections there (Postfix's `smtp_tls_session_cache_database`), and rustls's default
    // tickets, entries of a server-side cache, resume once; every other connection would
    // pay for a full handshake (a certificate signature and its verification). A ticket
    // used again replays nothing: no early data is accepted, and a resumed handshake still
    // makes a fresh key exchange. The ticket key rotates every 6 hours.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let generated = rcgen::generate_simple_self_signed(vec![format!("{name}.test")]).unwrap();
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    /// The suite negotiated over an in-memory pipe with a client that offers rustls' suites
    /// in its order (AES-256-GCM first) and only `version`.
    async fn negotiated(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Option<rustls::CipherSuite> {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "server");
        let acceptor = acceptor(Arc::new(ReloadingCert::new(cert.clone(), key).unwrap())).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_file_iter(&cert).unwrap() {
            roots.add(der.unwrap()).unwrap();
        }
        let client =
            rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = rustls::pki_types::ServerName::try_from("server.test").unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let (server, client) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
        let (server, client) = (server.unwrap(), client.unwrap());
        let chosen = server
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .map(|s| s.suite());
        assert_eq!(
            chosen,
            client
                .get_ref()
                .1
                .negotiated_cipher_suite()
                .map(|s| s.suite())
        );
        chosen
    }

    /// Clients list AES-256-GCM first; the server chooses AES-128-GCM (SHA-256 in TLS 1.3).
    #[tokio::test]
    async fn the_server_chooses_aes_128_gcm_whatever_the_clients_order() {
        assert_eq!(
            ring::default_provider().cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            "the client's first choice"
        );
        assert_eq!(
            negotiated(&rustls::version::TLS13).await,
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        assert_eq!(
            negotiated(&rustls::version::TLS12).await,
            Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
        );
    }

    /// A certificate with another certificate's key would fail every handshake: refused.
    #[test]
    fn a_key_must_belong_to_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_a, key_a) = pair(dir.path(), "a");
        let (_, key_b) = pair(dir.path(), "b");
        assert!(load_key(&cert_a, &key_a).is_ok());
        let err = load_key(&cert_a, &key_b).err().unwrap();
        assert!(
            err.to_string().contains("not the certificate's key"),
            "{err}"
        );
    }
}

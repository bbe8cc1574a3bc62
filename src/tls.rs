//! TLS for the listener: `wss://` and the HTTP API over HTTPS, with rustls.
//!
//! Why it looks like this:
//!
//! - One crypto provider, chosen here and passed to every config
//!   (`ring`: it builds with a plain C compiler, no cmake). Nothing relies on
//!   rustls' process-wide default provider, so there is no ambiguity about
//!   which one is in use and nothing to install at startup.
//! - TLS 1.2 and 1.3 only, and ALPN offers `http/1.1` alone: the server
//!   speaks HTTP/1.1 (WebSocket upgrades need it), never h2.
//! - Certificates are replaced without a restart: [`Tls`] holds the current
//!   acceptor behind a lock that is read once per accepted connection, so
//!   [`Tls::reload`] (called on SIGHUP by [`crate::server`]) affects new
//!   connections only; established ones keep the session they negotiated. A
//!   reload that fails (unreadable file, bad PEM, key not matching) leaves
//!   the previous certificate in place.
//! - Errors name the setting at fault (`tls_cert` or `tls_key`), so
//!   [`crate::config::Config::validate`] can report them like any other bad
//!   setting.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The one ALPN protocol offered.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A certificate or key that cannot be used, with the setting at fault.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct TlsError {
    /// `tls_cert` or `tls_key`.
    pub setting: &'static str,
    /// What is wrong, naming the file.
    pub message: String,
}

impl TlsError {
    fn cert(path: &Path, message: impl std::fmt::Display) -> Self {
        Self {
            setting: "tls_cert",
            message: format!("{}: {message}", path.display()),
        }
    }

    fn key(path: &Path, message: impl std::fmt::Display) -> Self {
        Self {
            setting: "tls_key",
            message: format!("{}: {message}", path.display()),
        }
    }
}

/// The crypto provider every TLS config of roomcast uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read a PEM certificate chain and private key and build the server's
/// TLS configuration. The key must match the first certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_chain(cert)?;
    let key_der = read_key(key)?;
    let provider = provider();
    // Parsed here first only to blame the right file: building the config
    // parses it again, and its errors do not say which input was bad.
    provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| TlsError::key(key, format!("unusable private key: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::cert(cert, e))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                TlsError::key(key, "private key does not match the certificate in tls_cert")
            }
            e => TlsError::cert(cert, e),
        })?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_bytes = std::fs::read(path).map_err(|e| TlsError::cert(path, format!("cannot read: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::cert(path, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::cert(path, "no CERTIFICATE block in the PEM file"));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem_bytes = std::fs::read(path).map_err(|e| TlsError::key(path, format!("cannot read: {e}")))?;
    PrivateKeyDer::from_pem_slice(&pem_bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::key(
            path,
            "no private key in the PEM file (PKCS#8, PKCS#1 or SEC1; encrypted keys are not supported)",
        ),
        e => TlsError::key(path, format!("bad PEM: {e}")),
    })
}

/// Why a client TLS configuration cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientTlsError {
    /// The `--ca-cert` file is unusable.
    #[error("--ca-cert {path}: {message}")]
    CaCert {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// No certificate to trust at all.
    #[error(
        "no trusted CA certificates: none in the system's store (SSL_CERT_FILE / SSL_CERT_DIR) and no --ca-cert"
    )]
    NoRoots,
}

/// The TLS configuration of roomcast's own clients (`roomcast client`,
/// `roomcast bench`) for `wss://`: TLS 1.3 and 1.2 with the server's crypto
/// provider, ALPN `http/1.1` (a WebSocket upgrade needs HTTP/1.1), trusting
/// the system's CA store plus the certificates in `ca_cert`.
pub fn client_config(ca_cert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ClientTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable or unparsable system certificates are skipped: one bad
    // file in /etc/ssl/certs must not stop every connection.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_cert {
        let bad = |message: String| ClientTlsError::CaCert {
            path: path.display().to_string(),
            message,
        };
        let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("bad PEM: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no CERTIFICATE block in the PEM file".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad(format!("unusable certificate: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(ClientTlsError::NoRoots);
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the provider supports TLS 1.3 and 1.2")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The listener's TLS state: where the certificate comes from and the
/// acceptor new connections use.
#[derive(Debug)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    /// Replaced whole by [`Tls::reload`]; cloned (an `Arc`) once per
    /// accepted connection, never held across an await.
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Load the certificate chain and key from PEM files.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let config = server_config(cert, key)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(config),
        })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self.current.read().unwrap_or_else(PoisonError::into_inner);
        TlsAcceptor::from(Arc::clone(&config))
    }

    /// Read the files again and use them for connections accepted from
    /// now on. On error the previous certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}

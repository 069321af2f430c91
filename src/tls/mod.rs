//! TLS with rustls, for both ends of fanout's connections.
//!
//! - `certs`: the server's certificates, read from PEM files, chosen by the client's SNI name,
//!   and swapped for re-read ones on SIGHUP while connections stay.
//! - `session`: one accepted TLS connection, driven by the worker's readiness loop through
//!   rustls's unbuffered API: records are decrypted from the worker's read buffer, and queued
//!   frames encrypted into the connection's own backlog only when the socket has taken the last
//!   one, so an idle TLS connection holds no buffer.
//! - `stream`: a client's TLS over a socket, blocking or not (the broker's Redis links, the load
//!   generator, the Rust client).

mod certs;
mod session;
mod stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use certs::{CertFiles, ServerTls};
pub use session::{failure_reason, write_some, Received, ServerSession};
pub use stream::{Socket, TlsStream};

/// The first byte of a TLS record carrying a handshake (a ClientHello starts every connection).
pub const HANDSHAKE_RECORD: u8 = 0x16;

/// What went wrong loading certificates, keys or trust roots.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected or wrong.
        what: String,
    },
    /// rustls refused the combination (a key that does not match its certificate, say).
    #[error("{context}: {source}")]
    Rustls {
        /// Which files or setting.
        context: String,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// The system's trust roots could not be loaded.
    #[error("the system's trust roots: {0}")]
    SystemRoots(String),
}

/// The crypto provider every config uses: aws-lc-rs (see Cargo.toml for why, not ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The system's trust roots as a client configuration, read once per process (a client that
/// reconnects keeps one configuration, and with it its session tickets).
pub fn system_client_config() -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let config = client_config(None, None)?;
    Ok(CONFIG.get_or_init(|| config).clone())
}

/// Reads a PEM certificate chain (leaf first).
pub fn read_certs(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsConfigError> {
    use rustls::pki_types::pem::PemObject;
    let bytes = read(path)?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no CERTIFICATE in it".into()));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsConfigError> {
    use rustls::pki_types::pem::PemObject;
    let bytes = read(path)?;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| pem_error(path, format!("no usable PEM private key: {e}")))
}

/// A client's configuration: the trust roots of `ca_file` (the system's when `None`), and a
/// certificate and key to present when the server asks (mutual TLS).
pub fn client_config(
    ca_file: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|source| TlsConfigError::Rustls {
                    context: format!("{}: a CA certificate", path.display()),
                    source,
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                let why = found.errors.first().map_or("none found".to_string(), |e| e.to_string());
                return Err(TlsConfigError::SystemRoots(why));
            }
            roots.add_parsable_certificates(found.certs);
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsConfigError::Rustls { context: "protocol versions".into(), source })?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|source| TlsConfigError::Rustls {
                context: format!("{} and {}", cert.display(), key.display()),
                source,
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read { path: path.to_owned(), source })
}

fn pem_error(path: &Path, what: String) -> TlsConfigError {
    TlsConfigError::Pem { path: path.to_owned(), what }
}

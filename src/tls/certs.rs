//! The server's certificates: read from PEM files at start, chosen per handshake by the
//! client's SNI name, and replaced on SIGHUP (`ServerTls::take_certificates`) without touching connections:
//! a handshake takes the set current when its ClientHello arrives.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::pki_types::{DnsName, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{provider, read_certs, read_key, TlsConfigError};

/// One certificate chain and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl CertFiles {
    fn load(&self) -> Result<Arc<CertifiedKey>, TlsConfigError> {
        let chain = read_certs(&self.cert)?;
        let key = read_key(&self.key)?;
        let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|source| {
            TlsConfigError::Rustls {
                context: format!("{} with {}", self.cert.display(), self.key.display()),
                source,
            }
        })?;
        Ok(Arc::new(certified))
    }
}

/// The listener's TLS: the rustls configuration every accepted TLS connection shares.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    certs: Arc<Certs>,
}

impl ServerTls {
    /// Loads every pair (the first serves clients that send no SNI name, or one no certificate
    /// is valid for); refuses a missing file, a file without PEM, or a key that is not its
    /// certificate's.
    pub fn load(files: &[CertFiles]) -> Result<ServerTls, TlsConfigError> {
        let loaded = files.iter().map(CertFiles::load).collect::<Result<Vec<_>, _>>()?;
        let certs = Arc::new(Certs { current: RwLock::new(Arc::new(loaded)) });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsConfigError::Rustls {
                context: "protocol versions".into(),
                source,
            })?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        // Every protocol here is HTTP/1.1 or raw TCP; a browser offering h2 as well gets this.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Resumption by stateless tickets (a rotating key, no shared cache to lock): a client
        // that reconnects skips the certificate and the signature, the handshake's main costs.
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|source| {
            TlsConfigError::Rustls { context: "session tickets".into(), source }
        })?;
        // One ticket after a handshake is enough to resume; rustls's default sends two.
        config.send_tls13_tickets = 1;
        Ok(ServerTls { config: Arc::new(config), certs })
    }

    /// Serves `other`'s certificates from now on (a reload loaded them, from the same files or
    /// others): handshakes already under way keep the set they started with.
    pub fn take_certificates(&self, other: &ServerTls) {
        let loaded = other.certs.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        *self.certs.current.write().unwrap_or_else(|e| e.into_inner()) = loaded;
    }

    /// The configuration a new connection's session is made with.
    pub fn config(&self) -> &Arc<rustls::ServerConfig> {
        &self.config
    }
}

/// The certificates, swapped whole on reload.
#[derive(Debug)]
struct Certs {
    current: RwLock<Arc<Vec<Arc<CertifiedKey>>>>,
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        if certs.len() > 1 {
            if let Some(name) = hello.server_name().and_then(|n| DnsName::try_from(n).ok()) {
                let name = ServerName::DnsName(name.to_owned());
                let valid_for = |certified: &&Arc<CertifiedKey>| {
                    certified.end_entity_cert().ok().is_some_and(|der| {
                        webpki::EndEntityCert::try_from(der)
                            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
                    })
                };
                if let Some(chosen) = certs.iter().find(valid_for) {
                    return Some(chosen.clone());
                }
            }
        }
        certs.first().cloned()
    }
}

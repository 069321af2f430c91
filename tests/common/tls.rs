//! Certificates for TLS tests, made with the `openssl` command (as an operator would): a CA of
//! the test's own, and certificates it signs for names and addresses given.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use super::TempDir;

/// A CA and the certificates signed with it, in a directory of the test's own.
pub struct TestPki {
    pub dir: TempDir,
    /// `<name>.pem` (certificate), `<name>.key` (key) for each `issue`d name; `ca.pem` the CA.
    pub ca: PathBuf,
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl").args(args).output().expect("the openssl command runs");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl TestPki {
    /// A fresh CA (EC P-256) named `label`.
    pub fn new(label: &str) -> TestPki {
        let dir = TempDir::new(&format!("pki-{label}"));
        let ca = dir.0.join("ca.pem");
        let key = dir.0.join("ca.key");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=fanout test CA {label}"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            ca.to_str().unwrap(),
        ]);
        TestPki { dir, ca }
    }

    /// A certificate for `names` (DNS names, or IP addresses), signed by the CA; returns its
    /// (certificate, key) files, `<file>.pem` and `<file>.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let cert = self.dir.0.join(format!("{file}.pem"));
        let key = self.dir.0.join(format!("{file}.key"));
        let csr = self.dir.0.join(format!("{file}.csr"));
        let ext = self.dir.0.join(format!("{file}.ext"));
        let alt: Vec<String> = names
            .iter()
            .map(|n| {
                if n.parse::<std::net::IpAddr>().is_ok() {
                    format!("IP:{n}")
                } else {
                    format!("DNS:{n}")
                }
            })
            .collect();
        std::fs::write(&ext, format!("subjectAltName={}\n", alt.join(","))).unwrap();
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={}", names[0]),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            self.ca.to_str().unwrap(),
            "-CAkey",
            self.dir.0.join("ca.key").to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        (cert, key)
    }

    /// A client configuration trusting this CA only.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        fanout::tls::client_config(Some(&self.ca), None).expect("the test CA loads")
    }

    pub fn ca_path(&self) -> &str {
        self.ca.to_str().expect("UTF-8 path")
    }
}

/// The server side of a listener with these (certificate, key) pairs.
pub fn server_tls(pairs: &[(PathBuf, PathBuf)]) -> fanout::tls::ServerTls {
    let files: Vec<_> = pairs
        .iter()
        .map(|(cert, key)| fanout::tls::CertFiles { cert: cert.clone(), key: key.clone() })
        .collect();
    fanout::tls::ServerTls::load(&files).expect("the test certificates load")
}

/// A blocking TLS connection to `addr`, checking the certificate against `name`.
pub fn connect(
    addr: std::net::SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<fanout::tls::TlsStream<std::net::TcpStream>> {
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(super::PATIENCE))?;
    let mut tls = fanout::tls::TlsStream::new(config.clone(), name, tcp)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tls.complete_handshake()?;
    Ok(tls)
}

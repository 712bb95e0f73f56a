//! TLS for the Kafka tests: certificates made with the `openssl` command,
//! and a TLS front (rustls server, client certificates required) that
//! forwards to a plain tansu broker, since tansu 0.6 takes `--cert`/`--key`
//! but does not serve TLS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A CA, a server certificate for 127.0.0.1 and a client certificate it
/// signed, plus an unrelated CA; PEM files in a temporary directory.
#[derive(Debug)]
pub(crate) struct Certs {
    dir: TempDir,
}

impl Certs {
    /// Makes them with `openssl` (package `openssl`, installed by
    /// deploy/install-test-peers.sh).
    pub(crate) fn make() -> Certs {
        let dir = tempfile::Builder::new().prefix("sluice-tls-").tempdir().expect("temp dir");
        let certs = Certs { dir };
        std::fs::write(certs.path("ca.cnf"), CA_CONFIG).expect("write ca.cnf");
        std::fs::write(certs.path("leaf.cnf"), LEAF_CONFIG).expect("write leaf.cnf");
        for ca in ["ca", "other-ca"] {
            let key = format!("{ca}.key");
            let pem = format!("{ca}.pem");
            // Distinct names: a CA is found by name, then its signature checked.
            let subject = format!("/CN=sluice test {ca}");
            certs.openssl(
                &["req", "-x509", "-config", "ca.cnf", "-extensions", "v3_ca", "-days", "2"]
                    .into_iter()
                    .chain(NEW_KEY)
                    .chain(["-subj", &subject, "-keyout", &key, "-out", &pem])
                    .collect::<Vec<_>>(),
            );
        }
        for (leaf, serial) in [("server", "2"), ("client", "3")] {
            let (key, csr, pem) = (format!("{leaf}.key"), format!("{leaf}.csr"), format!("{leaf}.pem"));
            certs.openssl(
                &["req", "-new", "-subj", &format!("/CN=sluice test {leaf}")]
                    .into_iter()
                    .chain(NEW_KEY)
                    .chain(["-keyout", &key, "-out", &csr])
                    .collect::<Vec<_>>(),
            );
            certs.openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial,
                "-days",
                "2",
                "-extfile",
                "leaf.cnf",
                "-extensions",
                leaf,
                "-out",
                &pem,
            ]);
        }
        certs
    }

    /// The path of one of the files: `ca.pem`, `other-ca.pem`,
    /// `server.pem`/`.key`, `client.pem`/`.key`.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl ({e}): run deploy/install-test-peers.sh"));
        assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

const NEW_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

const CA_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = sluice test CA
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
";

const LEAF_CONFIG: &str = "\
[server]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
authorityKeyIdentifier = keyid
[client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
";

/// Terminates TLS (server certificate `server.pem`, client certificates
/// signed by `ca.pem` required) and forwards the bytes to a plain broker.
/// Stops on drop.
#[derive(Debug)]
pub(crate) struct TlsFront {
    task: JoinHandle<()>,
}

impl TlsFront {
    /// Serves on `listener`, forwarding to `127.0.0.1:backend_port`.
    pub(crate) fn spawn(listener: TcpListener, certs: &Certs, backend_port: u16) -> TlsFront {
        let config = server_config(certs);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let task = tokio::spawn(async move {
            // Dropping the set (when the task is aborted) ends every
            // connection.
            let mut connections = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let Ok(mut backend) = TcpStream::connect(("127.0.0.1", backend_port)).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        TlsFront { task }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn server_config(certs: &Certs) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(certs.path("ca.pem")).expect("ca.pem")).expect("CA");
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("client verifier");
    let chain = pem_certs(&certs.path("server.pem"));
    let key = PrivateKeyDer::from_pem_file(certs.path("server.key")).expect("server.key");
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config")
}

fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path).expect("pem file").collect::<Result<_, _>>().expect("certificates")
}

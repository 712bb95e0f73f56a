//! The certificate and key files the configuration names, loaded into
//! rustls configurations with ring as the crypto provider: server side for
//! sluice's listeners (`[mqtt.tls]`, `[http.tls]`), client side for the
//! uplinks (`[[uplink]] tls`). Every PEM file sluice reads goes through
//! here, so the rules and the messages are the same everywhere.
//!
//! Errors name the field and the file: `mqtt.tls.cert
//! /etc/sluice/tls/server.crt: cannot read: No such file or directory (os
//! error 2)`.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::items::{ListenerTls, UplinkTls};

/// A TLS file that cannot be used; the message names the field and file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The crypto provider of every TLS connection: ring (no aws-lc, which
/// needs cmake and a C toolchain when cross-compiling for the Pi).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server configuration of a listener's `tls` table; `field` is the
/// table's path (`mqtt.tls`). With `client_ca`, clients must present a
/// certificate signed by one of its CAs.
pub fn server_config(tls: &ListenerTls, field: &str) -> Result<ServerConfig, TlsError> {
    let chain = certificates(&format!("{field}.cert"), &tls.cert)?;
    let key = private_key(&format!("{field}.key"), &tls.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("{field}: TLS setup: {e}")))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let ca_field = format!("{field}.client_ca");
            let roots = trust_anchors(&ca_field, ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError(format!("{ca_field} {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(chain, key).map_err(|e| {
        TlsError(format!(
            "{field}.cert {} and {field}.key {} cannot be used together: {e}",
            tls.cert.display(),
            tls.key.display()
        ))
    })
}

/// The client configuration of an uplink's `tls` table; `field` is its
/// path (`uplink["central"].tls`). Trusts the CAs of `ca` (default the
/// system bundle) and presents `cert` when set.
pub fn client_config(tls: &UplinkTls, field: &str) -> Result<ClientConfig, TlsError> {
    let roots = trust_anchors(&format!("{field}.ca"), tls.ca_file())?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("{field}: TLS setup: {e}")))?
        .with_root_certificates(roots);
    let (cert, key) = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => (cert, key),
        // Validation refuses one without the other.
        _ => return Ok(builder.with_no_client_auth()),
    };
    let chain = certificates(&format!("{field}.cert"), cert)?;
    let key_der = private_key(&format!("{field}.key"), key)?;
    builder.with_client_auth_cert(chain, key_der).map_err(|e| {
        TlsError(format!(
            "{field}.cert {} and {field}.key {} cannot be used together: {e}",
            cert.display(),
            key.display()
        ))
    })
}

fn read(field: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("{field} {}: cannot read: {e}", path.display())))
}

/// Every certificate of a PEM file, in order; at least one.
fn certificates(field: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(field, path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{field} {}: not a valid PEM file: {e}", path.display())))?;
    if chain.is_empty() {
        return Err(TlsError(format!("{field} {}: no PEM certificate in the file", path.display())));
    }
    Ok(chain)
}

/// The first private key of a PEM file.
fn private_key(field: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(field, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        TlsError(format!(
            "{field} {}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            path.display()
        ))
    })
}

/// The CA certificates of a PEM file. A system bundle may hold
/// certificates rustls cannot use; those are skipped, but at least one
/// must be usable.
fn trust_anchors(field: &str, path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = read(field, path)?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).flatten());
    if added == 0 {
        return Err(TlsError(format!("{field} {}: no usable PEM certificate in the file", path.display())));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_junk_files_name_the_field_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");

        let err = server_config(&ListenerTls::new(&missing, &junk), "mqtt.tls").expect_err("missing");
        assert!(err.0.starts_with(&format!("mqtt.tls.cert {}: cannot read: ", missing.display())), "{err}");
        let err = server_config(&ListenerTls::new(&junk, &junk), "http.tls").expect_err("junk");
        assert_eq!(err.0, format!("http.tls.cert {}: no PEM certificate in the file", junk.display()));

        let tls = UplinkTls { ca: Some(junk.clone()), cert: None, key: None };
        let err = client_config(&tls, "uplink[\"c\"].tls").expect_err("no CA");
        assert_eq!(
            err.0,
            format!("uplink[\"c\"].tls.ca {}: no usable PEM certificate in the file", junk.display())
        );
        let tls = UplinkTls { ca: Some(missing.clone()), cert: None, key: None };
        let err = client_config(&tls, "uplink[\"c\"].tls").expect_err("missing CA");
        assert!(err.0.starts_with(&format!("uplink[\"c\"].tls.ca {}: cannot read: ", missing.display())));
    }
}

//! TLS for DICOM (rustls with the aws-lc-rs provider): the server side of
//! the receiver and the client side of the deliveries, both from PEM files.
//!
//! Peers are authenticated by certificates that chain to the configured CA
//! certificates; there is no built-in list of public CAs, because the peers
//! of a DICOM node (planning systems, PACS) carry certificates from the
//! hospital's own CA.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificates of a PEM file, at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| format!("private key in {}: {e}", path.display()))?
        .ok_or_else(|| format!("no private key in {}", path.display()))
}

/// The CA certificates of a PEM file as trust anchors.
fn roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path)? {
        store
            .add(cert)
            .map_err(|e| format!("CA certificate in {}: {e}", path.display()))?;
    }
    Ok(Arc::new(store))
}

/// A certificate's SHA-256 fingerprint, `AB:CD:…`, as `openssl x509
/// -fingerprint -sha256` prints it: how an admin tells which certificate
/// a caller presented.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn is_set(path: &Path) -> bool {
    !path.as_os_str().is_empty()
}

/// The receiver's configuration: its certificate chain and key, and, when
/// `client_cas` names a file, a client certificate that chains to one of
/// those CAs is required of every peer (mutual TLS).
pub fn server_config(
    certificate: &Path,
    key: &Path,
    client_cas: &Path,
) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if is_set(client_cas) {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots(client_cas)?,
            provider(),
        )
        .build()
        .map_err(|e| format!("client CA certificates in {}: {e}", client_cas.display()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(certificates(certificate)?, private_key(key)?)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

/// The deliveries' configuration: the destinations' certificates must chain
/// to the CAs in `cas`; with `certificate` and `key` set, the node presents
/// that certificate to destinations that ask for one.
pub fn client_config(
    cas: &Path,
    certificate: &Path,
    key: &Path,
) -> Result<Arc<ClientConfig>, String> {
    if !is_set(cas) {
        return Err(
            "ca_certificates is not set: the CA certificates that destinations' certificates \
             must chain to"
                .into(),
        );
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(cas)?);
    let config = if is_set(certificate) {
        builder
            .with_client_auth_cert(certificates(certificate)?, private_key(key)?)
            .map_err(|e| e.to_string())?
    } else {
        builder.with_no_client_auth()
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let err = client_config(Path::new(""), Path::new(""), Path::new("")).expect_err("no CAs");
        assert!(err.starts_with("ca_certificates is not set"), "{err}");
        let none = dir.path().join("absent.pem");
        let err = client_config(&none, Path::new(""), Path::new("")).expect_err("no file");
        assert!(err.contains("absent.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let err = client_config(&empty, Path::new(""), Path::new("")).expect_err("no certificate");
        assert_eq!(err, format!("no certificate in {}", empty.display()));
        let err = server_config(&empty, &empty, Path::new("")).expect_err("no certificate");
        assert!(err.starts_with("no certificate in"), "{err}");
    }
}

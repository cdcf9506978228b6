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

/// Who a caller's certificate names: the certificate's subject, as
/// `CN=…, O=…` (the common attributes, in the certificate's order). Read
/// with a small DER walk over the certificate the handshake has already
/// verified; `None` if it does not have the expected shape. Values are cut
/// to printable characters and 256 bytes, since they go into the log.
pub fn subject(der: &[u8]) -> Option<String> {
    /// One DER element: (tag, content, what follows).
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&first, mut b) = b.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let len = b[..n]
                .iter()
                .fold(0usize, |l, &x| (l << 8) | usize::from(x));
            b = &b[n..];
            len
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    // [0] version (optional), serial number, signature algorithm, issuer,
    // validity, then the subject.
    let mut rest = tbs;
    if let (0xa0, _, after) = tlv(rest)? {
        rest = after;
    }
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (SEQUENCE, mut name, _) = tlv(rest)? else {
        return None;
    };
    let mut parts = Vec::new();
    while !name.is_empty() {
        let (0x31, mut rdn, after) = tlv(name)? else {
            return None;
        };
        name = after;
        while !rdn.is_empty() {
            let (SEQUENCE, atv, after) = tlv(rdn)? else {
                return None;
            };
            rdn = after;
            let (0x06, oid, value) = tlv(atv)? else {
                return None;
            };
            let key = match oid {
                [0x55, 4, 3] => "CN",
                [0x55, 4, 6] => "C",
                [0x55, 4, 7] => "L",
                [0x55, 4, 8] => "ST",
                [0x55, 4, 10] => "O",
                [0x55, 4, 11] => "OU",
                _ => continue,
            };
            let (_, text, _) = tlv(value)?;
            let text: String = String::from_utf8_lossy(text)
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            parts.push(format!("{key}={text}"));
        }
    }
    let mut s = parts.join(", ");
    if s.len() > 256 {
        let mut cut = 256;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    (!s.is_empty()).then_some(s)
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

    /// DER: tag, length (long form past 127 bytes), content.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n @ 0..=127 => out.push(n as u8),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend(content);
        out
    }

    /// A certificate's shape around a subject of `(oid tail, text)`.
    fn certificate(subject: &[(u8, &str)]) -> Vec<u8> {
        let name: Vec<u8> = subject
            .iter()
            .flat_map(|(attr, text)| {
                let atv = [tlv(0x06, &[0x55, 4, *attr]), tlv(0x0c, text.as_bytes())].concat();
                tlv(0x31, &tlv(0x30, &atv))
            })
            .collect();
        let tbs = [
            tlv(0xa0, &tlv(0x02, &[2])),
            tlv(0x02, &[1]),
            tlv(0x30, &[]),
            tlv(0x30, &tlv(0x31, &[])),
            tlv(0x30, &[]),
            tlv(0x30, &name),
            tlv(0x30, &[0u8; 200]),
        ]
        .concat();
        tlv(
            0x30,
            &[tlv(0x30, &tbs), tlv(0x30, &[]), tlv(0x03, &[0])].concat(),
        )
    }

    #[test]
    fn the_subject_of_a_certificate_reads_and_damage_does_not_panic() {
        let der = certificate(&[(6, "NL"), (10, "Hospital"), (3, "tps\u{7}1")]);
        assert_eq!(subject(&der).as_deref(), Some("C=NL, O=Hospital, CN=tps?1"));
        let long = "x".repeat(400);
        let cut = subject(&certificate(&[(3, &long)])).expect("subject");
        assert_eq!(cut.len(), 256);
        for n in 0..der.len() {
            let _ = subject(&der[..n]);
        }
        let mut flipped = der.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = subject(&flipped);
            flipped[i] ^= 0xff;
        }
        assert_eq!(subject(&[]), None);
    }
}

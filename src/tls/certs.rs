//! Loading a certificate chain and its private key from PEM files, with errors that name the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate ready to serve, and the names it answers for.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// Host names (exact or `*.` wildcard, lower case) SNI matches against this certificate.
    pub names: Vec<String>,
    /// The certificate file, for logs and status.
    pub cert_path: PathBuf,
    /// The key file.
    pub key_path: PathBuf,
}

/// Reads `cert_path` (full chain, PEM) and `key_path` (PKCS#8, PKCS#1 or SEC1 PEM) and checks that the key
/// belongs to the first certificate. `server_names` overrides the DNS names read from the certificate.
pub fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    server_names: Option<&[String]>,
) -> Result<LoadedCert, String> {
    let pem = read(cert_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            cert_path.display()
        ));
    }
    let key_pem = read(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "{}: holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
            key_path.display()
        )
    })?;
    let names = match server_names {
        Some(names) => names.iter().map(|n| n.to_ascii_lowercase()).collect(),
        None => dns_names(&chain[0])
            .map_err(|e| format!("{}: cannot read the certificate: {e}", cert_path.display()))?,
    };
    let certified = CertifiedKey::from_der(chain, key, &super::provider()).map_err(|e| {
        format!(
            "{} does not match the certificate {}: {e}",
            key_path.display(),
            cert_path.display()
        )
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The DNS names (subject alternative names) of a certificate, lower case.
fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, webpki::Error> {
    let parsed = webpki::EndEntityCert::try_from(cert)?;
    Ok(parsed
        .valid_dns_names()
        .map(|name| name.to_ascii_lowercase())
        .collect())
}

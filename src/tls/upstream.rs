//! TLS to upstream servers: which roots verify them (the system's, or a `ca_file`), or no verification at
//! all when asked; the name sent in SNI and checked in the certificate.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// How one pool talks TLS to its `https://` servers.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Roots and verifier, without ALPN (the client sets that for its protocol).
    pub config: Arc<ClientConfig>,
    /// Sent in SNI and verified instead of each server's host (`tls_server_name`).
    pub server_name: Option<ServerName<'static>>,
    /// Tells configs apart for the client cache: same fingerprint, same TLS behaviour.
    pub fingerprint: u64,
    /// The CA file, when one replaces the system roots (watched for changes).
    pub ca_file: Option<std::path::PathBuf>,
}

impl UpstreamTls {
    /// Builds the client side: `ca_file` (PEM, one or more CAs) replaces the system roots when given;
    /// `verify = false` accepts any certificate.
    pub fn new(
        ca_file: Option<&Path>,
        verify: bool,
        server_name: Option<&str>,
    ) -> Result<UpstreamTls, String> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (verify, server_name).hash(&mut hasher);
        let builder = ClientConfig::builder_with_provider(super::provider())
            .with_protocol_versions(super::PROTOCOL_VERSIONS)
            .map_err(|e| format!("cannot set up TLS: {e}"))?;
        let config = if verify {
            let roots = match ca_file {
                Some(path) => {
                    let pem = std::fs::read(path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    pem.hash(&mut hasher);
                    roots_from_pem(&pem, path)?
                }
                None => system_roots()?,
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification))
                .with_no_client_auth()
        };
        let server_name = match server_name {
            Some(name) => Some(
                ServerName::try_from(name.to_string())
                    .map_err(|_| format!("`{name}` is not a host name or IP address"))?,
            ),
            None => None,
        };
        Ok(UpstreamTls {
            config: Arc::new(config),
            server_name,
            fingerprint: hasher.finish(),
            ca_file: ca_file.filter(|_| verify).map(Path::to_path_buf),
        })
    }

    /// This config offering ALPN `h2` (for HTTP/2) or `http/1.1`: what the pool's client and its probes use.
    pub fn for_protocol(&self, http2: bool) -> Arc<ClientConfig> {
        self.with_alpn(if http2 {
            &[super::ALPN_H2]
        } else {
            &[super::ALPN_HTTP11]
        })
    }

    /// This config with `alpn` offered.
    pub fn with_alpn(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut config = (*self.config).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

fn roots_from_pem(pem: &[u8], path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert =
            cert.map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(roots)
}

/// The operating system's trusted roots, read once per process.
fn system_roots() -> Result<RootCertStore, String> {
    static ROOTS: OnceLock<Result<RootCertStore, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no system CA certificates found ({} errors); install ca-certificates or set ca_file",
                    found.errors.len()
                ));
            }
            Ok(roots)
        })
        .clone()
}

/// `tls_verify = false`: any certificate is accepted (signatures are still checked, so the session is
/// encrypted to whoever answered).
#[derive(Debug)]
struct NoVerification;

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &super::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &super::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

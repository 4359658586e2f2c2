//! Test certificates made in the test (rcgen): a CA and leaf certificates it signs, written to files; TLS
//! clients that trust the CA, or that accept any certificate so a test can look at which one it got.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use fulcrum::tls::UpstreamTls;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A certificate authority for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key.
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate, DER, to compare with what a handshake presented.
    pub der: Vec<u8>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-signed CA"),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// Writes the CA certificate to `dir/name` and returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.issuer.pem()).expect("write the CA file");
        path
    }

    /// A client config trusting only this CA, offering `alpn`.
    pub fn client(&self, dir: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let ca = self.write(dir, "client-ca.pem");
        UpstreamTls::new(Some(&ca), true, None)
            .expect("a client config for the test CA")
            .with_alpn(alpn)
    }
}

impl Leaf {
    /// Writes `dir/stem.pem` and `dir/stem.key` (replacing them atomically if they exist); returns both paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        for (path, text) in [(&cert, &self.cert_pem), (&key, &self.key_pem)] {
            let temp = path.with_extension("tmp");
            std::fs::write(&temp, text).expect("write a PEM file");
            std::fs::rename(&temp, path).expect("move the PEM file in place");
        }
        (cert, key)
    }

    /// A TLS server config serving this certificate (for a test's https backend).
    pub fn server_config(&self, dir: &Path, stem: &str) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.write(dir, stem);
        let loaded = fulcrum::tls::load_certified_key(&cert, &key, None).expect("load the leaf");
        let shared = fulcrum::tls::listener_config(&[loaded], std::time::Duration::from_secs(3600))
            .expect("a server config");
        // Every config fulcrum builds shares the process's session tickets (so a reload keeps resumption).
        // Test servers are different machines: each gets its own, or a ticket one issued would resume on
        // another and skip its certificate check.
        let mut own = (*shared).clone();
        own.session_storage = rustls::server::ServerSessionMemoryCache::new(256);
        own.ticketer = rustls::crypto::ring::Ticketer::new().expect("a ticketer");
        Arc::new(own)
    }
}

/// A client config that accepts any certificate, offering `alpn`.
pub fn any_cert_client(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    UpstreamTls::new(None, false, None)
        .expect("a no-verify client config")
        .with_alpn(alpn)
}

/// A TLS connection to `addr` sending `sni` (an IP address sends no SNI).
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let stream = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).expect("a server name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
}

/// The leaf certificate the server presented, DER.
pub fn presented(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.to_vec())
        .expect("the server presented a certificate")
}

/// The ALPN protocol the handshake agreed on.
pub fn alpn(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// An answer read whole.
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Body as text.
    pub body: String,
}

/// An HTTP/1.1 sender on an open TLS connection (the connection is driven in the background).
pub async fn http1(
    stream: TlsStream<TcpStream>,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    sender
}

/// An HTTP/2 sender on an open TLS connection (the connection is driven in the background).
pub async fn http2<B>(stream: TlsStream<TcpStream>) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}

/// GET `path` with `Host: host` over an HTTP/1.1 sender.
pub async fn get1(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
) -> Answer {
    sender.ready().await.expect("connection ready");
    let request = Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::new())
        .expect("a GET");
    read(sender.send_request(request).await.expect("an answer")).await
}

/// GET `https://host/path` over an HTTP/2 sender.
pub async fn get2(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
) -> Answer {
    let request = Request::get(format!("https://{host}{path}"))
        .body(Empty::new())
        .expect("a GET");
    read(sender.send_request(request).await.expect("an answer")).await
}

async fn read(response: http::Response<hyper::body::Incoming>) -> Answer {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("read the body")
        .to_bytes();
    Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Config text for a TLS listener on 127.0.0.1:0 named `https` with these (cert, key) files, and one route
/// to pool `pool` of `upstream_body`.
pub fn tls_config(
    certs: &[(PathBuf, PathBuf)],
    extra_listener: &str,
    upstream_body: &str,
) -> String {
    let mut text =
        format!("[[listener]]\nname = \"https\"\nlisten = \"127.0.0.1:0\"\n{extra_listener}\n");
    for (cert, key) in certs {
        text.push_str(&format!(
            "[[listener.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    text.push_str(&format!(
        "\n[[route]]\npath = \"/\"\nupstream = \"pool\"\n\n[upstream.pool]\n{upstream_body}\n"
    ));
    text
}

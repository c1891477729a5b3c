//! TLS with rustls's sans-IO API: the client configuration from ioredis's `tls` options, the
//! handshake over a tokio socket, and the data path any transport drives over its own socket
//! (bytes from the socket in, plaintext out; plaintext in, bytes for the socket out).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, LazyLock, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::TlsOptions;
use crate::error::{EngineError, EngineResult, ErrorKind};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Configurations built so far: building one parses certificates, which a reconnect need not
/// repeat.
static CONFIGS: LazyLock<Mutex<HashMap<TlsOptions, Arc<ClientConfig>>>> =
    LazyLock::new(Default::default);

/// The client configuration for these options (cached).
pub(crate) fn client_config(tls: &TlsOptions, target: &str) -> EngineResult<Arc<ClientConfig>> {
    let mut cache = CONFIGS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(config) = cache.get(tls) {
        return Ok(config.clone());
    }
    let config = Arc::new(build(tls, target)?);
    if cache.len() < 64 {
        cache.insert(tls.clone(), config.clone());
    }
    Ok(config)
}

fn config_error(target: &str, what: &str) -> EngineError {
    EngineError::new(
        ErrorKind::Config,
        format!("invalid TLS settings for {target}: {what}"),
    )
}

fn build(tls: &TlsOptions, target: &str) -> EngineResult<ClientConfig> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(target, &e.to_string()))?;
    let builder = if tls.reject_unauthorized {
        let mut roots = RootCertStore::empty();
        match &tls.ca {
            Some(pem) => {
                let certs = certificates(pem, target, "ca")?;
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| config_error(target, &format!("ca: {e}")))?;
                }
            }
            None => {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                // As Node does for ioredis: NODE_EXTRA_CA_CERTS adds roots to the bundled ones.
                for cert in extra_node_roots() {
                    let _ = roots.add(cert);
                }
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    };
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, target, "cert")?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|_| config_error(target, "key is not a PEM private key"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| config_error(target, &format!("cert and key: {e}")))
        }
        (Some(_), None) | (None, Some(_)) => Err(config_error(target, "cert and key go together")),
        (None, None) => Ok(builder.with_no_client_auth()),
    }
}

/// The certificates of the PEM file named by `NODE_EXTRA_CA_CERTS`, if any (as Node, a file that
/// cannot be read adds nothing).
fn extra_node_roots() -> Vec<CertificateDer<'static>> {
    let Some(path) = std::env::var_os("NODE_EXTRA_CA_CERTS") else {
        return Vec::new();
    };
    std::fs::read(path)
        .map(|pem| {
            CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect()
        })
        .unwrap_or_default()
}

fn certificates(
    pem: &[u8],
    target: &str,
    what: &str,
) -> EngineResult<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| config_error(target, &format!("{what} is not PEM")))?;
    if certs.is_empty() {
        return Err(config_error(
            target,
            &format!("{what} holds no certificate"),
        ));
    }
    Ok(certs)
}

/// ioredis's `rejectUnauthorized: false`: any certificate is accepted (signatures are still
/// checked, so the session is encrypted, but the peer is not authenticated).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A new client session for `host` (`servername` overrides the name checked and sent).
pub(crate) fn session(
    tls: &TlsOptions,
    host: &str,
    target: &str,
) -> EngineResult<ClientConnection> {
    let config = client_config(tls, target)?;
    let name = tls.servername.as_deref().unwrap_or(host);
    let name = ServerName::try_from(name.trim_matches(['[', ']']).to_owned()).map_err(|_| {
        config_error(
            target,
            "the server name is not a valid DNS name or IP address",
        )
    })?;
    ClientConnection::new(config, name).map_err(|e| config_error(target, &e.to_string()))
}

/// The data path of an established session.
pub struct TlsLayer {
    session: ClientConnection,
}

impl TlsLayer {
    pub fn new(session: ClientConnection) -> Self {
        Self { session }
    }

    /// Bytes read from the socket: their plaintext is appended to `plain`. An error means the
    /// session is broken (the socket must be dropped).
    pub fn read_socket(&mut self, mut bytes: &[u8], plain: &mut Vec<u8>) -> Result<(), String> {
        while !bytes.is_empty() {
            self.session
                .read_tls(&mut bytes)
                .map_err(|e| e.to_string())?;
            let state = self
                .session
                .process_new_packets()
                .map_err(|e| format!("TLS: {e}"))?;
            let available = state.plaintext_bytes_to_read();
            if available > 0 {
                let start = plain.len();
                plain.resize(start + available, 0);
                let n = self
                    .session
                    .reader()
                    .read(&mut plain[start..])
                    .map_err(|e| e.to_string())?;
                plain.truncate(start + n);
            }
            if state.peer_has_closed() {
                return Err("the server closed the TLS session".into());
            }
        }
        Ok(())
    }

    /// Takes as much plaintext as the session buffers; returns how much it took.
    pub fn write_plain(&mut self, plain: &[u8]) -> usize {
        self.session.writer().write(plain).unwrap_or(0)
    }

    /// Appends the bytes the session has for the socket to `out`.
    pub fn take_socket_bytes(&mut self, out: &mut Vec<u8>) {
        while self.session.wants_write() {
            if self.session.write_tls(out).is_err() {
                break;
            }
        }
    }
}

/// Runs the handshake over a connected tokio socket.
pub(crate) async fn handshake(
    stream: &tokio::net::TcpStream,
    session: &mut ClientConnection,
) -> Result<(), String> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    loop {
        while session.wants_write() {
            out.clear();
            session.write_tls(&mut out).map_err(|e| e.to_string())?;
            write_all(stream, &out).await.map_err(|e| e.to_string())?;
        }
        if !session.is_handshaking() {
            return Ok(());
        }
        stream.readable().await.map_err(|e| e.to_string())?;
        match stream.try_read(&mut buf) {
            Ok(0) => return Err("the server closed the connection during the TLS handshake".into()),
            Ok(n) => {
                let mut bytes = &buf[..n];
                while !bytes.is_empty() {
                    session.read_tls(&mut bytes).map_err(|e| e.to_string())?;
                    session
                        .process_new_packets()
                        .map_err(|e| format!("TLS handshake failed: {e}"))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn write_all(stream: &tokio::net::TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

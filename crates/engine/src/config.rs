//! Where the engine's own connection goes and how long it may wait.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{EngineError, EngineResult, ErrorKind};

/// Default limit for one connection attempt, handshake included.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Default limit for one command's reply.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(1000);

#[derive(Clone, PartialEq, Eq)]
pub enum ServerAddress {
    Tcp { host: String, port: u16 },
    Unix { path: PathBuf },
}

/// TLS settings, as ioredis's `tls` option carries them.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsOptions {
    /// PEM root certificate(s) to trust instead of the bundled Mozilla roots.
    pub ca: Option<Vec<u8>>,
    /// PEM client certificate and key, for mutual TLS.
    pub cert: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    /// `false` accepts any certificate (ioredis `rejectUnauthorized: false`).
    pub reject_unauthorized: bool,
    /// The name to check the certificate against and send (SNI); the host by default.
    pub servername: Option<String>,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca", &self.ca.as_ref().map(|_| "<pem>"))
            .field("cert", &self.cert.as_ref().map(|_| "<pem>"))
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("reject_unauthorized", &self.reject_unauthorized)
            .field("servername", &self.servername)
            .finish()
    }
}

/// One Redis server and how to talk to it.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub address: ServerAddress,
    pub tls: Option<TlsOptions>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

impl ServerConfig {
    pub fn tcp(host: impl Into<String>, port: u16) -> Self {
        Self {
            address: ServerAddress::Tcp {
                host: host.into(),
                port,
            },
            tls: None,
            username: None,
            password: None,
            db: 0,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// `host:port` or the socket path: what messages call this server. Holds no secrets.
    pub fn target(&self) -> String {
        match &self.address {
            ServerAddress::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            ServerAddress::Tcp { host, port } => format!("{host}:{port}"),
            ServerAddress::Unix { path } => path.display().to_string(),
        }
    }

    pub(crate) fn client(&self) -> EngineResult<redis::Client> {
        let info = self.connection_info()?;
        match self.tls_certificates() {
            Some(certs) => redis::Client::build_with_tls(info, certs),
            None => redis::Client::open(info),
        }
        .map_err(|e| self.config_error(&e))
    }

    /// Address, credentials and database, as the redis crate takes them.
    pub(crate) fn connection_info(&self) -> EngineResult<redis::ConnectionInfo> {
        let addr = match (&self.address, &self.tls) {
            (ServerAddress::Tcp { host, port }, None) => {
                redis::ConnectionAddr::Tcp(host.clone(), *port)
            }
            (ServerAddress::Tcp { host, port }, Some(tls)) => redis::ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: !tls.reject_unauthorized,
                tls_params: None,
            },
            (ServerAddress::Unix { path }, _) => redis::ConnectionAddr::Unix(path.clone()),
        };
        let mut redis_info = redis::RedisConnectionInfo::default()
            .set_db(self.db)
            .set_lib_name("simple-distributed-lock", env!("CARGO_PKG_VERSION"));
        if let Some(username) = &self.username {
            redis_info = redis_info.set_username(username);
        }
        if let Some(password) = &self.password {
            redis_info = redis_info.set_password(password);
        }
        if self.tls.is_some() {
            install_crypto_provider();
        }
        Ok(redis::IntoConnectionInfo::into_connection_info(addr)
            .map_err(|e| self.config_error(&e))?
            .set_redis_settings(redis_info))
    }

    /// Private CA and client certificate, if the TLS settings name any.
    pub(crate) fn tls_certificates(&self) -> Option<redis::TlsCertificates> {
        let tls = self.tls.as_ref()?;
        if tls.ca.is_none() && tls.cert.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: match (&tls.cert, &tls.key) {
                (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
                _ => None,
            },
            root_cert: tls.ca.clone(),
        })
    }

    pub(crate) fn config_error(&self, err: &redis::RedisError) -> EngineError {
        EngineError::new(
            ErrorKind::Config,
            format!(
                "invalid connection settings for {}: {}",
                self.target(),
                err.detail().unwrap_or_else(|| err.category())
            ),
        )
    }
}

/// rustls needs one process-wide crypto provider; ring is the one compiled in.
fn install_crypto_provider() {
    // Err means another part of the process installed one first, which serves as well.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("target", &self.target())
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_password() {
        let mut config = ServerConfig::tcp("127.0.0.1", 6379);
        config.password = Some("s3cr3t-value".into());
        config.tls = Some(TlsOptions {
            key: Some(b"-----BEGIN PRIVATE KEY----- secret".to_vec()),
            ..TlsOptions::default()
        });
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(shown.contains("127.0.0.1:6379"), "{shown}");
    }

    #[test]
    fn ipv6_targets_are_bracketed() {
        assert_eq!(ServerConfig::tcp("::1", 6380).target(), "[::1]:6380");
    }
}

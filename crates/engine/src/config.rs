//! Where the engine's own connection goes and how long it may wait.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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

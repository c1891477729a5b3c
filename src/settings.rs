//! The connection settings the facade sends, already normalized from an ioredis instance, a URL
//! or an options object. Secrets pass through here into the engine and nowhere else.

use std::path::PathBuf;
use std::time::Duration;

use napi::Result;
use napi_derive::napi;
use sdl_engine::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, ServerAddress, ServerConfig, TlsOptions,
};

use crate::errors::invalid_arg;

#[napi(object)]
pub struct TlsSettings {
    /// PEM root certificate(s) to trust instead of the bundled Mozilla roots.
    pub ca: Option<String>,
    /// PEM client certificate and key (mutual TLS).
    pub cert: Option<String>,
    pub key: Option<String>,
    /// `false` accepts any server certificate. Default `true`.
    pub reject_unauthorized: Option<bool>,
}

/// Lock-wide engine settings.
#[napi(object)]
pub struct LockerSettings {
    /// Keep a fencing counter per resource (default `true`).
    pub fencing: Option<bool>,
}

#[napi(object)]
pub struct ConnectionSettings {
    pub host: Option<String>,
    pub port: Option<u32>,
    /// Unix socket path; wins over host and port.
    pub path: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: Option<u32>,
    pub tls: Option<TlsSettings>,
    pub connect_timeout_ms: Option<u32>,
    pub command_timeout_ms: Option<u32>,
}

impl ConnectionSettings {
    pub(crate) fn into_config(self) -> Result<ServerConfig> {
        let address = match self.path {
            Some(path) => ServerAddress::Unix {
                path: PathBuf::from(path),
            },
            None => {
                let port = self.port.unwrap_or(6379);
                let port = u16::try_from(port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| invalid_arg("port", "must be an integer from 1 to 65535"))?;
                ServerAddress::Tcp {
                    host: self.host.unwrap_or_else(|| "127.0.0.1".to_owned()),
                    port,
                }
            }
        };
        let timeout = |ms: Option<u32>, default: Duration, name: &str| match ms {
            None => Ok(default),
            Some(0) => Err(invalid_arg(name, "must be a positive integer of ms")),
            Some(ms) => Ok(Duration::from_millis(u64::from(ms))),
        };
        Ok(ServerConfig {
            address,
            tls: self.tls.map(|tls| TlsOptions {
                ca: tls.ca.map(String::into_bytes),
                cert: tls.cert.map(String::into_bytes),
                key: tls.key.map(String::into_bytes),
                reject_unauthorized: tls.reject_unauthorized.unwrap_or(true),
            }),
            username: self.username.filter(|u| !u.is_empty()),
            password: self.password.filter(|p| !p.is_empty()),
            db: i64::from(self.db.unwrap_or(0)),
            connect_timeout: timeout(
                self.connect_timeout_ms,
                DEFAULT_CONNECT_TIMEOUT,
                "connectTimeout",
            )?,
            command_timeout: timeout(
                self.command_timeout_ms,
                DEFAULT_COMMAND_TIMEOUT,
                "commandTimeout",
            )?,
        })
    }
}

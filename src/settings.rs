//! The connection settings the facade sends, already normalized from an ioredis instance, a URL
//! or an options object. Secrets pass through here into the engine and nowhere else.

use std::path::PathBuf;
use std::time::Duration;

use napi::Result;
use napi_derive::napi;
use sdl_engine::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRIFT_FACTOR, SentinelConfig,
    ServerAddress, ServerConfig, TlsOptions, Topology,
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
    /// The name the certificate must carry (and SNI sends); the host by default.
    pub servername: Option<String>,
}

/// Lock-wide engine settings.
#[napi(object)]
pub struct LockerSettings {
    /// Keep a fencing counter per resource (default `true`).
    pub fencing: Option<bool>,
    /// Share of the ttl set aside for clock drift (default 0.01).
    pub drift_factor: Option<f64>,
    /// What every key of the Lock starts with (ioredis keyPrefix + prefix): it names the
    /// fencing counters.
    pub key_prefix: Option<String>,
    /// `performance.now()` when the Lock was made: deadlines go to JS on that clock.
    pub clock_origin_ms: Option<f64>,
    /// A `Semaphore` of this many permits per resource (a positive integer), not a `Lock`.
    pub permits: Option<u32>,
    /// A `ReadWriteLock`, not a `Lock`: each acquire says which side it takes.
    pub read_write: Option<bool>,
}

impl LockerSettings {
    pub(crate) fn drift_factor(&self) -> Result<f64> {
        match self.drift_factor {
            None => Ok(DEFAULT_DRIFT_FACTOR),
            Some(f) if f.is_finite() && (0.0..0.5).contains(&f) => Ok(f),
            Some(_) => Err(invalid_arg(
                "driftFactor",
                "must be a number from 0 to below 0.5",
            )),
        }
    }
}

/// The deployment, as the facade resolved it.
#[napi(object)]
pub struct TopologySettings {
    /// `single`, `sentinel`, `cluster` or `redlock`.
    pub kind: String,
    /// The server (`single`), the sentinels, the cluster's startup nodes, or the masters.
    pub servers: Vec<ConnectionSettings>,
    /// `sentinel`: the monitored master's name.
    pub master_name: Option<String>,
    /// `sentinel`: how to talk to the master once found (credentials, db, TLS, timeouts).
    pub master: Option<ConnectionSettings>,
}

impl TopologySettings {
    pub(crate) fn into_topology(self) -> Result<Topology> {
        let mut servers = self
            .servers
            .into_iter()
            .map(ConnectionSettings::into_config)
            .collect::<Result<Vec<_>>>()?;
        match self.kind.as_str() {
            "single" if servers.len() == 1 => Ok(Topology::Single(servers.remove(0))),
            "cluster" if !servers.is_empty() => Ok(Topology::Cluster(servers)),
            "redlock" if servers.len() >= 2 => Ok(Topology::Redlock(servers)),
            "sentinel" if !servers.is_empty() => Ok(Topology::Sentinel(SentinelConfig {
                sentinels: servers,
                master_name: self
                    .master_name
                    .ok_or_else(|| invalid_arg("name", "must name the Sentinel master"))?,
                master: self
                    .master
                    .ok_or_else(|| invalid_arg("master", "must describe the Sentinel master"))?
                    .into_config()?,
            })),
            _ => Err(invalid_arg(
                "redis",
                "does not describe a supported deployment",
            )),
        }
    }
}

/// How an acquire waits; absent for v1's default single attempt (the fast path).
#[napi(object)]
pub struct WaitSettings {
    /// Retries after the first attempt; `Infinity` for no limit.
    pub retry_count: f64,
    pub retry_delay_ms: f64,
    pub retry_jitter_ms: f64,
    pub wait_timeout_ms: Option<f64>,
    /// Replicas that must acknowledge the lock's write (WAIT), and how long to wait for them.
    pub replicas: Option<u32>,
    pub replicas_timeout_ms: Option<u32>,
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
                servername: tls.servername.filter(|s| !s.is_empty()),
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

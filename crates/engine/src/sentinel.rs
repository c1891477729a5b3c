//! Finding the current master through Redis Sentinel.
//!
//! Asked at every (re)connection, so the engine follows failovers. A failover is noticed in two
//! ways: the sentinels announce it (`+switch-master`, which the engine listens to on one
//! sentinel), and the old master's connection breaks or answers READONLY once it is demoted.
//! Either way the engine drops the connection, and the next one goes to whichever master the
//! sentinels name now (checked with ROLE before use). Listening matters: a demoted master keeps
//! accepting writes for a while after the failover, and those writes are lost.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use crate::config::{ServerAddress, ServerConfig};
use crate::error::{self, EngineError, EngineResult, ErrorKind};
use crate::net::link::{self, Link};

#[derive(Debug, Clone)]
pub struct SentinelConfig {
    /// The sentinels, with the credentials for the sentinels themselves.
    pub sentinels: Vec<ServerConfig>,
    /// The monitored master's name (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// How to talk to the master once found: credentials, db, TLS, timeouts. Its address is
    /// replaced by the one the sentinels report.
    pub master: ServerConfig,
}

impl SentinelConfig {
    /// What messages call this deployment. Holds no secrets.
    pub fn target(&self) -> String {
        format!("master \"{}\" (via Sentinel)", self.master_name)
    }

    /// The master's settings at the address a sentinel reports now.
    pub(crate) async fn locate_master(&self) -> EngineResult<ServerConfig> {
        let mut failures = Vec::new();
        for sentinel in &self.sentinels {
            match ask_sentinel(sentinel, &self.master_name).await {
                Ok(Some((host, port))) => {
                    let mut master = self.master.clone();
                    master.address = ServerAddress::Tcp { host, port };
                    return Ok(master);
                }
                Ok(None) => {
                    failures.push(format!("{}: does not know this master", sentinel.target()))
                }
                Err(err) => failures.push(format!("{}: {}", sentinel.target(), err.message())),
            }
        }
        Err(EngineError::new(
            ErrorKind::Connection,
            format!(
                "no sentinel named the master \"{}\" ({})",
                self.master_name,
                failures.join("; ")
            ),
        ))
    }
}

async fn ask_sentinel(
    sentinel: &ServerConfig,
    master_name: &str,
) -> EngineResult<Option<(String, u16)>> {
    let limit = sentinel.connect_timeout + sentinel.command_timeout;
    let asked = async {
        let mut link = Link::open(sentinel).await?;
        link.send(&[
            b"SENTINEL",
            b"get-master-addr-by-name",
            master_name.as_bytes(),
        ])
        .await?;
        let reply = link.next().await?;
        match reply {
            Value::Nil => Ok(None),
            Value::Array(parts) => match parts.as_slice() {
                [Value::BulkString(host), Value::BulkString(port)] => {
                    let host = String::from_utf8_lossy(host).into_owned();
                    let port = std::str::from_utf8(port).ok().and_then(|p| p.parse().ok());
                    match port {
                        Some(port) => Ok(Some((host, port))),
                        None => Err(link::unexpected(link.target(), "get-master-addr-by-name")),
                    }
                }
                _ => Err(link::unexpected(link.target(), "get-master-addr-by-name")),
            },
            Value::ServerError(err) => Err(error::server_error(
                err.code(),
                err.details(),
                link.target(),
            )),
            _ => Err(link::unexpected(link.target(), "get-master-addr-by-name")),
        }
    };
    match tokio::time::timeout(limit, asked).await {
        Ok(result) => result,
        Err(_) => Err(error::timed_out(&sentinel.target(), limit)),
    }
}

/// Calls `on_switch(true)` whenever a sentinel announces a new master for this name, and after
/// each re-subscription (an announcement may have been missed meanwhile); `on_switch(false)`
/// only asks whether to go on. Runs until `on_switch` returns `false`. Rotates through the
/// sentinels when one fails.
pub(crate) async fn watch_switches(config: Arc<SentinelConfig>, on_switch: impl Fn(bool) -> bool) {
    let mut attempt = 0usize;
    let mut backoff = Duration::from_millis(100);
    loop {
        let sentinel = &config.sentinels[attempt % config.sentinels.len()];
        let subscribed = async {
            let mut link = Link::open(sentinel).await?;
            link.send(&[b"SUBSCRIBE", b"+switch-master"]).await?;
            Ok::<_, EngineError>(link)
        };
        let limit = sentinel.connect_timeout + sentinel.command_timeout;
        if let Ok(Ok(mut link)) = tokio::time::timeout(limit, subscribed).await {
            backoff = Duration::from_millis(100);
            if !on_switch(attempt > 0) {
                return;
            }
            while let Ok(value) = link.next().await {
                // "<name> <old ip> <old port> <new ip> <new port>"
                let Some((_, payload)) = link::message(&value) else {
                    continue;
                };
                let name = payload.split(|b| *b == b' ').next();
                if name == Some(config.master_name.as_bytes()) && !on_switch(true) {
                    return;
                }
            }
        }
        attempt += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        if !on_switch(false) {
            return;
        }
    }
}

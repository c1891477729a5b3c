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

use futures_util::StreamExt;

use crate::config::{ServerAddress, ServerConfig};
use crate::error::{EngineError, EngineResult, ErrorKind};

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
    let target = sentinel.target();
    let client = sentinel.client()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(sentinel.connect_timeout))
        .set_response_timeout(Some(sentinel.command_timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| EngineError::from_redis(&e, &target, sentinel.connect_timeout))?;
    let reply: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master_name)
        .query_async(&mut conn)
        .await
        .map_err(|e| EngineError::from_redis(&e, &target, sentinel.command_timeout))?;
    Ok(reply)
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
            let mut pubsub = sentinel.client()?.get_async_pubsub().await.map_err(|e| {
                EngineError::from_redis(&e, &sentinel.target(), sentinel.connect_timeout)
            })?;
            pubsub.subscribe("+switch-master").await.map_err(|e| {
                EngineError::from_redis(&e, &sentinel.target(), sentinel.command_timeout)
            })?;
            Ok::<_, EngineError>(pubsub)
        };
        let limit = sentinel.connect_timeout + sentinel.command_timeout;
        if let Ok(Ok(mut pubsub)) = tokio::time::timeout(limit, subscribed).await {
            backoff = Duration::from_millis(100);
            if !on_switch(attempt > 0) {
                return;
            }
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                // "<name> <old ip> <old port> <new ip> <new port>"
                let payload: String = message.get_payload().unwrap_or_default();
                if payload.split(' ').next() == Some(config.master_name.as_str())
                    && !on_switch(true)
                {
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

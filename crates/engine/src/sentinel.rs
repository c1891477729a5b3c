//! Finding the current master through Redis Sentinel.
//!
//! Asked at every (re)connection, so the engine follows failovers: after one, the old master's
//! connection breaks or answers READONLY, the engine drops it, and the next connection goes to
//! whichever master the sentinels name now (checked with ROLE before use).

use std::time::Duration;

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

/// Confirms that a freshly connected server is a master (a failover may be under way).
pub(crate) async fn ensure_master(
    conn: &mut redis::aio::MultiplexedConnection,
    target: &str,
    timeout: Duration,
) -> EngineResult<()> {
    let role: Vec<redis::Value> = redis::cmd("ROLE")
        .query_async(conn)
        .await
        .map_err(|e| EngineError::from_redis(&e, target, timeout))?;
    match role.first() {
        Some(redis::Value::BulkString(bytes)) if bytes == b"master" => Ok(()),
        _ => Err(EngineError::new(
            ErrorKind::Connection,
            format!("{target} is not a master (a failover may be in progress)"),
        )),
    }
}

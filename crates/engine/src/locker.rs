//! The lock operations on one Redis server, with v1's data layout and semantics.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::connection::Connection;
use crate::error::{EngineError, EngineResult};
use crate::extender::{Extender, LostCallback};
use crate::scripts;
use crate::token::new_token;

/// How `acquire` retries a lock somebody else holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first one; `None` retries until acquired or closed.
    pub retry_count: Option<u64>,
    pub retry_delay: Duration,
}

impl RetryPolicy {
    /// One attempt, no retry (v1's default).
    pub const ONCE: RetryPolicy = RetryPolicy {
        retry_count: Some(0),
        retry_delay: Duration::from_millis(200),
    };
}

/// What `acquire` needs to know besides the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcquireOptions {
    pub ttl: Duration,
    pub retry: RetryPolicy,
    pub auto_extend: bool,
}

/// Lock operations against one Redis server over one lazily opened connection.
///
/// Creating a `Locker` does no I/O and needs no runtime; the first operation connects.
pub struct Locker {
    conn: Arc<Connection>,
    extender: Extender,
    closed: CancellationToken,
}

impl Locker {
    pub fn new(config: ServerConfig, on_lost: Option<LostCallback>) -> EngineResult<Self> {
        let conn = Arc::new(Connection::new(config)?);
        let closed = CancellationToken::new();
        Ok(Self {
            extender: Extender::new(conn.clone(), closed.clone(), on_lost),
            conn,
            closed,
        })
    }

    /// `host:port` (or socket path) of the server, for messages.
    pub fn target(&self) -> &str {
        self.conn.target()
    }

    /// Takes the lock at `key` (`SET key token PX ttl NX`), retrying as the policy says.
    ///
    /// Returns the owner token, or `None` when every attempt found the lock held.
    pub async fn acquire(
        &self,
        key: &str,
        options: AcquireOptions,
    ) -> EngineResult<Option<String>> {
        self.ensure_open()?;
        let token = new_token();
        let ttl_ms = duration_ms(options.ttl);
        let mut set = redis::cmd("SET");
        set.arg(key).arg(&token).arg("PX").arg(ttl_ms).arg("NX");
        let mut attempt: u64 = 0;
        loop {
            let sent_at = Instant::now();
            let reply: Option<String> = self.conn.query(&set).await?;
            if reply.is_some() {
                if options.auto_extend {
                    self.extender
                        .register(key.to_owned(), &token, options.ttl, sent_at);
                }
                return Ok(Some(token));
            }
            if options.retry.retry_count.is_some_and(|n| attempt >= n) {
                return Ok(None);
            }
            attempt += 1;
            tokio::select! {
                _ = self.closed.cancelled() => return Err(EngineError::closed()),
                _ = tokio::time::sleep(options.retry.retry_delay) => {}
            }
        }
    }

    /// Deletes the lock if `token` still owns it; stops its auto-extension first.
    pub async fn release(&self, key: &str, token: &str) -> EngineResult<bool> {
        self.extender.forget(key, token);
        self.ensure_open()?;
        let mut invocation = scripts::RELEASE.prepare_invoke();
        invocation.key(key).arg(token);
        let deleted: i64 = self.conn.invoke(&invocation).await?;
        Ok(deleted == 1)
    }

    /// Sets the lock's TTL to `ttl` if `token` still owns it. Never re-creates an expired key.
    pub async fn extend(&self, key: &str, token: &str, ttl: Duration) -> EngineResult<bool> {
        self.ensure_open()?;
        let sent_at = Instant::now();
        let mut invocation = scripts::EXTEND.prepare_invoke();
        invocation.key(key).arg(token).arg(duration_ms(ttl));
        let extended: i64 = self.conn.invoke(&invocation).await?;
        if extended == 1 {
            self.extender.extended(token, sent_at + ttl);
        }
        Ok(extended == 1)
    }

    /// Whether anybody holds the lock at `key`.
    pub async fn is_locked(&self, key: &str) -> EngineResult<bool> {
        self.ensure_open()?;
        let exists: i64 = self.conn.query(redis::cmd("EXISTS").arg(key)).await?;
        Ok(exists == 1)
    }

    /// How many locks this `Locker` is auto-extending now.
    pub fn auto_extended(&self) -> usize {
        self.extender.held()
    }

    /// Stops auto-extension and waiting, and drops the connection. Locks still held expire
    /// at their TTL. Idempotent.
    pub fn close(&self) {
        self.closed.cancel();
        self.conn.close();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    fn ensure_open(&self) -> EngineResult<()> {
        if self.closed.is_cancelled() {
            Err(EngineError::closed())
        } else {
            Ok(())
        }
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        self.close();
    }
}

fn duration_ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

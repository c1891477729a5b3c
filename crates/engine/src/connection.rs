//! One lazily opened, self-healing multiplexed connection to one Redis server: a fixed address,
//! or the master that Sentinel names at each (re)connection.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::FutureExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, ScriptInvocation};

use crate::config::ServerConfig;
use crate::error::{EngineError, EngineResult, ErrorKind};
use crate::lazy::Lazy;
use crate::sentinel::{SentinelConfig, ensure_master, watch_switches};

/// Where the connection goes.
#[derive(Clone)]
enum Locator {
    Fixed(Arc<redis::Client>),
    Sentinel(Arc<SentinelConfig>),
}

pub(crate) struct Connection {
    target: Arc<str>,
    connect_timeout: Duration,
    command_timeout: Duration,
    locator: Locator,
    lazy: Arc<Lazy<MultiplexedConnection>>,
    /// Sentinel mode: the listener for failover announcements, started on first use.
    switch_watcher: OnceLock<()>,
}

impl Connection {
    pub(crate) fn new(config: &ServerConfig) -> EngineResult<Self> {
        let target: Arc<str> = config.target().into();
        let locator = Locator::Fixed(Arc::new(config.client()?));
        Ok(Self::with_locator(target, config, locator))
    }

    pub(crate) fn via_sentinel(sentinel: SentinelConfig) -> Self {
        let target: Arc<str> = sentinel.target().into();
        let master = sentinel.master.clone();
        Self::with_locator(target, &master, Locator::Sentinel(Arc::new(sentinel)))
    }

    fn with_locator(target: Arc<str>, config: &ServerConfig, locator: Locator) -> Self {
        let async_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout));
        let connect_timeout = config.connect_timeout;
        let connect = {
            let locator = locator.clone();
            let target = target.clone();
            Arc::new(move || {
                let locator = locator.clone();
                let target = target.clone();
                let async_config = async_config.clone();
                async move {
                    let (client, node_target) = client_for(&locator, &target).await?;
                    let mut conn = client
                        .get_multiplexed_async_connection_with_config(&async_config)
                        .await
                        .map_err(|err| connect_error(&err, &node_target, connect_timeout))?;
                    if matches!(locator, Locator::Sentinel(_)) {
                        ensure_master(&mut conn, &node_target, connect_timeout).await?;
                    }
                    Ok(conn)
                }
                .boxed()
            })
        };
        Self {
            target,
            connect_timeout,
            command_timeout: config.command_timeout,
            locator,
            lazy: Arc::new(Lazy::new(connect)),
            switch_watcher: OnceLock::new(),
        }
    }

    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    pub(crate) fn timeouts(&self) -> (Duration, Duration) {
        (self.connect_timeout, self.command_timeout)
    }

    /// A client for the server this connection talks to now, for a connection of another kind
    /// (pub/sub). Asks Sentinel again in Sentinel mode.
    pub(crate) async fn client(&self) -> EngineResult<redis::Client> {
        Ok(client_for(&self.locator, &self.target).await?.0)
    }

    /// The current connection, opened if needed.
    async fn current(&self) -> EngineResult<(u64, MultiplexedConnection)> {
        if let Locator::Sentinel(sentinel) = &self.locator {
            self.switch_watcher.get_or_init(|| {
                let lazy = Arc::downgrade(&self.lazy);
                tokio::spawn(watch_switches(sentinel.clone(), move |switched| {
                    let Some(lazy) = lazy.upgrade().filter(|l| !l.is_closed()) else {
                        return false;
                    };
                    if switched {
                        lazy.replace_current();
                    }
                    true
                }));
            });
        }
        self.lazy.get().await
    }

    /// Runs one command; a broken or silent connection is replaced for the next call.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> EngineResult<T> {
        let (generation, mut conn) = self.current().await?;
        let result = cmd.query_async(&mut conn).await;
        self.settle(generation, result)
    }

    /// Runs a script by EVALSHA, loading it on NOSCRIPT (after a restart or failover).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> EngineResult<T> {
        let (generation, mut conn) = self.current().await?;
        let result = invocation.invoke_async(&mut conn).await;
        self.settle(generation, result)
    }

    fn settle<T>(&self, generation: u64, result: redis::RedisResult<T>) -> EngineResult<T> {
        result.map_err(|err| {
            // READONLY: this server became a replica (failover); find the master again.
            let demoted = err.code() == Some("READONLY");
            let err = EngineError::from_redis(&err, &self.target, self.command_timeout);
            if err.breaks_connection() || demoted {
                self.lazy.replace(generation);
            }
            err
        })
    }

    /// Drops the connection and stops reconnecting; later calls fail with a closed error.
    pub(crate) fn close(&self) {
        self.lazy.close();
    }
}

/// The client to connect with now, and what to call that server in messages.
async fn client_for(locator: &Locator, target: &str) -> EngineResult<(redis::Client, String)> {
    match locator {
        Locator::Fixed(client) => Ok(((**client).clone(), target.to_owned())),
        Locator::Sentinel(sentinel) => {
            let master = sentinel.locate_master().await?;
            let node_target = format!("{target} at {}", master.target());
            Ok((master.client()?, node_target))
        }
    }
}

/// A failed connection attempt, worded as such (a refused port, a silent server, bad auth).
fn connect_error(err: &redis::RedisError, target: &str, timeout: Duration) -> EngineError {
    let classified = EngineError::from_redis(err, target, timeout);
    match classified.kind() {
        ErrorKind::Timeout => EngineError::new(
            ErrorKind::Connection,
            format!(
                "cannot connect to Redis at {target}: no answer within {} ms",
                timeout.as_millis()
            ),
        ),
        ErrorKind::Connection if !classified.message().starts_with("cannot connect") => {
            EngineError::new(
                ErrorKind::Connection,
                format!("cannot connect to Redis at {target}: {err}"),
            )
        }
        _ => classified,
    }
}

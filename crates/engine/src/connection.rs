//! One lazily opened, self-healing multiplexed connection to one Redis server.
//!
//! Why not the crate's `ConnectionManager`: it never retries after a failed handshake (a wrong
//! password stays wrong until restart) and keeps a connection whose server stopped answering.
//! Here every wait is bounded, a connection that timed out or broke is dropped and replaced in
//! the background, and a failed attempt leaves the slot empty so the next call tries afresh.

use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, ScriptInvocation};

use crate::config::ServerConfig;
use crate::error::{EngineError, EngineResult};

type ConnectFuture = Shared<BoxFuture<'static, EngineResult<MultiplexedConnection>>>;

enum Slot {
    Idle,
    Connecting {
        generation: u64,
        attempt: ConnectFuture,
    },
    Ready {
        generation: u64,
        conn: MultiplexedConnection,
    },
    Closed,
}

pub(crate) struct Connection {
    config: ServerConfig,
    target: Arc<str>,
    client: redis::Client,
    async_config: AsyncConnectionConfig,
    state: Mutex<State>,
}

struct State {
    slot: Slot,
    next_generation: u64,
}

impl Connection {
    pub(crate) fn new(config: ServerConfig) -> EngineResult<Self> {
        let client = config.client()?;
        let async_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout));
        Ok(Self {
            target: config.target().into(),
            config,
            client,
            async_config,
            state: Mutex::new(State {
                slot: Slot::Idle,
                next_generation: 1,
            }),
        })
    }

    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// The crate's client with the same settings, for connections of another kind (pub/sub).
    pub(crate) fn client(&self) -> redis::Client {
        self.client.clone()
    }

    /// Runs one command; a broken or silent connection is replaced for the next call.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> EngineResult<T> {
        let (generation, mut conn) = self.get().await?;
        let result = cmd.query_async(&mut conn).await;
        self.settle(generation, result)
    }

    /// Runs a script by EVALSHA, loading it on NOSCRIPT (after a restart or failover).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> EngineResult<T> {
        let (generation, mut conn) = self.get().await?;
        let result = invocation.invoke_async(&mut conn).await;
        self.settle(generation, result)
    }

    fn settle<T>(&self, generation: u64, result: redis::RedisResult<T>) -> EngineResult<T> {
        result.map_err(|err| {
            let err = EngineError::from_redis(&err, &self.target, self.config.command_timeout);
            if err.breaks_connection() {
                self.replace(generation);
            }
            err
        })
    }

    /// Drops the connection and stops reconnecting; later calls fail with a closed error.
    pub(crate) fn close(&self) {
        self.lock().slot = Slot::Closed;
    }

    async fn get(&self) -> EngineResult<(u64, MultiplexedConnection)> {
        let (generation, attempt) = {
            let mut state = self.lock();
            match &state.slot {
                Slot::Ready { generation, conn } => return Ok((*generation, conn.clone())),
                // An attempt that already failed is stale news: the server may be back.
                Slot::Connecting { attempt, .. } if matches!(attempt.peek(), Some(Err(_))) => {
                    self.start_connecting(&mut state)
                }
                Slot::Connecting {
                    generation,
                    attempt,
                } => (*generation, attempt.clone()),
                Slot::Closed => return Err(EngineError::closed()),
                Slot::Idle => self.start_connecting(&mut state),
            }
        };
        let outcome = attempt.await;
        let mut state = self.lock();
        let current =
            matches!(&state.slot, Slot::Connecting { generation: g, .. } if *g == generation);
        match outcome {
            Ok(conn) => {
                if current {
                    state.slot = Slot::Ready {
                        generation,
                        conn: conn.clone(),
                    };
                }
                Ok((generation, conn))
            }
            Err(err) => {
                if current {
                    state.slot = Slot::Idle;
                }
                Err(err)
            }
        }
    }

    /// Starts a connection attempt (it runs even if nobody awaits it) and records it.
    fn start_connecting(&self, state: &mut State) -> (u64, ConnectFuture) {
        let generation = state.next_generation;
        state.next_generation += 1;
        let client = self.client.clone();
        let async_config = self.async_config.clone();
        let target = self.target.clone();
        let timeout = self.config.connect_timeout;
        let attempt: ConnectFuture = async move {
            client
                .get_multiplexed_async_connection_with_config(&async_config)
                .await
                .map_err(|err| connect_error(&err, &target, timeout))
        }
        .boxed()
        .shared();
        // Drive the attempt in the background so a reconnect happens before the next call.
        tokio::spawn(attempt.clone().map(|_| ()));
        state.slot = Slot::Connecting {
            generation,
            attempt: attempt.clone(),
        };
        (generation, attempt)
    }

    /// Replaces the connection of `generation` if it is still the current one.
    fn replace(&self, generation: u64) {
        let mut state = self.lock();
        let stale = match &state.slot {
            Slot::Ready { generation: g, .. } => *g == generation,
            _ => false,
        };
        if stale {
            // Already driven in the background; nobody needs to await it here.
            let _ = self.start_connecting(&mut state);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The critical sections above cannot panic; recover the guard anyway.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A failed connection attempt, worded as such (a refused port, a silent server, bad auth).
fn connect_error(
    err: &redis::RedisError,
    target: &str,
    timeout: std::time::Duration,
) -> EngineError {
    let classified = EngineError::from_redis(err, target, timeout);
    match classified.kind() {
        crate::ErrorKind::Timeout => EngineError::new(
            crate::ErrorKind::Connection,
            format!(
                "cannot connect to Redis at {target}: no answer within {} ms",
                timeout.as_millis()
            ),
        ),
        crate::ErrorKind::Connection if !classified.message().starts_with("cannot connect") => {
            EngineError::new(
                crate::ErrorKind::Connection,
                format!("cannot connect to Redis at {target}: {}", err),
            )
        }
        _ => classified,
    }
}

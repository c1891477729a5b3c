//! Where locks live: one server (fixed or found through Sentinel), a Redis Cluster, or a Redlock
//! quorum of independent masters. The lock logic above sees one set of operations.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::{Cmd, FromRedisValue, ScriptInvocation};
use tokio::time::Instant;

use crate::cluster::ClusterStore;
use crate::config::ServerConfig;
use crate::connection::Connection;
use crate::error::{EngineError, EngineResult, ErrorKind};
use crate::ops::{self, ExtendItem, Store};
use crate::quorum::Quorum;
use crate::sentinel::SentinelConfig;

/// The deployment a `Locker` talks to.
#[derive(Debug, Clone)]
pub enum Topology {
    /// One Redis server.
    Single(ServerConfig),
    /// The master a group of sentinels names, followed across failovers.
    Sentinel(SentinelConfig),
    /// A Redis Cluster, from its startup nodes.
    Cluster(Vec<ServerConfig>),
    /// Redlock over independent masters.
    Redlock(Vec<ServerConfig>),
}

/// One server, reached directly or through Sentinel.
pub(crate) struct Server {
    source: ServerSource,
    conn: Connection,
    /// Opened on the first acquire that waits for replicas: WAIT blocks its connection's
    /// pipeline, so it must not share the connection every other call uses.
    replicated: OnceLock<Connection>,
}

enum ServerSource {
    Fixed(ServerConfig),
    Sentinel(SentinelConfig),
}

impl ServerSource {
    fn connect(&self) -> EngineResult<Connection> {
        match self {
            ServerSource::Fixed(config) => Connection::new(config),
            ServerSource::Sentinel(sentinel) => Ok(Connection::via_sentinel(sentinel.clone())),
        }
    }
}

pub(crate) enum Backend {
    Server(Box<Server>),
    Cluster(ClusterStore),
    Quorum(Quorum),
}

impl Store for Connection {
    fn query<T: FromRedisValue + Send>(
        &self,
        cmd: &Cmd,
    ) -> impl Future<Output = EngineResult<T>> + Send {
        Connection::query(self, cmd)
    }
    fn invoke<T: FromRedisValue + Send>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> impl Future<Output = EngineResult<T>> + Send {
        Connection::invoke(self, invocation)
    }
}

impl Store for ClusterStore {
    fn query<T: FromRedisValue + Send>(
        &self,
        cmd: &Cmd,
    ) -> impl Future<Output = EngineResult<T>> + Send {
        ClusterStore::query(self, cmd)
    }
    fn invoke<T: FromRedisValue + Send>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> impl Future<Output = EngineResult<T>> + Send {
        ClusterStore::invoke(self, invocation)
    }
    fn slotted(&self) -> bool {
        true
    }
}

impl From<ServerConfig> for Topology {
    fn from(config: ServerConfig) -> Self {
        Topology::Single(config)
    }
}

/// Replica acknowledgement asked of an acquire (single server or Sentinel only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAck {
    pub count: u32,
    pub timeout: Duration,
}

impl Backend {
    pub(crate) fn new(topology: Topology) -> EngineResult<Self> {
        Ok(match topology {
            Topology::Single(config) => {
                Backend::Server(Box::new(Server::new(ServerSource::Fixed(config))?))
            }
            Topology::Sentinel(sentinel) => {
                if sentinel.sentinels.is_empty() {
                    return Err(EngineError::new(
                        ErrorKind::Config,
                        "Sentinel mode needs at least one sentinel",
                    ));
                }
                Backend::Server(Box::new(Server::new(ServerSource::Sentinel(sentinel))?))
            }
            Topology::Cluster(nodes) => Backend::Cluster(ClusterStore::new(nodes)?),
            Topology::Redlock(nodes) => Backend::Quorum(Quorum::new(
                nodes
                    .iter()
                    .map(|config| Connection::new(config).map(Arc::new))
                    .collect::<EngineResult<Vec<_>>>()?,
                nodes,
            )?),
        })
    }

    pub(crate) fn target(&self) -> &str {
        match self {
            Backend::Server(server) => server.conn.target(),
            Backend::Cluster(cluster) => cluster.target(),
            Backend::Quorum(quorum) => quorum.target(),
        }
    }

    /// One acquire attempt. `valid_until`: Redlock's deadline for reaching a majority.
    pub(crate) async fn try_acquire(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
        fencing: bool,
        valid_until: Instant,
        replicas: Option<ReplicaAck>,
    ) -> EngineResult<Option<Option<i64>>> {
        match self {
            Backend::Server(server) => match replicas {
                None => ops::try_set(&server.conn, key, token, ttl, fencing).await,
                Some(ack) => {
                    server
                        .try_set_replicated(key, token, ttl, fencing, ack)
                        .await
                }
            },
            Backend::Cluster(_) | Backend::Quorum(_) if replicas.is_some() => {
                Err(EngineError::new(
                    ErrorKind::Unsupported,
                    "replica acknowledgement is for a single master or Sentinel, not for a cluster or Redlock",
                ))
            }
            Backend::Cluster(cluster) => ops::try_set(cluster, key, token, ttl, fencing).await,
            Backend::Quorum(quorum) => {
                quorum
                    .try_acquire(key, token, ttl, fencing, valid_until)
                    .await
            }
        }
    }

    pub(crate) async fn release(&self, key: &str, token: &str) -> EngineResult<bool> {
        match self {
            Backend::Server(server) => ops::release(&server.conn, key, token).await,
            Backend::Cluster(cluster) => ops::release(cluster, key, token).await,
            Backend::Quorum(quorum) => quorum.release(key, token).await,
        }
    }

    pub(crate) async fn extend(&self, key: &str, token: &str, ttl: Duration) -> EngineResult<bool> {
        match self {
            Backend::Server(server) => ops::extend(&server.conn, key, token, ttl).await,
            Backend::Cluster(cluster) => ops::extend(cluster, key, token, ttl).await,
            Backend::Quorum(quorum) => quorum.extend(key, token, ttl).await,
        }
    }

    pub(crate) async fn exists(&self, key: &str) -> EngineResult<bool> {
        match self {
            Backend::Server(server) => ops::exists(&server.conn, key).await,
            Backend::Cluster(cluster) => ops::exists(cluster, key).await,
            Backend::Quorum(quorum) => quorum.exists(key).await,
        }
    }

    /// Extends many leases; on Redlock each is decided by a majority of masters, as soon as
    /// that is certain (a slow master does not hold the batch up).
    pub(crate) async fn extend_many(&self, batch: Arc<Vec<ExtendItem>>) -> Vec<EngineResult<bool>> {
        match self {
            Backend::Server(server) => ops::extend_many(&server.conn, &batch).await,
            Backend::Cluster(cluster) => ops::extend_many(cluster, &batch).await,
            Backend::Quorum(quorum) => quorum.extend_many(batch).await,
        }
    }

    /// A client for the release subscriber: the server, one cluster node, or the first master.
    pub(crate) async fn subscriber_client(&self, attempt: usize) -> EngineResult<redis::Client> {
        match self {
            Backend::Server(server) => server.conn.client().await,
            Backend::Cluster(cluster) => cluster.subscriber_client(),
            Backend::Quorum(quorum) => {
                let nodes = quorum.nodes();
                nodes[attempt % nodes.len()].client().await
            }
        }
    }

    /// The servers' settings when the deployment is one plain server or Redlock over plain
    /// masters (no Sentinel, cluster or TLS): then a caller may drive its own connections to
    /// them (see `wire`). One entry for a single server, one per master for Redlock.
    pub(crate) fn plain_servers(&self) -> Option<Vec<&ServerConfig>> {
        match self {
            Backend::Server(server) => match &server.source {
                ServerSource::Fixed(config) if config.tls.is_none() => Some(vec![config]),
                _ => None,
            },
            Backend::Quorum(quorum) => quorum
                .configs()
                .iter()
                .all(|c| c.tls.is_none())
                .then(|| quorum.configs().iter().collect()),
            Backend::Cluster(_) => None,
        }
    }

    pub(crate) fn is_quorum(&self) -> bool {
        matches!(self, Backend::Quorum(_))
    }

    /// (connect timeout, command timeout) of the deployment's connections.
    pub(crate) fn timeouts(&self) -> (Duration, Duration) {
        match self {
            Backend::Server(server) => server.conn.timeouts(),
            Backend::Cluster(cluster) => cluster.timeouts(),
            Backend::Quorum(quorum) => quorum.nodes()[0].timeouts(),
        }
    }

    pub(crate) fn close(&self) {
        match self {
            Backend::Server(server) => {
                server.conn.close();
                if let Some(replicated) = server.replicated.get() {
                    replicated.close();
                }
            }
            Backend::Cluster(cluster) => cluster.close(),
            Backend::Quorum(quorum) => quorum.nodes().iter().for_each(|node| node.close()),
        }
    }
}

impl Server {
    fn new(source: ServerSource) -> EngineResult<Self> {
        Ok(Self {
            conn: source.connect()?,
            source,
            replicated: OnceLock::new(),
        })
    }

    /// SET and WAIT on the dedicated connection; too few acknowledgements release the lock.
    async fn try_set_replicated(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
        fencing: bool,
        ack: ReplicaAck,
    ) -> EngineResult<Option<Option<i64>>> {
        let conn = match self.replicated.get() {
            Some(conn) => conn,
            None => {
                let fresh = self.source.connect()?;
                self.replicated.get_or_init(|| fresh)
            }
        };
        let Some(fence) = ops::try_set(conn, key, token, ttl, fencing).await? else {
            return Ok(None);
        };
        let acknowledged = ops::wait_replicas(conn, ack.count, ack.timeout).await;
        match acknowledged {
            Ok(n) if n >= ack.count => Ok(Some(fence)),
            outcome => {
                let _ = ops::release(conn, key, token).await;
                Err(match outcome {
                    Ok(n) => EngineError::new(
                        ErrorKind::Replication,
                        format!(
                            "{} of {} replicas acknowledged the lock within {} ms at {}; it was released",
                            n,
                            ack.count,
                            ack.timeout.as_millis(),
                            conn.target()
                        ),
                    ),
                    Err(err) => err,
                })
            }
        }
    }
}

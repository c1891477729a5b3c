//! Redis Cluster: the redis crate's async cluster connection (slot map, MOVED/ASK, failover),
//! opened lazily. Every key a lock touches is in the lock key's slot (see `keys`), so each script
//! runs on one node.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, ScriptInvocation};

use crate::config::ServerConfig;
use crate::error::{EngineError, EngineResult, ErrorKind};
use crate::lazy::Lazy;

/// How often a request is retried across redirections and failover before it fails.
const CLUSTER_RETRIES: u32 = 4;

pub(crate) struct ClusterStore {
    target: Arc<str>,
    connect_timeout: Duration,
    command_timeout: Duration,
    nodes: Vec<ServerConfig>,
    next_subscriber_node: AtomicUsize,
    lazy: Lazy<ClusterConnection>,
}

impl ClusterStore {
    /// `nodes`: the startup nodes; they share credentials, TLS and timeouts.
    pub(crate) fn new(nodes: Vec<ServerConfig>) -> EngineResult<Self> {
        let first = nodes.first().ok_or_else(|| {
            EngineError::new(
                ErrorKind::Config,
                "a cluster needs at least one startup node",
            )
        })?;
        let target: Arc<str> = format!(
            "cluster {}",
            nodes
                .iter()
                .map(ServerConfig::target)
                .collect::<Vec<_>>()
                .join(",")
        )
        .into();
        let infos = nodes
            .iter()
            .map(ServerConfig::connection_info)
            .collect::<EngineResult<Vec<_>>>()?;
        let mut builder = ClusterClientBuilder::new(infos)
            .connection_timeout(first.connect_timeout)
            .response_timeout(first.command_timeout)
            // Redirections and a failover may take a few tries; the whole request stays bounded.
            .overall_response_timeout(Some(first.command_timeout * (CLUSTER_RETRIES + 1)))
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(50)
            .max_retry_wait(500);
        if let Some(username) = &first.username {
            builder = builder.username(username);
        }
        if let Some(password) = &first.password {
            builder = builder.password(password);
        }
        if let Some(tls) = &first.tls {
            builder = builder.tls(if tls.reject_unauthorized {
                redis::TlsMode::Secure
            } else {
                redis::TlsMode::Insecure
            });
        }
        if let Some(certs) = first.tls_certificates() {
            builder = builder.certs(certs);
        }
        let client = builder.build().map_err(|e| first.config_error(&e))?;
        let connect_limit = first.connect_timeout * 2 + first.command_timeout;
        let connect_target = target.clone();
        let connect = Arc::new(move || {
            let client = client.clone();
            let target = connect_target.clone();
            async move {
                match tokio::time::timeout(connect_limit, client.get_async_connection()).await {
                    Ok(Ok(conn)) => Ok(conn),
                    Ok(Err(err)) => Err(EngineError::from_redis(&err, &target, connect_limit)),
                    Err(_) => Err(EngineError::new(
                        ErrorKind::Connection,
                        format!(
                            "cannot connect to {target}: no answer within {} ms",
                            connect_limit.as_millis()
                        ),
                    )),
                }
            }
            .boxed()
        });
        Ok(Self {
            target,
            connect_timeout: first.connect_timeout,
            command_timeout: first.command_timeout,
            next_subscriber_node: AtomicUsize::new(0),
            nodes,
            lazy: Lazy::new(connect),
        })
    }

    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    pub(crate) fn timeouts(&self) -> (Duration, Duration) {
        (self.connect_timeout, self.command_timeout)
    }

    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> EngineResult<T> {
        let (_, mut conn) = self.lazy.get().await?;
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| EngineError::from_redis(&e, &self.target, self.command_timeout))
    }

    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> EngineResult<T> {
        let (_, mut conn) = self.lazy.get().await?;
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| EngineError::from_redis(&e, &self.target, self.command_timeout))
    }

    /// A client for one node, for the release subscriber: cluster PUBLISH reaches every node.
    /// Rotates through the startup nodes, so a dead node is not asked twice in a row.
    pub(crate) fn subscriber_client(&self) -> EngineResult<redis::Client> {
        let index = self.next_subscriber_node.fetch_add(1, Ordering::Relaxed) % self.nodes.len();
        self.nodes[index].client()
    }

    pub(crate) fn close(&self) {
        self.lazy.close();
    }
}

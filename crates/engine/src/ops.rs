//! The lock's Redis operations on one store (a server, a Sentinel-found master or a cluster).
//! `Backend` runs them on its store, or on every Redlock master.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, FromRedisValue, ScriptInvocation};

use crate::error::{EngineError, EngineResult, ErrorKind};
use crate::keys;
use crate::scripts;

/// Something that runs commands and scripts: a `Connection` or a `ClusterStore`.
pub(crate) trait Store: Send + Sync + 'static {
    fn query<T: FromRedisValue + Send>(
        &self,
        cmd: &Cmd,
    ) -> impl Future<Output = EngineResult<T>> + Send;
    fn invoke<T: FromRedisValue + Send>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> impl Future<Output = EngineResult<T>> + Send;
    /// Whether all of a script's keys must share a slot (Redis Cluster).
    fn slotted(&self) -> bool {
        false
    }
}

/// One attempt: `Some(fence)` if the lock was taken (`Some(None)` without fencing).
pub(crate) async fn try_set<S: Store>(
    store: &S,
    key: &str,
    token: &str,
    ttl: Duration,
    fencing: bool,
) -> EngineResult<Option<Option<i64>>> {
    let ttl_ms = duration_ms(ttl);
    if fencing {
        let mut invocation = scripts::ACQUIRE_FENCED.prepare_invoke();
        invocation
            .key(key)
            .key(keys::fence_key(key))
            .arg(token)
            .arg(ttl_ms);
        let fence: i64 = store.invoke(&invocation).await?;
        Ok((fence > 0).then_some(Some(fence)))
    } else {
        let mut set = redis::cmd("SET");
        set.arg(key).arg(token).arg("PX").arg(ttl_ms).arg("NX");
        let reply: Option<String> = store.query(&set).await?;
        Ok(reply.map(|_| None))
    }
}

/// Deletes the lock if `token` owns it, and publishes on its channel to wake waiters.
pub(crate) async fn release<S: Store>(store: &S, key: &str, token: &str) -> EngineResult<bool> {
    let mut invocation = scripts::RELEASE.prepare_invoke();
    invocation
        .key(key)
        .arg(token)
        .arg(keys::released_channel(key));
    let released: i64 = store.invoke(&invocation).await?;
    // 1 + the subscribers told (see the script).
    Ok(released >= 1)
}

/// Sets the TTL if `token` owns the lock; never re-creates a key.
pub(crate) async fn extend<S: Store>(
    store: &S,
    key: &str,
    token: &str,
    ttl: Duration,
) -> EngineResult<bool> {
    let mut invocation = scripts::EXTEND.prepare_invoke();
    invocation.key(key).arg(token).arg(duration_ms(ttl));
    let extended: i64 = store.invoke(&invocation).await?;
    Ok(extended == 1)
}

pub(crate) async fn exists<S: Store>(store: &S, key: &str) -> EngineResult<bool> {
    let exists: i64 = store.query(redis::cmd("EXISTS").arg(key)).await?;
    Ok(exists == 1)
}

/// One lease to extend: (token, key, ttl).
pub(crate) type ExtendItem = (Arc<str>, String, Duration);

/// Most locks one batch script extends: keeps each script run short on the server.
const EXTENDS_PER_SCRIPT: usize = 256;

/// Extends many locks with as few round trips as the store allows: one script per 256 locks,
/// and on a cluster one per slot (a script's keys must share a slot). All go out at once.
pub(crate) async fn extend_many<S: Store>(
    store: &S,
    batch: &[ExtendItem],
) -> Vec<EngineResult<bool>> {
    let groups: Vec<Vec<usize>> = if store.slotted() {
        let mut by_slot: std::collections::HashMap<u16, Vec<usize>> = Default::default();
        for (index, (_, key, _)) in batch.iter().enumerate() {
            by_slot.entry(keys::slot(key)).or_default().push(index);
        }
        by_slot.into_values().collect()
    } else {
        vec![(0..batch.len()).collect()]
    };
    let chunks: Vec<&[usize]> = groups
        .iter()
        .flat_map(|group| group.chunks(EXTENDS_PER_SCRIPT))
        .collect();
    let replies = futures_util::future::join_all(chunks.iter().map(|chunk| async move {
        let mut invocation = scripts::EXTEND_MANY.prepare_invoke();
        for &index in chunk.iter() {
            let (token, key, ttl) = &batch[index];
            invocation
                .key(key.as_str())
                .arg(&**token)
                .arg(duration_ms(*ttl));
        }
        match store.invoke::<Vec<i64>>(&invocation).await {
            Ok(replies) if replies.len() == chunk.len() => {
                replies.into_iter().map(|r| Ok(r == 1)).collect()
            }
            Ok(_) => vec![
                Err(EngineError::new(
                    ErrorKind::Redis,
                    "unexpected reply to the batch extend"
                ));
                chunk.len()
            ],
            Err(err) => vec![Err(err); chunk.len()],
        }
    }))
    .await;
    let mut results: Vec<EngineResult<bool>> = vec![Ok(false); batch.len()];
    for (chunk, replies) in chunks.iter().zip(replies) {
        for (&index, reply) in chunk.iter().zip(replies) {
            results[index] = reply;
        }
    }
    results
}

/// Waits until `count` replicas acknowledged this connection's writes, or `timeout`.
pub(crate) async fn wait_replicas<S: Store>(
    store: &S,
    count: u32,
    timeout: Duration,
) -> EngineResult<u32> {
    let acknowledged: i64 = store
        .query(redis::cmd("WAIT").arg(count).arg(duration_ms(timeout)))
        .await?;
    Ok(u32::try_from(acknowledged).unwrap_or(0))
}

pub(crate) fn duration_ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

//! Redlock: one lock over N independent masters, held while a majority holds it.
//!
//! Acquire sends the same token to every master at once and succeeds only if a majority granted
//! it before the validity time ran out (send time + ttl - drift margin). The decision is taken as
//! soon as it is certain, so a slow master never holds the caller up past the validity time.
//! On failure the lock is released on every master, each after its own attempt settled, so a
//! master that grants late is released too. Release goes to all masters; extend and `exists`
//! need a majority. Each master keeps its own fencing counter; the lease gets the highest fence
//! among the masters that granted it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, Shared};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;

use crate::connection::Connection;
use crate::error::{EngineError, EngineResult, ErrorKind};
use crate::ops::{self, ExtendItem};

type NodeAttempt<T> = Shared<BoxFuture<'static, EngineResult<Option<T>>>>;

pub(crate) struct Quorum {
    nodes: Vec<Arc<Connection>>,
    configs: Vec<crate::config::ServerConfig>,
    needed: usize,
    target: String,
}

impl Quorum {
    pub(crate) fn new(
        nodes: Vec<Arc<Connection>>,
        configs: Vec<crate::config::ServerConfig>,
    ) -> EngineResult<Self> {
        if nodes.len() < 2 {
            return Err(EngineError::new(
                ErrorKind::Config,
                "Redlock needs at least 2 independent masters (3 or 5 are usual)",
            ));
        }
        let target = format!(
            "Redlock over {} masters ({})",
            nodes.len(),
            nodes
                .iter()
                .map(|n| n.target().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(Self {
            needed: nodes.len() / 2 + 1,
            nodes,
            configs,
            target,
        })
    }

    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    pub(crate) fn nodes(&self) -> &[Arc<Connection>] {
        &self.nodes
    }

    pub(crate) fn configs(&self) -> &[crate::config::ServerConfig] {
        &self.configs
    }

    pub(crate) async fn try_acquire(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
        fencing: bool,
        valid_until: Instant,
    ) -> EngineResult<Option<Option<i64>>> {
        let attempts = self.fan_out(key, token, move |node, key, token| async move {
            ops::try_set(&*node, &key, &token, ttl, fencing).await
        });
        let decision = self.decide(&attempts, Some(valid_until), "acquire").await;
        if !matches!(decision, Ok(Some(_))) {
            for (node, attempt) in self.nodes.iter().zip(attempts) {
                let (node, key, token) = (node.clone(), key.to_owned(), token.to_owned());
                tokio::spawn(async move {
                    let _ = attempt.await;
                    let _ = ops::release(&*node, &key, &token).await;
                });
            }
        }
        Ok(decision?.map(|fences| fences.into_iter().flatten().max()))
    }

    pub(crate) async fn release(&self, key: &str, token: &str) -> EngineResult<bool> {
        let attempts = self.fan_out(key, token, |node, key, token| async move {
            Ok(ops::release(&*node, &key, &token).await?.then_some(()))
        });
        Ok(self.decide(&attempts, None, "release").await?.is_some())
    }

    pub(crate) async fn extend(&self, key: &str, token: &str, ttl: Duration) -> EngineResult<bool> {
        let attempts = self.fan_out(key, token, move |node, key, token| async move {
            Ok(ops::extend(&*node, &key, &token, ttl).await?.then_some(()))
        });
        Ok(self.decide(&attempts, None, "extend").await?.is_some())
    }

    pub(crate) async fn exists(&self, key: &str) -> EngineResult<bool> {
        let attempts = self.fan_out(key, "", |node, key, _| async move {
            Ok(ops::exists(&*node, &key).await?.then_some(()))
        });
        Ok(self
            .decide(&attempts, None, "check the lock")
            .await?
            .is_some())
    }

    /// Extends many leases, each decided by a majority of masters as soon as that is certain.
    pub(crate) async fn extend_many(&self, batch: Arc<Vec<ExtendItem>>) -> Vec<EngineResult<bool>> {
        let needed = self.needed;
        let total = self.nodes.len();
        let mut pending: FuturesUnordered<_> = self
            .nodes
            .iter()
            .map(|node| {
                let (node, batch) = (node.clone(), batch.clone());
                tokio::spawn(async move { ops::extend_many(&*node, &batch).await })
            })
            .collect();
        let mut yes = vec![0usize; batch.len()];
        let mut no = vec![0usize; batch.len()];
        let mut last_error: Vec<Option<EngineError>> = vec![None; batch.len()];
        let mut answered = 0;
        while (0..batch.len()).any(|i| yes[i] < needed && yes[i] + (total - answered) >= needed) {
            let Some(joined) = pending.next().await else {
                break;
            };
            answered += 1;
            let results = joined.unwrap_or_else(|_| {
                vec![Err(EngineError::new(ErrorKind::Redis, "an extend task failed")); batch.len()]
            });
            for (index, result) in results.into_iter().enumerate() {
                match result {
                    Ok(true) => yes[index] += 1,
                    Ok(false) => no[index] += 1,
                    Err(err) => last_error[index] = Some(err),
                }
            }
        }
        (0..batch.len())
            .map(|i| {
                if yes[i] >= needed {
                    Ok(true)
                } else if no[i] > 0 {
                    Ok(false)
                } else {
                    Err(last_error[i].take().unwrap_or_else(|| {
                        EngineError::new(
                            ErrorKind::Quorum,
                            "no majority of masters extended the lock",
                        )
                    }))
                }
            })
            .collect()
    }

    /// Starts `op` on every master at once, each as its own task (it completes even if the
    /// decision comes first); the attempts can be awaited more than once.
    fn fan_out<T, F, Fut>(&self, key: &str, token: &str, op: F) -> Vec<NodeAttempt<T>>
    where
        T: Clone + Send + Sync + 'static,
        F: Fn(Arc<Connection>, String, String) -> Fut,
        Fut: Future<Output = EngineResult<Option<T>>> + Send + 'static,
    {
        self.nodes
            .iter()
            .map(|node| {
                let attempt = op(node.clone(), key.to_owned(), token.to_owned())
                    .boxed()
                    .shared();
                tokio::spawn(attempt.clone().map(|_| ()));
                attempt
            })
            .collect()
    }

    /// Waits for the masters' answers until a majority of yeses, or until that became impossible,
    /// or until `until`. `Some(values)`: a majority said yes. `None`: not, and at least one master
    /// said no (the lock is someone else's). An error naming the failed masters when failures alone
    /// kept the majority out of reach.
    async fn decide<T: Clone + Send + Sync + 'static>(
        &self,
        attempts: &[NodeAttempt<T>],
        until: Option<Instant>,
        what: &str,
    ) -> EngineResult<Option<Vec<T>>> {
        let mut pending: FuturesUnordered<_> = attempts
            .iter()
            .cloned()
            .enumerate()
            .map(|(index, attempt)| attempt.map(move |outcome| (index, outcome)))
            .collect();
        let mut tally = Tally::new(attempts.len());
        let deadline = until.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let mut timed_out = false;
        while !tally.decided() {
            tokio::select! {
                next = pending.next() => match next {
                    Some((_, Ok(Some(value)))) => tally.yes(value),
                    Some((_, Ok(None))) => tally.no(),
                    Some((index, Err(err))) => tally.failed(self.nodes[index].target(), err),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    timed_out = true;
                    break;
                }
            }
        }
        tally.outcome(what, timed_out)
    }
}

/// A Redlock call's answers so far, and what they decide. Shared by the engine's fan-out and by
/// callers that send the commands themselves (the Node binding's event-loop lane).
pub struct Tally<T> {
    needed: usize,
    total: usize,
    yes: Vec<T>,
    no: usize,
    failed: Vec<(String, EngineError)>,
}

impl<T> Tally<T> {
    /// For `total` masters; a majority is `total / 2 + 1`.
    pub fn new(total: usize) -> Self {
        Self {
            needed: total / 2 + 1,
            total,
            yes: Vec::new(),
            no: 0,
            failed: Vec::new(),
        }
    }

    pub fn yes(&mut self, value: T) {
        self.yes.push(value);
    }

    pub fn no(&mut self) {
        self.no += 1;
    }

    /// A master failed to answer (`target` names it in the error, without secrets).
    pub fn failed(&mut self, target: &str, err: EngineError) {
        self.failed.push((target.to_owned(), err));
    }

    fn unanswered(&self) -> usize {
        self.total - self.yes.len() - self.no - self.failed.len()
    }

    /// Whether the answers so far decide: a majority said yes, or no majority is possible.
    pub fn decided(&self) -> bool {
        self.yes.len() >= self.needed || self.yes.len() + self.unanswered() < self.needed
    }

    /// `Some(values)`: a majority said yes (and the validity time did not run out first).
    /// `None`: not, and at least one master said no (the lock is someone else's). An error
    /// naming the failed masters when failures alone kept the majority out of reach.
    pub fn outcome(self, what: &str, timed_out: bool) -> EngineResult<Option<Vec<T>>> {
        if self.yes.len() >= self.needed && !timed_out {
            return Ok(Some(self.yes));
        }
        if self.no > 0 {
            return Ok(None);
        }
        let silent = self.unanswered();
        let mut reasons: Vec<String> = self
            .failed
            .iter()
            .map(|(target, err)| format!("{target} ({})", err.message()))
            .collect();
        if timed_out && silent > 0 {
            reasons.push(format!(
                "{silent} master(s) did not answer within the validity time"
            ));
        }
        Err(EngineError::new(
            ErrorKind::Quorum,
            format!(
                "no quorum to {what}: {} of {} masters needed, {} agreed; {}",
                self.needed,
                self.total,
                self.yes.len(),
                reasons.join("; ")
            ),
        ))
    }
}

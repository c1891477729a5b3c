//! The lock operations on one Redis server, with v1's data layout and semantics.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, ReplicaAck, Topology};
use crate::error::{EngineError, EngineResult};
use crate::keys;
use crate::leases::{DEFAULT_DRIFT_FACTOR, Leases, LostCallback, deadline_at};
use crate::token::new_token;
use crate::waiters::{ReleaseListener, WaitGuard, Waiters};

/// How `acquire` waits for a lock somebody else holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first one; `None` retries until acquired, timed out or cancelled.
    pub retry_count: Option<u64>,
    /// Pause between attempts, unless a release notification ends it early.
    pub retry_delay: Duration,
    /// Up to this much random extra pause per attempt.
    pub retry_jitter: Duration,
    /// Stop waiting after this much time in total.
    pub wait_timeout: Option<Duration>,
}

impl RetryPolicy {
    /// One attempt, no retry (v1's default).
    pub const ONCE: RetryPolicy = RetryPolicy {
        retry_count: Some(0),
        retry_delay: Duration::from_millis(200),
        retry_jitter: Duration::ZERO,
        wait_timeout: None,
    };
}

/// A subscription to a lock's release channel, held by an outside waiter.
pub struct ReleaseWatch {
    // Held for its Drop, which unsubscribes when the last watcher of the channel leaves.
    _guard: WaitGuard,
}

/// When a waiting acquire tries again, and when it gives up.
///
/// v1's budget: 1 + retry_count attempts, retry_delay (+ jitter) apart, and no longer than the
/// wait timeout. An attempt triggered by a release notification comes on top, without using a
/// retry up, so a waiter gives up no sooner than v1 would, and takes a freed lock without
/// sleeping out the delay. Shared by the engine's waiting loop and the binding's event-loop
/// lane.
#[derive(Debug, Clone)]
pub struct WaitPlan {
    retry: RetryPolicy,
    polls_left: Option<u64>,
    next_poll: Option<Instant>,
    wait_until: Option<Instant>,
}

impl WaitPlan {
    pub fn new(retry: RetryPolicy, now: Instant) -> Self {
        Self {
            polls_left: retry.retry_count,
            next_poll: None,
            wait_until: retry.wait_timeout.map(|t| now + t),
            retry,
        }
    }

    /// An attempt found the lock held at `now`: when to try again (unless a notification comes
    /// first), or `None` to give up.
    pub fn after_held(&mut self, now: Instant) -> Option<Instant> {
        // A timed attempt (or the first) schedules the next one; a notified one keeps it.
        if self.next_poll.is_none_or(|at| now >= at) {
            match self.polls_left {
                Some(0) => return None,
                Some(n) => self.polls_left = Some(n - 1),
                None => {}
            }
            let jitter = self.retry.retry_jitter.mul_f64(rand::random::<f64>());
            let mut at = now + self.retry.retry_delay + jitter;
            if let Some(until) = self.wait_until {
                if now >= until {
                    return None;
                }
                at = at.min(until);
            }
            self.next_poll = Some(at);
        }
        self.next_poll
    }
}

/// What `acquire` needs to know besides the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcquireOptions {
    pub ttl: Duration,
    pub retry: RetryPolicy,
    /// Extend the lock every `floor(ttl / 2)` until released or lost.
    pub auto_extend: bool,
    /// Watch the lease and report it lost at its deadline even without auto-extension.
    pub watch: bool,
    /// Wait for this many replicas to acknowledge the lock (single master or Sentinel).
    pub replicas: Option<ReplicaAck>,
}

/// A lock this process now holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    pub token: String,
    /// The fencing token: strictly increasing per lock key. `None` when fencing is off.
    pub fence: Option<i64>,
    /// Until when the lock is known to be held (send time + ttl - safety margin).
    pub deadline: Instant,
}

impl Acquired {
    /// How long from now the lock is known to be held (zero once the deadline passed).
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Settings of a `Locker` beyond the server.
#[derive(Clone)]
pub struct LockerOptions {
    /// Keep a fencing counter per lock key (one small key each, never expiring).
    pub fencing: bool,
    /// Called once for each tracked lease that is lost (never for a released one).
    pub on_lost: Option<LostCallback>,
    /// Told the key of each release heard from Redis on a watched channel (see
    /// `watch_releases`), for waiters this engine does not run itself.
    pub on_released: Option<ReleaseListener>,
    /// Share of the ttl set aside for clock drift: a lease's deadline is its send time + ttl -
    /// (ttl * drift_factor + 2 ms). Redlock's validity time uses the same margin.
    pub drift_factor: f64,
}

impl Default for LockerOptions {
    fn default() -> Self {
        Self {
            fencing: true,
            on_lost: None,
            on_released: None,
            drift_factor: DEFAULT_DRIFT_FACTOR,
        }
    }
}

/// Lock operations against one Redis server over one lazily opened connection.
///
/// Creating a `Locker` does no I/O and needs no runtime; the first operation connects.
pub struct Locker {
    backend: Arc<Backend>,
    leases: Leases,
    waiters: OnceLock<Waiters>,
    on_released: Option<ReleaseListener>,
    fencing: bool,
    drift_factor: f64,
    closed: CancellationToken,
}

impl Locker {
    pub fn new(topology: impl Into<Topology>, options: LockerOptions) -> EngineResult<Self> {
        let backend = Arc::new(Backend::new(topology.into())?);
        let closed = CancellationToken::new();
        Ok(Self {
            leases: Leases::new(
                backend.clone(),
                closed.clone(),
                options.on_lost,
                options.drift_factor,
            ),
            drift_factor: options.drift_factor,
            backend,
            waiters: OnceLock::new(),
            on_released: options.on_released,
            fencing: options.fencing,
            closed,
        })
    }

    /// The servers' settings if the deployment is one plain server, or Redlock over plain
    /// masters (no Sentinel, cluster or TLS), for a caller that drives its own connections
    /// (see `wire`): one entry for a single server, one per master for Redlock.
    pub fn plain_servers(&self) -> Option<Vec<&crate::ServerConfig>> {
        self.backend.plain_servers()
    }

    /// Whether the deployment is Redlock (its calls need a majority of masters).
    pub fn is_redlock(&self) -> bool {
        self.backend.is_quorum()
    }

    /// The deadline of a lock whose `SET` was sent at `sent_at` (for Redlock, also its
    /// validity time: a majority reached later does not count).
    pub fn deadline_for(&self, sent_at: Instant, ttl: Duration) -> Instant {
        deadline_at(sent_at + ttl, ttl, self.drift_factor)
    }

    /// Whether acquires keep a fencing counter.
    pub fn fencing(&self) -> bool {
        self.fencing
    }

    /// Takes over a lock acquired by a caller's own connection (its `SET` sent at `sent_at`):
    /// tracks it like one acquired here. Returns its deadline. Must run inside the runtime when
    /// `auto_extend || watch`.
    pub fn adopt(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
        sent_at: Instant,
        auto_extend: bool,
        watch: bool,
    ) -> Instant {
        if auto_extend || watch {
            self.leases.track(key, token, ttl, sent_at, auto_extend);
        }
        self.deadline_for(sent_at, ttl)
    }

    /// Records a successful extend sent at `sent_at` by a caller's own connection, moving the
    /// tracked lease's deadline.
    pub fn note_extended(&self, token: &str, sent_at: Instant, ttl: Duration) {
        self.leases.extended(token, sent_at, ttl);
    }

    /// What messages call the deployment (`host:port`, a socket path, a cluster, ...).
    pub fn target(&self) -> &str {
        self.backend.target()
    }

    /// Takes the lock at `key`, waiting as the policy says.
    ///
    /// Returns `None` when every attempt found the lock held or the wait timed out; an error
    /// with kind `Closed` if the Locker closed, or `Cancelled` (see [`EngineError::cancelled`])
    /// when `cancel` fired while waiting.
    pub async fn acquire(
        &self,
        key: &str,
        options: AcquireOptions,
        cancel: Option<&CancellationToken>,
    ) -> EngineResult<Option<Acquired>> {
        self.ensure_open()?;
        let retry = options.retry;
        let never = CancellationToken::new();
        let cancel = cancel.unwrap_or(&never);
        let mut waiter: Option<WaitGuard> = None;
        let mut plan = WaitPlan::new(retry, Instant::now());
        loop {
            if cancel.is_cancelled() {
                return Err(EngineError::cancelled());
            }
            // A fresh token per attempt: Redlock releases a failed attempt's grants in the
            // background, and that cleanup must never match a later attempt's grant.
            let token = new_token();
            let sent_at = Instant::now();
            let valid_until = deadline_at(sent_at + options.ttl, options.ttl, self.drift_factor);
            let granted = self
                .backend
                .try_acquire(
                    key,
                    &token,
                    options.ttl,
                    self.fencing,
                    valid_until,
                    options.replicas,
                )
                .await?;
            if let Some(fence) = granted {
                if options.auto_extend || options.watch {
                    self.leases
                        .track(key, &token, options.ttl, sent_at, options.auto_extend);
                }
                return Ok(Some(Acquired {
                    token,
                    fence,
                    deadline: valid_until,
                }));
            }
            let Some(poll_at) = plan.after_held(Instant::now()) else {
                return Ok(None);
            };
            let waiter =
                waiter.get_or_insert_with(|| self.waiters().watch(&keys::released_channel(key)));
            tokio::select! {
                _ = self.closed.cancelled() => return Err(EngineError::closed()),
                _ = cancel.cancelled() => return Err(EngineError::cancelled()),
                _ = waiter.notify().notified() => {}
                _ = tokio::time::sleep_until(poll_at) => {}
            }
        }
    }

    /// Stops auto-extending and watching the lease (`release` does this first too); call it
    /// synchronously when a release starts so no loss is reported for a lease being released.
    pub fn stop_tracking(&self, key: &str, token: &str) {
        self.leases.forget(key, token);
    }

    /// Deletes the lock if `token` still owns it, and wakes its waiters; stops tracking first.
    pub async fn release(&self, key: &str, token: &str) -> EngineResult<bool> {
        self.leases.forget(key, token);
        self.ensure_open()?;
        let released = self.backend.release(key, token).await?;
        if released {
            self.note_released(key);
        }
        Ok(released)
    }

    /// Keeps the release channel of `key` subscribed while the returned guard lives, for a
    /// waiter this engine does not run itself (`on_released` reports what is heard). Must run
    /// inside the runtime.
    pub fn watch_releases(&self, key: &str) -> ReleaseWatch {
        ReleaseWatch {
            _guard: self.waiters().watch(&keys::released_channel(key)),
        }
    }

    /// A release of `key` succeeded (here or through a caller's own connection): waiters of
    /// this Locker retry at once (other processes hear of it through Redis).
    pub fn note_released(&self, key: &str) {
        if let Some(waiters) = self.waiters.get() {
            waiters.released_here(&keys::released_channel(key));
        }
    }

    /// Sets the lock's TTL to `ttl` if `token` still owns it. Never re-creates an expired key.
    pub async fn extend(&self, key: &str, token: &str, ttl: Duration) -> EngineResult<bool> {
        self.ensure_open()?;
        let sent_at = Instant::now();
        let extended = self.backend.extend(key, token, ttl).await?;
        if extended {
            self.leases.extended(token, sent_at, ttl);
        }
        Ok(extended)
    }

    /// Whether anybody holds the lock at `key`.
    pub async fn is_locked(&self, key: &str) -> EngineResult<bool> {
        self.ensure_open()?;
        self.backend.exists(key).await
    }

    /// The tracked lease's current deadline (moves with each successful extend).
    pub fn deadline(&self, token: &str) -> Option<Instant> {
        self.leases.deadline(token)
    }

    /// How long from now the tracked lease is known to be held; `None` if not tracked.
    pub fn time_left(&self, token: &str) -> Option<Duration> {
        self.deadline(token)
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// How many leases are tracked, and how many of those are auto-extended.
    pub fn tracked(&self) -> (usize, usize) {
        self.leases.counts()
    }

    /// Stops auto-extension, tracking and waiting, and drops the connections. Locks still held
    /// expire at their TTL. Idempotent.
    pub fn close(&self) {
        self.closed.cancel();
        self.backend.close();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    fn waiters(&self) -> &Waiters {
        self.waiters.get_or_init(|| {
            Waiters::new(
                self.backend.clone(),
                self.closed.clone(),
                self.on_released.clone(),
            )
        })
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

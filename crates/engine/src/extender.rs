//! Auto-extension: one scheduler task for every auto-extended lease of a `Locker`.
//!
//! A lease is extended every `floor(ttl / 2)` ms by its own ttl (v1's cadence). The extends due
//! at one tick go out together on the multiplexed connection, so ten thousand leases cost a few
//! pipelined writes, not ten thousand timers. A lease stops being extended when it is released,
//! when an extend finds another owner or no key (the script never re-creates a key), or when
//! Redis could not be reached until the lease's local deadline: the last moment the lock is known
//! to be valid, measured on this process's monotonic clock from when the last successful extend
//! was *sent*.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connection::Connection;
use crate::error::EngineError;
use crate::scripts;

/// Why an auto-extended lease ended without a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostReason {
    /// An extend found the key gone or holding another token.
    NotOwner,
    /// No extend succeeded before the lease's deadline; the last error says why.
    Unreachable(EngineError),
}

/// A lease the scheduler gave up on.
#[derive(Debug, Clone)]
pub struct LostLease {
    pub key: String,
    pub token: String,
    pub reason: LostReason,
}

pub type LostCallback = Arc<dyn Fn(LostLease) + Send + Sync>;

struct HeldLease {
    key: String,
    ttl: Duration,
    interval: Duration,
    /// The lock is known valid until this instant (minus nothing: callers add their margins).
    valid_until: Instant,
    /// Identifies the one queue entry that is current for this lease.
    schedule: u64,
}

#[derive(Default)]
struct State {
    leases: HashMap<Arc<str>, HeldLease>,
    /// (due, schedule, token); entries whose schedule no longer matches the lease are stale.
    queue: BinaryHeap<Reverse<(Instant, u64, Arc<str>)>>,
    next_schedule: u64,
    task_started: bool,
}

pub(crate) struct Extender {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    conn: Arc<Connection>,
    cancel: CancellationToken,
    on_lost: Option<LostCallback>,
}

/// How soon a failed extend is tried again (bounded by the lease's own interval).
fn retry_after(interval: Duration) -> Duration {
    (interval / 5).clamp(Duration::from_millis(10), Duration::from_millis(500))
}

impl Extender {
    pub(crate) fn new(
        conn: Arc<Connection>,
        cancel: CancellationToken,
        on_lost: Option<LostCallback>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                conn,
                cancel,
                on_lost,
            }),
        }
    }

    /// Starts extending a lease acquired (SET sent) at `sent_at`. Must run inside the runtime.
    pub(crate) fn register(&self, key: String, token: &str, ttl: Duration, sent_at: Instant) {
        let interval = Duration::from_millis((ttl.as_millis() / 2).max(1) as u64);
        let token: Arc<str> = token.into();
        let mut state = self.shared.lock();
        let schedule = state.next_schedule();
        let due = Instant::now() + interval;
        let earliest_before = state.queue.peek().map(|Reverse((at, _, _))| *at);
        state.leases.insert(
            token.clone(),
            HeldLease {
                key,
                ttl,
                interval,
                valid_until: sent_at + ttl,
                schedule,
            },
        );
        state.queue.push(Reverse((due, schedule, token)));
        if !state.task_started {
            state.task_started = true;
            tokio::spawn(run(self.shared.clone()));
        } else if earliest_before.is_none_or(|at| due < at) {
            self.shared.wake.notify_one();
        }
    }

    /// Stops extending the lease with this token, if it is one of `key`'s (v1 matched both).
    pub(crate) fn forget(&self, key: &str, token: &str) {
        let mut state = self.shared.lock();
        if state
            .leases
            .get(token)
            .is_some_and(|lease| lease.key == key)
        {
            state.leases.remove(token);
        }
    }

    /// Records a successful manual extend, moving the lease's deadline.
    pub(crate) fn extended(&self, token: &str, valid_until: Instant) {
        if let Some(lease) = self.shared.lock().leases.get_mut(token) {
            lease.valid_until = lease.valid_until.max(valid_until);
        }
    }

    /// How many leases are being auto-extended now.
    pub(crate) fn held(&self) -> usize {
        self.shared.lock().leases.len()
    }
}

impl State {
    fn next_schedule(&mut self) -> u64 {
        self.next_schedule += 1;
        self.next_schedule
    }

    /// Drops stale entries and tells when the next live one is due.
    fn next_due(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, schedule, token))) = self.queue.peek() {
            if self
                .leases
                .get(token)
                .is_some_and(|l| l.schedule == *schedule)
            {
                return Some(*at);
            }
            self.queue.pop();
        }
        None
    }

    /// Takes every lease due at `now` out of the queue.
    fn take_due(&mut self, now: Instant) -> Vec<(Arc<str>, String, Duration)> {
        let mut due = Vec::new();
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, schedule, token))) = self.queue.pop() else {
                break;
            };
            if let Some(lease) = self.leases.get(&token).filter(|l| l.schedule == schedule) {
                due.push((token.clone(), lease.key.clone(), lease.ttl));
            }
        }
        due
    }

    fn reschedule(&mut self, token: &Arc<str>, at: Instant) {
        let schedule = self.next_schedule();
        if let Some(lease) = self.leases.get_mut(token) {
            lease.schedule = schedule;
            self.queue.push(Reverse((at, schedule, token.clone())));
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn run(shared: Arc<Shared>) {
    loop {
        let next = shared.lock().next_due();
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = shared.wake.notified() => continue,
            _ = tokio::time::sleep_until(next.unwrap_or(far)) => {}
        }
        let batch = shared.lock().take_due(Instant::now());
        if !batch.is_empty() {
            // A slow server must not hold up the next tick: each batch runs on its own.
            tokio::spawn(extend_batch(shared.clone(), batch));
        }
    }
}

async fn extend_batch(shared: Arc<Shared>, batch: Vec<(Arc<str>, String, Duration)>) {
    let sent_at = Instant::now();
    let results = futures_util::future::join_all(batch.iter().map(|(token, key, ttl)| {
        let ttl_ms = ttl.as_millis() as u64;
        let conn = &shared.conn;
        async move {
            let mut invocation = scripts::EXTEND.prepare_invoke();
            invocation.key(key.as_str()).arg(&**token).arg(ttl_ms);
            conn.invoke::<i64>(&invocation).await
        }
    }))
    .await;

    let mut lost = Vec::new();
    {
        let mut state = shared.lock();
        let now = Instant::now();
        for ((token, _, _), result) in batch.iter().zip(results) {
            let Some(lease) = state.leases.get_mut(token) else {
                continue; // released while the extend was in flight
            };
            match result {
                Ok(1) => {
                    lease.valid_until = sent_at + lease.ttl;
                    let at = now + lease.interval;
                    state.reschedule(token, at);
                }
                Ok(_) => {
                    if let Some(lease) = state.leases.remove(token) {
                        lost.push(LostLease {
                            key: lease.key,
                            token: token.to_string(),
                            reason: LostReason::NotOwner,
                        });
                    }
                }
                Err(err) => {
                    if now < lease.valid_until {
                        let retry_at = (now + retry_after(lease.interval)).min(lease.valid_until);
                        state.reschedule(token, retry_at);
                    } else if let Some(lease) = state.leases.remove(token) {
                        lost.push(LostLease {
                            key: lease.key,
                            token: token.to_string(),
                            reason: LostReason::Unreachable(err),
                        });
                    }
                }
            }
        }
    }
    // The scheduler may be asleep until a later entry; let it see the new ones.
    shared.wake.notify_one();
    if let Some(on_lost) = &shared.on_lost {
        for lease in lost {
            on_lost(lease);
        }
    }
}

//! Held leases: auto-extension and lost-lock detection, one scheduler task per `Locker`.
//!
//! A lease's *deadline* is the last moment this process can trust that it still holds the lock:
//! the time its last successful `SET`/extend was **sent** (the key's TTL started later than that,
//! on the server), plus the ttl, minus a safety margin for clock drift (1% of the ttl + 2 ms, as
//! in Redlock). Measured on the monotonic clock, so a wall-clock jump changes nothing.
//!
//! Auto-extended leases are extended every `floor(ttl / 2)` ms by their own ttl (v1's cadence);
//! the extends due at one tick go out together on the multiplexed connection. A failed extend is
//! retried until the deadline. A lease is *lost* when an extend finds another owner or no key (the
//! script never re-creates a key), or when its deadline passes without a successful extend (Redis
//! unreachable or slow). Watched leases (not auto-extended) are lost when their deadline passes.
//! Released leases are forgotten first, so a release never reports a loss.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::core::Grant;
use crate::error::{EngineError, EngineResult, ErrorKind};
use crate::keys;
use crate::locker::Awaited;
use crate::notice::{Notice, NoticeCallback};

/// Why a lease ended without a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostReason {
    /// An extend found the key gone or holding another token.
    NotOwner,
    /// No extend succeeded before the deadline; the last error says why.
    Unreachable(EngineError),
    /// A lease that was not auto-extended reached its deadline.
    Expired,
    /// Auto-extension stopped after `maxHoldTime`, and the lease then reached its deadline.
    MaxHoldTime,
}

/// A lease the engine gave up on.
#[derive(Debug, Clone)]
pub struct LostLease {
    pub key: String,
    pub token: String,
    pub reason: LostReason,
    pub auto_extended: bool,
}

pub type LostCallback = Arc<dyn Fn(LostLease) + Send + Sync>;

/// Told, for watched leases (`acquireLease`), each auto-extension that moved a deadline:
/// (token, the extend's send time, the new deadline).
pub type ExtendedCallback = Arc<dyn Fn(Vec<(String, Instant, Instant)>) + Send + Sync>;

/// The default share of a ttl set aside for clock drift (Redlock's 1%).
pub const DEFAULT_DRIFT_FACTOR: f64 = 0.01;

/// Clock-drift allowance subtracted from a lease's validity: `ttl * drift_factor + 2 ms`.
pub fn safety_margin(ttl: Duration, drift_factor: f64) -> Duration {
    ttl.mul_f64(drift_factor) + Duration::from_millis(2)
}

struct HeldLease {
    key: String,
    /// A lock over several resources: its other keys (each extended with `key`).
    also: Vec<String>,
    ttl: Duration,
    /// Auto-extension period; `None` for a lease that is only watched, or no longer extended.
    interval: Option<Duration>,
    auto_extended: bool,
    /// `maxHoldTime`: no extend is sent from this moment on.
    stop_extending_at: Option<Instant>,
    held_too_long: bool,
    /// Its holder watches it (a lease object): report its extends.
    watched: bool,
    /// The key's TTL runs out no earlier than this (send time of the last success + ttl).
    valid_until: Instant,
    /// The send time and ttl of the last successful SET or extend: a later one decides the TTL,
    /// shorter or longer (PEXPIRE sets it), an earlier one that answers late decides nothing.
    last_sent: Instant,
    last_ttl: Duration,
    /// Identifies the queue entry that is current for this lease.
    schedule: u64,
    extending: bool,
    last_error: Option<EngineError>,
    /// Fixed at `track`, from the Locker's drift factor.
    margin_factor: f64,
}

impl HeldLease {
    fn deadline(&self) -> Instant {
        deadline_at(self.valid_until, self.last_ttl, self.margin_factor)
    }

    /// An extend sent at `sent_at` with `ttl` succeeded; `false` if a later one already did.
    fn record_extend(&mut self, sent_at: Instant, ttl: Duration) -> bool {
        if sent_at < self.last_sent {
            return false;
        }
        self.last_sent = sent_at;
        self.last_ttl = ttl;
        self.valid_until = sent_at + ttl;
        true
    }
}

/// The deadline of a lock whose TTL runs out no earlier than `valid_until`.
pub(crate) fn deadline_at(valid_until: Instant, ttl: Duration, drift_factor: f64) -> Instant {
    valid_until
        .checked_sub(safety_margin(ttl, drift_factor).min(ttl))
        .unwrap_or(valid_until)
}

#[derive(Default)]
struct State {
    leases: HashMap<Arc<str>, HeldLease>,
    /// (due, schedule, token); entries whose schedule no longer matches the lease are stale.
    queue: BinaryHeap<Reverse<(Instant, u64, Arc<str>)>>,
    next_schedule: u64,
    task_started: bool,
}

pub(crate) struct Leases {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    background: Arc<Awaited>,
    runtime: Handle,
    cancel: CancellationToken,
    on_lost: Option<LostCallback>,
    on_extended: Option<ExtendedCallback>,
    on_notice: Option<NoticeCallback>,
    drift_factor: f64,
}

/// How soon a failed extend is tried again.
fn retry_after(interval: Duration) -> Duration {
    (interval / 5).clamp(Duration::from_millis(10), Duration::from_millis(500))
}

/// One lease to extend: (token, key, ttl).
type Batch = Vec<(Arc<str>, String, Duration)>;

/// Most locks one batch script extends: keeps each script run short on the server.
const EXTENDS_PER_SCRIPT: usize = 256;

impl Leases {
    pub(crate) fn new(
        runtime: Handle,
        background: Arc<Awaited>,
        cancel: CancellationToken,
        on_lost: Option<LostCallback>,
        on_extended: Option<ExtendedCallback>,
        on_notice: Option<NoticeCallback>,
        drift_factor: f64,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                drift_factor,
                state: Mutex::new(State::default()),
                wake: Notify::new(),
                background,
                runtime,
                cancel,
                on_lost,
                on_extended,
                on_notice,
            }),
        }
    }

    /// Starts tracking a granted lease (auto-extended, or only watched).
    pub(crate) fn track(&self, grant: &Grant) {
        let (key, token, ttl, sent_at, auto_extend) = (
            grant.key.as_str(),
            grant.token.as_str(),
            grant.ttl,
            grant.sent_at,
            grant.auto_extend,
        );
        let stop_extending_at = grant.max_hold.map(|hold| sent_at + hold);
        let interval =
            auto_extend.then(|| Duration::from_millis((ttl.as_millis() / 2).max(1) as u64));
        let lease = HeldLease {
            key: key.to_owned(),
            also: grant.also.clone(),
            ttl,
            interval,
            auto_extended: auto_extend,
            stop_extending_at,
            held_too_long: false,
            watched: grant.watch,
            valid_until: sent_at + ttl,
            last_sent: sent_at,
            last_ttl: ttl,
            schedule: 0,
            extending: false,
            last_error: None,
            margin_factor: self.shared.drift_factor,
        };
        let due = match interval {
            Some(interval) => sent_at + interval,
            None => lease.deadline(),
        };
        let token: Arc<str> = token.into();
        let mut state = self.shared.lock();
        state.leases.insert(token.clone(), lease);
        let earliest_before = state.queue.peek().map(|Reverse((at, _, _))| *at);
        state.reschedule(&token, due);
        if !state.task_started {
            state.task_started = true;
            self.shared.runtime.spawn(run(self.shared.clone()));
        } else if earliest_before.is_none_or(|at| due < at) {
            self.shared.wake.notify_one();
        }
    }

    /// Stops tracking the lease with this token if it is one of `key`'s (v1 matched both).
    pub(crate) fn forget(&self, key: &str, token: &str) {
        let mut state = self.shared.lock();
        if state
            .leases
            .get(token)
            .is_some_and(|lease| lease.key == key || lease.also.iter().any(|k| k == key))
        {
            state.leases.remove(token);
        }
    }

    /// Records a successful manual extend sent at `sent_at`: the lease's deadline moves, earlier
    /// too for a shorter ttl.
    pub(crate) fn extended(&self, token: &str, sent_at: Instant, ttl: Duration) {
        let mut state = self.shared.lock();
        let Some(lease) = state.leases.get_mut(token) else {
            return;
        };
        if !lease.record_extend(sent_at, ttl) {
            return;
        }
        // Watch the new deadline (and extend again within the new ttl).
        let deadline = lease.deadline();
        let at = match lease.interval {
            Some(interval) => deadline.min(Instant::now() + interval.min(ttl / 2)),
            None => deadline,
        };
        let token: Arc<str> = token.into();
        state.reschedule(&token, at);
        drop(state);
        self.shared.wake.notify_one();
    }

    /// The lease's current deadline, if it is tracked.
    pub(crate) fn deadline(&self, token: &str) -> Option<Instant> {
        self.shared
            .lock()
            .leases
            .get(token)
            .map(HeldLease::deadline)
    }

    /// How many leases are tracked now, and how many of them are auto-extended.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let state = self.shared.lock();
        let extended = state.leases.values().filter(|l| l.auto_extended).count();
        (state.leases.len(), extended)
    }
}

impl State {
    fn reschedule(&mut self, token: &Arc<str>, at: Instant) {
        self.next_schedule += 1;
        let schedule = self.next_schedule;
        if let Some(lease) = self.leases.get_mut(token) {
            lease.schedule = schedule;
            self.queue.push(Reverse((at, schedule, token.clone())));
        }
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

    /// Handles every entry due at `now`: returns the extends to send and the leases lost.
    fn take_due(&mut self, now: Instant) -> (Batch, Vec<LostLease>) {
        let mut batch = Vec::new();
        let mut lost = Vec::new();
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, schedule, token))) = self.queue.pop() else {
                break;
            };
            let Some(lease) = self
                .leases
                .get_mut(&token)
                .filter(|l| l.schedule == schedule)
            else {
                continue;
            };
            let deadline = lease.deadline();
            if now >= deadline {
                let reason = match (&lease.interval, lease.last_error.take()) {
                    _ if lease.held_too_long => LostReason::MaxHoldTime,
                    (None, _) => LostReason::Expired,
                    (Some(_), Some(err)) => LostReason::Unreachable(err),
                    (Some(_), None) => LostReason::Unreachable(EngineError::new(
                        ErrorKind::Timeout,
                        "no extend succeeded before the lock's deadline",
                    )),
                };
                if let Some(lease) = self.leases.remove(&token) {
                    lost.push(LostLease {
                        key: lease.key,
                        token: token.to_string(),
                        auto_extended: lease.auto_extended,
                        reason,
                    });
                }
                continue;
            }
            if lease.interval.is_some() && lease.stop_extending_at.is_some_and(|at| now >= at) {
                // Held for maxHoldTime: no more extends; it runs out its ttl.
                lease.interval = None;
                lease.held_too_long = true;
            }
            if lease.interval.is_some() && !lease.extending {
                lease.extending = true;
                // A lock over several resources: an entry per key, side by side.
                for key in std::iter::once(&lease.key).chain(&lease.also) {
                    batch.push((token.clone(), key.clone(), lease.ttl));
                }
            }
            // Guard the deadline while an extend is in flight, or until a watched lease ends.
            self.reschedule(&token, deadline);
        }
        (batch, lost)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn report(&self, lost: Vec<LostLease>) {
        if let Some(on_lost) = &self.on_lost {
            for lease in lost {
                on_lost(lease);
            }
        }
    }
}

async fn run(shared: Arc<Shared>) {
    loop {
        let next = shared.lock().next_due();
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = shared.wake.notified() => continue,
            _ = tokio::time::sleep_until(next.unwrap_or(far).into()) => {}
        }
        let (batch, lost) = shared.lock().take_due(Instant::now());
        if !batch.is_empty() {
            // A slow server must not hold up the next tick: each batch runs on its own.
            shared.runtime.spawn(extend_batch(shared.clone(), batch));
        }
        shared.report(lost);
    }
}

async fn extend_batch(shared: Arc<Shared>, batch: Batch) {
    let sent_at = Instant::now();
    let results = extend_many(&shared.background, &batch).await;
    let (batch, results) = per_lease(batch, results);

    let mut lost = Vec::new();
    let mut moved = Vec::new();
    let mut failed: Option<(Vec<String>, String, Duration)> = None;
    {
        let mut state = shared.lock();
        let now = Instant::now();
        for ((token, _, _), result) in batch.iter().zip(results) {
            let Some(lease) = state.leases.get_mut(token) else {
                continue; // released, or given up at its deadline, while the extend was in flight
            };
            lease.extending = false;
            match result {
                Ok(true) => {
                    let ttl = lease.ttl;
                    let newest = lease.record_extend(sent_at, ttl);
                    lease.last_error = None;
                    if lease.watched && newest {
                        moved.push((token.to_string(), sent_at, lease.deadline()));
                    }
                    let at = now + lease.interval.unwrap_or(lease.ttl / 2);
                    state.reschedule(token, at);
                }
                Ok(false) => {
                    if let Some(lease) = state.leases.remove(token) {
                        lost.push(LostLease {
                            key: lease.key,
                            token: token.to_string(),
                            reason: LostReason::NotOwner,
                            auto_extended: true,
                        });
                    }
                }
                Err(err) => {
                    let deadline = lease.deadline();
                    let interval = lease.interval.unwrap_or(lease.ttl / 2);
                    let entry = failed.get_or_insert_with(|| {
                        (Vec::new(), err.message().to_owned(), retry_after(interval))
                    });
                    entry.0.push(lease.key.clone());
                    lease.last_error = Some(err);
                    // At the deadline the scheduler declares the lease lost if still failing.
                    state.reschedule(token, (now + retry_after(interval)).min(deadline));
                }
            }
        }
    }
    // The scheduler may be asleep until a later entry; let it see the new ones.
    shared.wake.notify_one();
    // Extends cut short by close() are not failures anyone will retry.
    if let Some((keys, why, retry_in)) = failed
        && !shared.cancel.is_cancelled()
        && let Some(on_notice) = &shared.on_notice
    {
        on_notice(
            Notice::ExtendFailed {
                keys,
                why,
                retry_in,
            },
            true,
        );
    }
    if !moved.is_empty()
        && let Some(on_extended) = &shared.on_extended
    {
        on_extended(moved);
    }
    shared.report(lost);
}

/// One result per lease from one per key (a lock over several resources has an entry per key,
/// side by side): lost if any key is not held any more, else failed if any extend failed.
fn per_lease(batch: Batch, results: Vec<EngineResult<bool>>) -> (Batch, Vec<EngineResult<bool>>) {
    let mut leases: Batch = Vec::with_capacity(batch.len());
    let mut merged: Vec<EngineResult<bool>> = Vec::with_capacity(results.len());
    for (entry, result) in batch.into_iter().zip(results) {
        let same = leases.last().is_some_and(|(token, _, _)| *token == entry.0);
        if !same {
            leases.push(entry);
            merged.push(result);
            continue;
        }
        if let Some(last) = merged.last_mut() {
            *last = match (std::mem::replace(last, Ok(true)), result) {
                (Ok(false), _) | (_, Ok(false)) => Ok(false),
                (Err(err), _) | (_, Err(err)) => Err(err),
                (Ok(true), Ok(true)) => Ok(true),
            };
        }
    }
    (leases, merged)
}

/// Extends many leases with as few round trips as the deployment allows: one script per 256
/// locks, and on a cluster one per slot (a script's keys must share a slot). All go out at once.
async fn extend_many(background: &Awaited, batch: &Batch) -> Vec<EngineResult<bool>> {
    let groups: Vec<Vec<usize>> = if background.is_cluster() {
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
    let calls: Vec<_> = chunks
        .iter()
        .map(|chunk| {
            let items = chunk
                .iter()
                .map(|&i| {
                    let (token, key, ttl) = &batch[i];
                    (key.clone(), token.to_string(), *ttl)
                })
                .collect();
            background.extend_many(items)
        })
        .collect();
    let replies = futures_util::future::join_all(calls).await;
    let mut results: Vec<EngineResult<bool>> = vec![Ok(false); batch.len()];
    for (chunk, replies) in chunks.iter().zip(replies) {
        for (&index, reply) in chunk.iter().zip(replies) {
            results[index] = reply;
        }
    }
    results
}

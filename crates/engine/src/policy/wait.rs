//! How waiting acquires take turns: when to try again, who gets a lock this Lock releases, and
//! how waiters of other processes get theirs. Pure: the core feeds it what happened and the time,
//! and does what it says.
//!
//! - **Budget (v1's).** 1 + retryCount timed attempts, retryDelay (+ jitter) apart, and no longer
//!   than waitTimeout. An attempt made because a release was heard or handed over comes on top,
//!   without using a retry up, so a waiter never gives up sooner than v1 would.
//! - **Hand-over.** When this Lock releases a lock one of its own waiters wants, the first idle
//!   waiter's attempt goes on the same connection right behind the release (Redis runs a
//!   connection's commands in order), so the lock changes hands in one round trip, to this Lock's
//!   waiters in the order they came. Such a release publishes nothing: waiters elsewhere would
//!   only wake to find the lock taken again.
//! - **Fairness between processes.** After `HAND_OVER_STREAK` hand-overs in a row a release is
//!   made in the open (published, nobody queued behind it). The release script says how many
//!   subscribers heard it; if any besides this Lock's own, its first waiter holds back for
//!   `YIELD` while theirs take the lock; if none, it tries at once.
//! - **No barging.** A new waiting acquire that finds waiters of this Lock queued for the key
//!   joins the end of the line without trying (its first attempt counts as made and found the
//!   lock held, which keeps v1's time span).
//! - A release heard from elsewhere gives the first idle, non-yielding waiter an attempt at once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How `acquire` waits for a lock somebody else holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first one; `None` retries until acquired, timed out or cancelled.
    pub retry_count: Option<u64>,
    /// Pause between attempts, unless a release ends it early.
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

/// When a waiting acquire tries again, and when it gives up (v1's budget, see the module).
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

    /// An attempt found the lock held at `now`: when to try again (unless a release comes
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

/// Hand-overs in a row within one Lock before a release is made in the open.
pub(crate) const HAND_OVER_STREAK: u32 = 4;

/// How long this Lock's waiters hold back after its own open release heard by others, so that
/// waiters elsewhere, which have to be woken first, can take the lock.
pub(crate) const YIELD: Duration = Duration::from_millis(1);

/// Past this many streaks kept, those of keys without waiters are dropped.
const STREAKS_KEPT: usize = 1024;

/// A waiting acquire, as far as taking turns goes; `S` is what the core needs to attempt.
pub(crate) struct Waiter<S> {
    pub key: String,
    pub spec: S,
    plan: WaitPlan,
    /// An attempt is under way.
    pub attempting: bool,
    /// Attempts sent so far.
    pub attempts: u32,
    /// Holding back after this Lock's open release (see `after_open_release`).
    yielding: bool,
    /// Listening for releases of its key (after its first attempt found it held).
    pub watching: bool,
    wake_at: Option<Instant>,
}

impl<S> Waiter<S> {
    /// If the attempt it makes at `now` finds the lock held, how long it may still wait before
    /// its next try by itself (at most its poll gap, never past its wait timeout); `None` if it
    /// would then give up.
    pub(crate) fn waits_on_for(&self, now: Instant) -> Option<Duration> {
        let plan = &self.plan;
        let timed = plan.next_poll.is_none_or(|at| now >= at);
        if timed && plan.polls_left == Some(0) {
            return None;
        }
        let mut gap = match plan.next_poll {
            Some(at) if at > now => at - now,
            _ => plan.retry.retry_delay + plan.retry.retry_jitter,
        };
        if let Some(until) = plan.wait_until {
            if now >= until {
                return None;
            }
            gap = gap.min(until - now);
        }
        Some(gap)
    }
}

/// Who comes next after this Lock releases a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn<Id> {
    /// This waiter: its attempt follows the release on the same connection.
    HandOver(Id),
    /// A release in the open, with waiters here (see `after_open_release`).
    Open,
    /// A release in the open, and nobody here waits for the key.
    Nobody,
}

/// What a new waiter does first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    Attempt,
    /// Queued behind waiters of this Lock: wait (watching) for a hand-over, a release heard or
    /// this time.
    WaitUntil(Instant),
    /// Queued behind others with no budget to wait (retryCount 0): held.
    GiveUp,
}

/// The waiters of one Lock, first come first served per key.
pub(crate) struct WaitQueue<Id, S> {
    by_key: HashMap<String, VecDeque<Id>>,
    waiters: HashMap<Id, Waiter<S>>,
    streaks: HashMap<String, u32>,
    /// (time, id); entries that no longer match the waiter's `wake_at` are stale.
    timers: BinaryHeap<Reverse<(Instant, Id)>>,
}

impl<Id: Copy + Eq + std::hash::Hash + Ord, S> Default for WaitQueue<Id, S> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            waiters: HashMap::new(),
            streaks: HashMap::new(),
            timers: BinaryHeap::new(),
        }
    }
}

impl<Id: Copy + Eq + std::hash::Hash + Ord, S> WaitQueue<Id, S> {
    pub(crate) fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    pub(crate) fn get(&self, id: Id) -> Option<&Waiter<S>> {
        self.waiters.get(&id)
    }

    pub(crate) fn ids(&self) -> Vec<Id> {
        self.waiters.keys().copied().collect()
    }

    /// A new waiter for `key`. On `Start::Attempt` the caller makes the attempt (and calls
    /// `attempting`).
    pub(crate) fn join(
        &mut self,
        id: Id,
        key: &str,
        spec: S,
        plan: WaitPlan,
        now: Instant,
    ) -> Start {
        let queue = self.by_key.entry(key.to_owned()).or_default();
        let behind = !queue.is_empty();
        queue.push_back(id);
        self.waiters.insert(
            id,
            Waiter {
                key: key.to_owned(),
                spec,
                plan,
                attempting: false,
                attempts: 0,
                yielding: false,
                watching: false,
                wake_at: None,
            },
        );
        if !behind {
            return Start::Attempt;
        }
        match self.held(id, now) {
            Some(at) => Start::WaitUntil(at),
            None => Start::GiveUp,
        }
    }

    /// Every idle waiter for `key`, first come first.
    pub(crate) fn idle(&self, key: &str) -> Vec<Id> {
        self.by_key.get(key).map_or_else(Vec::new, |queue| {
            queue
                .iter()
                .copied()
                .filter(|id| self.waiters.get(id).is_some_and(|w| !w.attempting))
                .collect()
        })
    }

    /// The waiter's attempt is under way.
    pub(crate) fn attempting(&mut self, id: Id) {
        if let Some(w) = self.waiters.get_mut(&id) {
            w.attempting = true;
            w.attempts = w.attempts.saturating_add(1);
            w.yielding = false;
            w.wake_at = None;
        }
    }

    /// The waiter's attempt found the lock held (or it joined behind others): when to try
    /// again, `None` to give up. From now on it watches for releases of its key.
    pub(crate) fn held(&mut self, id: Id, now: Instant) -> Option<Instant> {
        let w = self.waiters.get_mut(&id)?;
        w.attempting = false;
        let at = w.plan.after_held(now)?;
        w.watching = true;
        self.wake(id, at);
        Some(at)
    }

    fn wake(&mut self, id: Id, at: Instant) {
        if let Some(w) = self.waiters.get_mut(&id) {
            w.wake_at = Some(at);
            self.timers.push(Reverse((at, id)));
        }
    }

    /// The waiter is done (granted, gave up, failed, cancelled).
    pub(crate) fn remove(&mut self, id: Id) -> Option<Waiter<S>> {
        let w = self.waiters.remove(&id)?;
        if let Some(queue) = self.by_key.get_mut(&w.key) {
            queue.retain(|other| *other != id);
            if queue.is_empty() {
                self.by_key.remove(&w.key);
            }
        }
        if self.waiters.is_empty() {
            self.timers.clear();
        }
        Some(w)
    }

    fn first_idle(&self, key: &str) -> Option<Id> {
        self.by_key
            .get(key)?
            .iter()
            .copied()
            .find(|id| self.waiters.get(id).is_some_and(|w| !w.attempting))
    }

    /// This Lock is about to release `key`: hand it to the first idle waiter here that can take
    /// a hand-over (`can_hand_over`: its attempt goes on the release's own connection), or
    /// release in the open (nobody here is idle, or the streak is used up so waiters elsewhere
    /// get their turn).
    pub(crate) fn next_in_line(
        &mut self,
        key: &str,
        can_hand_over: impl Fn(&S) -> bool,
    ) -> Turn<Id> {
        if self.waiters.is_empty() {
            // The common case: nothing to look up, and any streak ends.
            if !self.streaks.is_empty() {
                self.streaks.remove(key);
            }
            return Turn::Nobody;
        }
        let next = self
            .first_idle(key)
            .filter(|id| self.waiters.get(id).is_some_and(|w| can_hand_over(&w.spec)));
        let Some(next) = next else {
            self.streaks.remove(key);
            return if self.by_key.contains_key(key) {
                Turn::Open
            } else {
                Turn::Nobody
            };
        };
        if self.streaks.len() >= STREAKS_KEPT && !self.streaks.contains_key(key) {
            let by_key = &self.by_key;
            self.streaks.retain(|k, _| by_key.contains_key(k));
        }
        let streak = self.streaks.entry(key.to_owned()).or_default();
        if *streak >= HAND_OVER_STREAK {
            *streak = 0;
            return Turn::Open;
        }
        *streak += 1;
        Turn::HandOver(next)
    }

    /// This Lock released `key` in the open and `told` subscribers heard it (`ours`: whether
    /// this Lock's own subscriber is among them). The waiter to attempt now, if any; else its
    /// first waiter holds back for `YIELD`.
    pub(crate) fn after_open_release(
        &mut self,
        key: &str,
        told: i64,
        ours: bool,
        now: Instant,
    ) -> Option<Id> {
        let id = self.first_idle(key)?;
        if told > i64::from(ours) {
            if let Some(w) = self.waiters.get_mut(&id) {
                w.yielding = true;
            }
            self.wake(id, now + YIELD);
            None
        } else {
            Some(id)
        }
    }

    /// A release of `key` was heard from Redis: the waiter to attempt now, if any (not one
    /// yielding after this Lock's own open release, whose echo this may be).
    pub(crate) fn heard(&self, key: &str) -> Option<Id> {
        let id = self.first_idle(key)?;
        (!self.waiters.get(&id)?.yielding).then_some(id)
    }

    /// The first idle, non-yielding waiter whose spec `matches` (any key's), if any.
    pub(crate) fn heard_by(&self, matches: impl Fn(&S) -> bool) -> Option<Id> {
        self.waiters
            .iter()
            .filter(|(_, w)| !w.attempting && !w.yielding && w.watching && matches(&w.spec))
            .map(|(id, _)| *id)
            .min()
    }

    /// Whether some waiter watches `key` (this Lock's subscriber listens for it).
    pub(crate) fn watched(&self, key: &str) -> bool {
        self.by_key.get(key).is_some_and(|q| {
            q.iter()
                .any(|id| self.waiters.get(id).is_some_and(|w| w.watching))
        })
    }

    /// Keys with idle waiters, for "a release may have gone unheard" (the subscriber reconnected).
    pub(crate) fn keys(&self) -> Vec<String> {
        self.by_key.keys().cloned().collect()
    }

    /// Waiters whose timer is due at `now`, idle ones only.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Id> {
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(w) = self.waiters.get_mut(&id)
                && w.wake_at == Some(at)
            {
                w.wake_at = None;
                if !w.attempting {
                    due.push(id);
                }
            }
        }
        due
    }

    /// The earliest live timer.
    pub(crate) fn next_timer(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if self.waiters.get(&id).is_some_and(|w| w.wake_at == Some(at)) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(count: Option<u64>, delay_ms: u64, now: Instant) -> WaitPlan {
        WaitPlan::new(
            RetryPolicy {
                retry_count: count,
                retry_delay: Duration::from_millis(delay_ms),
                ..RetryPolicy::ONCE
            },
            now,
        )
    }

    #[test]
    fn the_budget_is_one_plus_retry_count_timed_attempts() {
        let t0 = Instant::now();
        let mut p = plan(Some(2), 100, t0);
        let first = p.after_held(t0).unwrap();
        assert_eq!(first, t0 + Duration::from_millis(100));
        // A notified attempt before the timer keeps the schedule and uses nothing up.
        assert_eq!(p.after_held(t0 + Duration::from_millis(10)), Some(first));
        let second = p.after_held(first).unwrap();
        assert_eq!(second, first + Duration::from_millis(100));
        assert_eq!(p.after_held(second), None);
    }

    #[test]
    fn a_waiter_waits_on_no_longer_than_its_next_try_and_its_timeout_and_not_after_its_last() {
        let t0 = Instant::now();
        let mut q: WaitQueue<u32, ()> = WaitQueue::default();
        // retryCount 1: the first attempt is followed by one more; after the second, nothing.
        assert_eq!(
            q.join(1, "k", (), plan(Some(1), 200, t0), t0),
            Start::Attempt
        );
        q.attempting(1);
        let w = q.get(1).unwrap();
        assert_eq!(w.waits_on_for(t0), Some(Duration::from_millis(200)));
        let next = q.held(1, t0).unwrap();
        q.attempting(1);
        assert_eq!(
            q.get(1).unwrap().waits_on_for(next),
            None,
            "its last attempt"
        );
        // A long retryDelay under a short waitTimeout: the timeout bounds it.
        let long = WaitPlan::new(
            RetryPolicy {
                retry_count: None,
                retry_delay: Duration::from_millis(30_000),
                wait_timeout: Some(Duration::from_millis(1000)),
                ..RetryPolicy::ONCE
            },
            t0,
        );
        assert_eq!(q.join(2, "j", (), long, t0), Start::Attempt);
        let w = q.get(2).unwrap();
        assert_eq!(w.waits_on_for(t0), Some(Duration::from_millis(1000)));
        assert_eq!(w.waits_on_for(t0 + Duration::from_millis(1000)), None);
    }

    #[test]
    fn wait_timeout_caps_the_schedule() {
        let t0 = Instant::now();
        let mut p = WaitPlan::new(
            RetryPolicy {
                retry_count: None,
                retry_delay: Duration::from_millis(300),
                wait_timeout: Some(Duration::from_millis(500)),
                ..RetryPolicy::ONCE
            },
            t0,
        );
        let a = p.after_held(t0).unwrap();
        let b = p.after_held(a).unwrap();
        assert_eq!(b, t0 + Duration::from_millis(500));
        assert_eq!(p.after_held(b), None);
    }

    #[test]
    fn hand_over_goes_first_in_first_out_and_a_streak_ends_in_the_open() {
        let t0 = Instant::now();
        let mut q: WaitQueue<u32, ()> = WaitQueue::default();
        assert_eq!(q.next_in_line("k", |_| true), Turn::Nobody);
        assert_eq!(q.join(1, "k", (), plan(None, 100, t0), t0), Start::Attempt);
        q.attempting(1);
        // Later waiters do not barge past the first: they wait, watching.
        for id in 2..=6 {
            assert!(matches!(
                q.join(id, "k", (), plan(None, 100, t0), t0),
                Start::WaitUntil(_)
            ));
            assert!(q.get(id).unwrap().watching);
        }
        q.held(1, t0);
        let mut order = Vec::new();
        for _ in 0..HAND_OVER_STREAK {
            match q.next_in_line("k", |_| true) {
                Turn::HandOver(id) => {
                    // Its attempt follows the release and takes the lock.
                    order.push(id);
                    q.attempting(id);
                    q.remove(id);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(order, [1, 2, 3, 4], "first come, first served");
        assert_eq!(
            q.next_in_line("k", |_| true),
            Turn::Open,
            "the 5th release is open"
        );
        assert_eq!(
            q.next_in_line("k", |_| true),
            Turn::HandOver(5),
            "and the streak starts over"
        );
    }

    #[test]
    fn an_open_release_heard_by_others_makes_the_waiter_here_yield() {
        let t0 = Instant::now();
        let mut q: WaitQueue<u32, ()> = WaitQueue::default();
        q.join(1, "k", (), plan(None, 1000, t0), t0);
        q.attempting(1);
        q.held(1, t0);
        // Heard only by our own subscriber: try at once.
        assert_eq!(q.after_open_release("k", 1, true, t0), Some(1));
        // Heard by another process too: hold back, and ignore the echo meanwhile.
        assert_eq!(q.after_open_release("k", 2, true, t0), None);
        assert_eq!(q.heard("k"), None);
        assert_eq!(q.next_timer(), Some(t0 + YIELD));
        assert_eq!(q.due(t0 + YIELD), vec![1]);
    }

    #[test]
    fn nobody_idle_means_an_open_release_and_removal_cleans_up() {
        let t0 = Instant::now();
        let mut q: WaitQueue<u32, ()> = WaitQueue::default();
        q.join(1, "k", (), plan(None, 100, t0), t0);
        q.attempting(1);
        assert_eq!(q.next_in_line("k", |_| true), Turn::Open);
        assert_eq!(q.next_in_line("other", |_| true), Turn::Nobody);
        assert!(q.remove(1).is_some());
        assert!(q.is_empty());
        assert_eq!(q.next_timer(), None);
        assert!(q.keys().is_empty());
    }

    #[test]
    fn a_waiter_behind_others_with_no_retries_gives_up() {
        let t0 = Instant::now();
        let mut q: WaitQueue<u32, ()> = WaitQueue::default();
        q.join(1, "k", (), plan(None, 100, t0), t0);
        assert_eq!(
            q.join(2, "k", (), plan(Some(0), 100, t0), t0),
            Start::GiveUp
        );
    }

    #[test]
    fn stale_timers_never_fire() {
        let t0 = Instant::now();
        let mut q: WaitQueue<u32, ()> = WaitQueue::default();
        q.join(1, "k", (), plan(None, 100, t0), t0);
        q.attempting(1);
        let at = q.held(1, t0).unwrap();
        q.attempting(1); // a release was heard before the timer
        assert_eq!(q.due(at), Vec::<u32>::new());
        assert_eq!(q.next_timer(), None);
    }
}

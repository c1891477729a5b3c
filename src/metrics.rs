//! `lock.metrics()`'s counters and summaries, kept where every call settles (the `Settler`, on
//! the JS thread), so counting costs the hot path a few increments and no JS work.
//!
//! Held locks are known by token: a lock nobody tracks (no autoExtend, not a lease) leaves at
//! its release or when its ttl has run out; a tracked one at its release, its loss (the facade
//! says so) or the Lock's close.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use napi_derive::napi;
use sdl_engine::{ErrorKind, Outcome};

/// How far back the summaries look, and how many samples each keeps at most.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
const WINDOW_SAMPLES: usize = 1024;

/// What a pending call is, for counting its outcome.
pub(crate) enum Counted {
    Acquire {
        started: Instant,
        waits: bool,
        ttl: Duration,
        tracked: bool,
    },
    /// The lock leaves what is held once the release answers (a failed one leaves it there).
    Release {
        token: String,
    },
    Extend {
        token: String,
        ttl: Duration,
        sent_at: Instant,
    },
    Other,
}

struct Held {
    at: Instant,
    /// `None`: tracked by the engine (leaves at release, loss or close).
    until: Option<Instant>,
}

/// The last `WINDOW_SAMPLES` durations, with when they were taken.
struct Window {
    samples: Vec<(f64, Instant)>,
    next: usize,
}

impl Window {
    fn new() -> Self {
        Self {
            samples: Vec::new(),
            next: 0,
        }
    }

    fn add(&mut self, took: Duration, now: Instant) {
        let sample = (took.as_secs_f64() * 1000.0, now);
        if self.samples.len() < WINDOW_SAMPLES {
            self.samples.push(sample);
        } else {
            self.samples[self.next] = sample;
        }
        self.next = (self.next + 1) % WINDOW_SAMPLES;
    }

    fn summary(&self, now: Instant) -> DurationSummary {
        let mut recent: Vec<f64> = self
            .samples
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(*at) <= WINDOW)
            .map(|(ms, _)| *ms)
            .collect();
        recent.sort_by(f64::total_cmp);
        let n = recent.len();
        // Nearest rank.
        let at = |q: f64| {
            if n == 0 {
                0.0
            } else {
                round(recent[((q * n as f64).ceil() as usize).clamp(1, n) - 1])
            }
        };
        DurationSummary {
            count: n as u32,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: recent.last().copied().map_or(0.0, round),
        }
    }
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// Durations in ms over the window.
#[napi(object)]
pub struct DurationSummary {
    pub count: u32,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// The engine's side of `lock.metrics()` (the facade adds losses and failed auto-extensions).
#[napi(object)]
pub struct NativeMetrics {
    pub acquired: f64,
    pub refused: f64,
    pub errors: f64,
    pub released: f64,
    pub released_not_owner: f64,
    pub extended: f64,
    pub extend_failed: f64,
    pub held: u32,
    pub waiting: u32,
    pub wait_time: DurationSummary,
    pub hold_time: DurationSummary,
    pub window_ms: f64,
}

pub(crate) struct Metrics {
    acquired: u64,
    refused: u64,
    errors: u64,
    released: u64,
    released_not_owner: u64,
    extended: u64,
    extend_failed: u64,
    waiting: u32,
    held: HashMap<String, Held>,
    prune_at: usize,
    wait: Window,
    hold: Window,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            acquired: 0,
            refused: 0,
            errors: 0,
            released: 0,
            released_not_owner: 0,
            extended: 0,
            extend_failed: 0,
            waiting: 0,
            held: HashMap::new(),
            prune_at: 1024,
            wait: Window::new(),
            hold: Window::new(),
        }
    }

    /// A call was made.
    pub(crate) fn started(&mut self, counted: &Counted) {
        if let Counted::Acquire { waits: true, .. } = counted {
            self.waiting += 1;
        }
    }

    /// A tracked lease was lost (the facade tells).
    pub(crate) fn lost(&mut self, token: &str) {
        self.held.remove(token);
    }

    /// The Lock closed: tracked leases are over (the facade counts them lost, kind `closed`).
    pub(crate) fn closed(&mut self) {
        self.held.retain(|_, held| held.until.is_some());
    }

    /// A call settled.
    pub(crate) fn settled(&mut self, counted: Counted, outcome: &Outcome) {
        if let Outcome::Failed(err) = outcome
            && err.kind() == ErrorKind::Cancelled
        {
            // The caller's own abort: not a failure of Redis or the connection.
            if let Counted::Acquire { waits: true, .. } = counted {
                self.waiting = self.waiting.saturating_sub(1);
            }
            return;
        }
        let now = Instant::now();
        match counted {
            Counted::Acquire {
                started,
                waits,
                ttl,
                tracked,
            } => {
                if waits {
                    self.waiting = self.waiting.saturating_sub(1);
                }
                match outcome {
                    Outcome::Granted(grant) => {
                        self.acquired += 1;
                        self.wait.add(now.saturating_duration_since(started), now);
                        let until = (!tracked).then(|| now + ttl);
                        self.held
                            .insert(grant.token.clone(), Held { at: now, until });
                        if self.held.len() >= self.prune_at {
                            // Locks that ran out without a release: amortized, so `held` stays
                            // bounded by the locks really held.
                            self.prune(now);
                            self.prune_at = (self.held.len() * 2).max(1024);
                        }
                    }
                    Outcome::Refused { .. } => self.refused += 1,
                    _ => self.errors += 1,
                }
            }
            Counted::Release { token } => match outcome {
                Outcome::Flag(true) => {
                    self.released += 1;
                    if let Some(held) = self.held.remove(&token) {
                        self.hold.add(now.saturating_duration_since(held.at), now);
                    }
                }
                Outcome::Flag(false) => {
                    self.released_not_owner += 1;
                    self.held.remove(&token);
                }
                // Still held, as far as anyone knows: it runs out with its ttl.
                _ => self.errors += 1,
            },
            Counted::Extend {
                token,
                ttl,
                sent_at,
            } => match outcome {
                Outcome::Flag(true) => {
                    self.extended += 1;
                    if let Some(held) = self.held.get_mut(&token)
                        && held.until.is_some()
                    {
                        held.until = Some(sent_at + ttl);
                    }
                }
                Outcome::Flag(false) => self.extend_failed += 1,
                _ => self.errors += 1,
            },
            Counted::Other => {
                if let Outcome::Failed(_) = outcome {
                    self.errors += 1;
                }
            }
        }
    }

    fn prune(&mut self, now: Instant) {
        self.held
            .retain(|_, held| held.until.is_none_or(|until| until > now));
    }

    pub(crate) fn snapshot(&mut self) -> NativeMetrics {
        let now = Instant::now();
        self.prune(now);
        NativeMetrics {
            acquired: self.acquired as f64,
            refused: self.refused as f64,
            errors: self.errors as f64,
            released: self.released as f64,
            released_not_owner: self.released_not_owner as f64,
            extended: self.extended as f64,
            extend_failed: self.extend_failed as f64,
            held: self.held.len() as u32,
            waiting: self.waiting,
            wait_time: self.wait.summary(now),
            hold_time: self.hold.summary(now),
            window_ms: WINDOW.as_millis() as f64,
        }
    }
}

//! Redlock on the lane: one call sent to every master's socket in the same loop turn, decided by
//! the engine's `Tally` as the replies arrive (a slow master does not hold the decision up).
//! A refused or failed acquire is released on every master: the release goes out on each
//! master's socket behind that master's own attempt, so it can never run before it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use napi::sys;
use sdl_engine::wire;
use sdl_engine::{EngineError, Locker, Tally};

use super::AcquireCall;
use super::io::{Effects, Io};
use crate::completions::Outcome;
use crate::errors::failed;

/// What a Redlock call does, with what it needs once decided.
pub(crate) enum QuorumOp {
    Acquire(AcquireCall),
    Release {
        key: String,
    },
    Extend {
        token: String,
        ttl: Duration,
        sent_at: tokio::time::Instant,
    },
    Exists,
}

/// One master's answer to its part of a call.
pub(crate) enum Answer {
    Yes(Option<i64>),
    No,
    Failed(EngineError),
}

pub(crate) struct QuorumCall {
    deferred: Option<sys::napi_deferred>,
    op: QuorumOp,
    locker: Arc<Locker>,
    tally: Tally<Option<i64>>,
    /// The masters' sockets, in order, for the release after a failed acquire.
    ios: Vec<Rc<RefCell<Io>>>,
    targets: Vec<String>,
}

impl QuorumCall {
    pub(crate) fn new(
        deferred: sys::napi_deferred,
        op: QuorumOp,
        locker: Arc<Locker>,
        ios: Vec<Rc<RefCell<Io>>>,
        targets: Vec<String>,
    ) -> Self {
        Self {
            deferred: Some(deferred),
            locker,
            tally: Tally::new(ios.len()),
            op,
            ios,
            targets,
        }
    }

    /// What a master's reply means for this call.
    pub(crate) fn answer_of(&self, reply: &wire::Reply, target: &str) -> Answer {
        if let wire::Reply::Error(message) = reply {
            return Answer::Failed(wire::reply_error(message, target));
        }
        let read = match self.op {
            QuorumOp::Acquire(_) => wire::acquired(reply).map(|fence| match fence {
                Some(fence) => Answer::Yes(fence),
                None => Answer::No,
            }),
            _ => wire::is_one(reply).map(|one| if one { Answer::Yes(None) } else { Answer::No }),
        };
        read.unwrap_or_else(|bad| {
            Answer::Failed(EngineError::new(sdl_engine::ErrorKind::Redis, bad))
        })
    }

    /// Counts master `index`'s answer; settles the call once the answers decide it.
    pub(crate) fn record(&mut self, index: usize, answer: Answer, effects: &mut Effects) {
        if self.deferred.is_none() {
            return; // decided already; later answers change nothing
        }
        match answer {
            Answer::Yes(fence) => self.tally.yes(fence),
            Answer::No => self.tally.no(),
            Answer::Failed(err) => self.tally.failed(&self.targets[index], err),
        }
        if self.tally.decided() {
            self.decide(effects);
        }
    }

    fn decide(&mut self, effects: &mut Effects) {
        let Some(deferred) = self.deferred.take() else {
            return;
        };
        let tally = std::mem::replace(&mut self.tally, Tally::new(self.ios.len()));
        let locker = &self.locker;
        let outcome = match &self.op {
            QuorumOp::Acquire(call) => {
                let valid_until = locker.deadline_for(call.sent_at, call.ttl);
                let timed_out = tokio::time::Instant::now() >= valid_until;
                match tally.outcome("acquire", timed_out) {
                    Ok(Some(fences)) => {
                        let fence = fences.into_iter().flatten().max();
                        call.granted(locker, fence)
                    }
                    refused => {
                        // Release everywhere, behind each master's own attempt.
                        for io in &self.ios {
                            effects
                                .sends
                                .push((io.clone(), wire::release_command(&call.key, &call.token)));
                        }
                        match refused {
                            Ok(_) => call.refused(),
                            Err(err) => failed(err),
                        }
                    }
                }
            }
            QuorumOp::Release { key } => match tally.outcome("release", false) {
                Ok(released) => {
                    if released.is_some() {
                        locker.note_released(key);
                    }
                    Outcome::Flag(released.is_some())
                }
                Err(err) => failed(err),
            },
            QuorumOp::Extend {
                token,
                ttl,
                sent_at,
            } => match tally.outcome("extend", false) {
                Ok(extended) => {
                    if extended.is_some() {
                        locker.note_extended(token, *sent_at, *ttl);
                    }
                    Outcome::Flag(extended.is_some())
                }
                Err(err) => failed(err),
            },
            QuorumOp::Exists => match tally.outcome("check the lock", false) {
                Ok(held) => Outcome::Flag(held.is_some()),
                Err(err) => failed(err),
            },
        };
        effects.settlements.push((deferred, outcome));
    }
}

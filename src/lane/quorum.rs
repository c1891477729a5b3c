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
use super::io::{Effects, GiveBack, Io};
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
    /// Each master's final answer so far (a NOSCRIPT re-send is not one).
    answered: Vec<Option<Said>>,
    /// A refused or failed acquire: every grant must be given back.
    give_back: bool,
    /// The runtime was asked to release on every master (once is enough).
    released_everywhere: bool,
}

/// What a master said, as far as giving its grant back is concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Said {
    Yes,
    No,
    Failed,
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
            answered: vec![None; ios.len()],
            op,
            ios,
            targets,
            give_back: false,
            released_everywhere: false,
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
            QuorumOp::Release { .. } => wire::released(reply).map(|told| match told {
                Some(_) => Answer::Yes(None),
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
        self.answered[index] = Some(match answer {
            Answer::Yes(_) => Said::Yes,
            Answer::No => Said::No,
            Answer::Failed(_) => Said::Failed,
        });
        if self.deferred.is_none() {
            // Decided already; a late grant of a refused acquire goes back now, after the
            // master's own attempt (never overtaking it, even after a NOSCRIPT re-send).
            if self.give_back {
                self.give_back_from(index, effects);
            }
            return;
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

    /// Gives back master `index`'s grant, once it answered: on its socket if it said yes, on
    /// the runtime (every master) if it failed and may have granted before failing.
    fn give_back_from(&mut self, index: usize, effects: &mut Effects) {
        let QuorumOp::Acquire(call) = &self.op else {
            return;
        };
        match self.answered[index] {
            Some(Said::Yes) => effects.releases.push(GiveBack {
                io: Some(self.ios[index].clone()),
                locker: self.locker.clone(),
                key: call.key.clone(),
                token: call.token.clone(),
            }),
            Some(Said::Failed) if !self.released_everywhere => {
                self.released_everywhere = true;
                effects.releases.push(GiveBack {
                    io: None,
                    locker: self.locker.clone(),
                    key: call.key.clone(),
                    token: call.token.clone(),
                });
            }
            _ => {}
        }
    }

    fn decide(&mut self, effects: &mut Effects) {
        let Some(deferred) = self.deferred.take() else {
            return;
        };
        let tally = std::mem::replace(&mut self.tally, Tally::new(self.ios.len()));
        let locker = &self.locker;
        let mut give_back = false;
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
                        let outcome = match refused {
                            Ok(_) => call.refused(),
                            Err(err) => failed(err),
                        };
                        give_back = true;
                        outcome
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
        if give_back {
            // Give back what was granted: now from the masters that answered, later from the
            // others, each behind its own attempt.
            self.give_back = true;
            for index in 0..self.ios.len() {
                self.give_back_from(index, effects);
            }
        }
    }
}

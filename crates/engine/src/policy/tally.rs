//! Redlock's decision rule: a call over N independent masters succeeds when a majority said yes,
//! fails as "held elsewhere" when a master said no and a majority is out of reach, and fails
//! with a quorum error naming the masters when failures alone kept the majority out of reach.

use crate::error::{EngineError, EngineResult, ErrorKind};

/// A Redlock call's answers so far, and what they decide.
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
        if self.yes.len() >= self.needed {
            // A majority reached after the validity time does not count: not acquired (the
            // caller gives the grants back), as if held; a waiter tries again.
            return Ok((!timed_out).then_some(self.yes));
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

//! What the engine tells an operator: connections opened and broken, scripts reloaded, cluster
//! redirects, Redlock votes, Sentinel switches, auto-extensions that failed. The Node facade
//! turns these into its debug log and its diagnostics channels.
//!
//! A notice names servers by `host:port` (or socket path) and locks by key; it never carries a
//! password or an owner token. Notices are rare (a change of state, a failure), except Redlock
//! votes, which the core reports for every acquire only while asked to (`Core::set_votes`).

use std::sync::Arc;
use std::time::Duration;

/// One thing worth telling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A socket to `target` is up (handshake done); `again`: it is not the connection's first.
    Opened { target: String, again: bool },
    /// An open socket to `target` broke (`why`: the error, naming the server): its requests in
    /// flight failed, the rest wait for the next socket.
    Broken { target: String, why: String },
    /// Opening a socket to `target` failed (`why` names the server); tried again after
    /// `retry_in` if calls wait.
    OpenFailed {
        target: String,
        why: String,
        retry_in: Duration,
    },
    /// `target` had lost its script cache (NOSCRIPT): the script went again, in full.
    ScriptReloaded { target: String },
    /// A cluster node moved a request on (`MOVED`, or `ASK` while a slot migrates).
    Redirected {
        from: String,
        ask: bool,
        slot: u16,
        to: String,
    },
    /// A cluster request is tried again later (TRYAGAIN, CLUSTERDOWN, LOADING, no slot map).
    ClusterRetry { target: String, why: String },
    /// Redlock: how each master answered an acquire, and what was decided.
    Quorum {
        key: String,
        granted: bool,
        votes: Vec<Vote>,
    },
    /// Sentinel: the sentinels announced a new master; connections follow it.
    MasterSwitched { target: String },
    /// Auto-extensions of the locks at `keys` failed with `why`; each is tried again in
    /// `retry_in` while its lease lasts.
    ExtendFailed {
        keys: Vec<String>,
        why: String,
        retry_in: Duration,
    },
}

/// A Redlock master's answer to one acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    pub target: String,
    pub answer: VoteAnswer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteAnswer {
    Granted,
    /// Held by someone else.
    Refused,
    /// An error (its message).
    Failed(String),
    /// No answer before the decision.
    Pending,
}

/// Where notices go, with whether they concern the auto-extension connections (which are
/// apart from the calls' own); called on whichever thread drives the core (keep it short).
pub type NoticeCallback = Arc<dyn Fn(Notice, bool) + Send + Sync>;

impl Notice {
    /// One line for a log.
    pub fn describe(&self) -> String {
        match self {
            Notice::Opened { target, again } => {
                format!(
                    "connection to {target} {}",
                    if *again { "reopened" } else { "opened" }
                )
            }
            Notice::Broken { why, .. } => format!("connection broken: {why}"),
            Notice::OpenFailed { why, retry_in, .. } => {
                format!("{why} (trying again in {} ms)", retry_in.as_millis())
            }
            Notice::ScriptReloaded { target } => {
                format!("{target} had lost its scripts (NOSCRIPT): sent them again")
            }
            Notice::Redirected {
                from,
                ask,
                slot,
                to,
            } => format!(
                "{from} redirected slot {slot} to {to} ({})",
                if *ask { "ASK" } else { "MOVED" }
            ),
            Notice::ClusterRetry { target, why } => {
                format!("cluster request to {target} tried again: {why}")
            }
            Notice::Quorum {
                key,
                granted,
                votes,
            } => {
                let granted_by = votes
                    .iter()
                    .filter(|v| v.answer == VoteAnswer::Granted)
                    .count();
                let each = votes
                    .iter()
                    .map(|v| {
                        let answer = match &v.answer {
                            VoteAnswer::Granted => "granted".to_owned(),
                            VoteAnswer::Refused => "refused".to_owned(),
                            VoteAnswer::Failed(why) => format!("failed ({why})"),
                            VoteAnswer::Pending => "no answer".to_owned(),
                        };
                        format!("{} {answer}", v.target)
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "Redlock acquire of {key} {}: {granted_by} of {} masters granted it ({each})",
                    if *granted { "granted" } else { "not granted" },
                    votes.len()
                )
            }
            Notice::MasterSwitched { target } => {
                format!("{target}: the sentinels announced a new master, reconnecting")
            }
            Notice::ExtendFailed {
                keys,
                why,
                retry_in,
            } => {
                let mut named = keys.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
                if keys.len() > 3 {
                    named.push_str(&format!(" and {} more", keys.len() - 3));
                }
                format!(
                    "auto-extension of {named} failed: {why} (trying again in {} ms)",
                    retry_in.as_millis()
                )
            }
        }
    }
}

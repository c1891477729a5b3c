//! The engine's notices (see `sdl_engine::notice`) as the objects the facade receives: its
//! debug log and diagnostics channels are made of them. No password and no token is in any.

use napi_derive::napi;
use sdl_engine::{Notice, VoteAnswer};

/// Something the engine tells: a connection opened or broke, a script was reloaded, a cluster
/// redirect, a Redlock vote, a Sentinel switch, auto-extensions that failed.
#[napi(object)]
pub struct EngineNotice {
    /// `opened`, `reopened`, `broken`, `connect-failed`, `script-reloaded`, `redirected`,
    /// `cluster-retry`, `quorum`, `master-switched` or `extend-failed`.
    pub kind: String,
    /// One line for a log.
    pub message: String,
    /// The server concerned (`host:port` or socket path), when one is.
    pub server: Option<String>,
    /// It concerns the auto-extension connection (apart from the calls' own).
    pub background: bool,
    /// The lock keys concerned (`quorum`: one; `extend-failed`: each that failed).
    pub keys: Option<Vec<String>>,
    /// The error, for `broken`, `connect-failed`, `cluster-retry` and `extend-failed`.
    pub error: Option<String>,
    /// When it is tried again, for `connect-failed` and `extend-failed`.
    pub retry_in_ms: Option<f64>,
    /// `redirected`: the node it went to, the slot, and whether it was `ASK`.
    pub to: Option<String>,
    pub slot: Option<u32>,
    pub ask: Option<bool>,
    /// `quorum`: the decision and each master's vote.
    pub granted: Option<bool>,
    pub votes: Option<Vec<EngineVote>>,
}

/// A Redlock master's answer to one acquire.
#[napi(object)]
pub struct EngineVote {
    pub server: String,
    /// `granted`, `refused`, `failed` or `no-answer`.
    pub vote: String,
    pub error: Option<String>,
}

impl EngineNotice {
    pub(crate) fn from_engine(notice: Notice, background: bool) -> Self {
        let mut out = EngineNotice {
            kind: String::new(),
            message: notice.describe(),
            server: None,
            background,
            keys: None,
            error: None,
            retry_in_ms: None,
            to: None,
            slot: None,
            ask: None,
            granted: None,
            votes: None,
        };
        let kind = match notice {
            Notice::Opened { target, again } => {
                out.server = Some(target);
                if again { "reopened" } else { "opened" }
            }
            Notice::Broken { target, why } => {
                out.server = Some(target);
                out.error = Some(why);
                "broken"
            }
            Notice::OpenFailed {
                target,
                why,
                retry_in,
            } => {
                out.server = Some(target);
                out.error = Some(why);
                out.retry_in_ms = Some(retry_in.as_secs_f64() * 1000.0);
                "connect-failed"
            }
            Notice::ScriptReloaded { target } => {
                out.server = Some(target);
                "script-reloaded"
            }
            Notice::Redirected {
                from,
                ask,
                slot,
                to,
            } => {
                out.server = Some(from);
                out.to = Some(to);
                out.slot = Some(u32::from(slot));
                out.ask = Some(ask);
                "redirected"
            }
            Notice::ClusterRetry { target, why } => {
                out.server = Some(target);
                out.error = Some(why);
                "cluster-retry"
            }
            Notice::Quorum {
                key,
                granted,
                votes,
            } => {
                out.keys = Some(vec![key]);
                out.granted = Some(granted);
                out.votes = Some(
                    votes
                        .into_iter()
                        .map(|v| {
                            let (vote, error) = match v.answer {
                                VoteAnswer::Granted => ("granted", None),
                                VoteAnswer::Refused => ("refused", None),
                                VoteAnswer::Failed(why) => ("failed", Some(why)),
                                VoteAnswer::Pending => ("no-answer", None),
                            };
                            EngineVote {
                                server: v.target,
                                vote: vote.to_owned(),
                                error,
                            }
                        })
                        .collect(),
                );
                "quorum"
            }
            Notice::MasterSwitched { target } => {
                out.server = Some(target);
                "master-switched"
            }
            Notice::ExtendFailed {
                keys,
                why,
                retry_in,
            } => {
                out.keys = Some(keys);
                out.error = Some(why);
                out.retry_in_ms = Some(retry_in.as_secs_f64() * 1000.0);
                "extend-failed"
            }
        };
        out.kind = kind.to_owned();
        out
    }
}

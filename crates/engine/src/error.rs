//! Engine errors: a small set of kinds, each with a stable code the binding hands to JS.
//!
//! Messages name the server (`host:port` or socket path) and what went wrong. They are built
//! only from that target and from Redis's own error text, never from the connection settings,
//! so a password cannot end up in one.

use std::fmt;
use std::time::Duration;

/// What went wrong, as far as a caller needs to tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server could not be reached or the connection broke.
    Connection,
    /// The server did not answer within the command timeout.
    Timeout,
    /// The server refused the credentials.
    Auth,
    /// The server answered with an error reply (READONLY, OOM, WRONGTYPE, ...).
    Redis,
    /// The lock engine was closed.
    Closed,
    /// The caller cancelled a waiting acquire.
    Cancelled,
    /// Redlock: too many masters failed to reach a majority either way.
    Quorum,
    /// Too few replicas acknowledged the lock's write in time.
    Replication,
    /// The deployment cannot do what was asked (e.g. replica acknowledgement on a cluster).
    Unsupported,
    /// The configuration cannot work (bad TLS material, bad address).
    Config,
}

impl ErrorKind {
    /// The stable code JS callers match on (`err.code`).
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Connection => "ERR_LOCK_CONNECTION",
            ErrorKind::Timeout => "ERR_LOCK_TIMEOUT",
            ErrorKind::Auth => "ERR_LOCK_AUTH",
            ErrorKind::Redis => "ERR_LOCK_REDIS",
            ErrorKind::Closed => "ERR_LOCK_CLOSED",
            ErrorKind::Cancelled => "ERR_LOCK_CANCELLED",
            ErrorKind::Quorum => "ERR_LOCK_QUORUM",
            ErrorKind::Replication => "ERR_LOCK_REPLICATION",
            ErrorKind::Unsupported => "ERR_LOCK_UNSUPPORTED",
            ErrorKind::Config => "ERR_LOCK_CONFIG",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError {
    kind: ErrorKind,
    message: String,
}

impl EngineError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn closed() -> Self {
        Self::new(ErrorKind::Closed, "the Lock was closed")
    }

    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "the acquire was cancelled")
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A server's error reply, as the engine reports it: the one place that says what each code
/// means to a caller (credentials refused, or some other error of Redis's).
pub(crate) fn server_error(code: &str, detail: Option<&str>, target: &str) -> EngineError {
    let mut text = match detail {
        Some(detail) => format!("{code} {detail}"),
        None => code.to_owned(),
    };
    if text.chars().count() > 200 {
        text = text.chars().take(200).chain(['…']).collect();
    }
    match code {
        "NOAUTH" | "WRONGPASS" | "NOPERM" => EngineError::new(
            ErrorKind::Auth,
            format!("Redis at {target} refused the credentials: {text}"),
        ),
        _ => EngineError::new(
            ErrorKind::Redis,
            format!("Redis at {target} replied with an error: {text}"),
        ),
    }
}

/// The connection to `target` broke, or its peer spoke something that is not RESP.
pub(crate) fn connection_failed(target: &str, why: &str) -> EngineError {
    EngineError::new(
        ErrorKind::Connection,
        format!("connection to Redis at {target} failed: {why}"),
    )
}

/// A connection attempt to `target` failed.
pub(crate) fn cannot_connect(target: &str, why: &str) -> EngineError {
    EngineError::new(
        ErrorKind::Connection,
        format!("cannot connect to Redis at {target}: {why}"),
    )
}

/// No reply within the limit.
pub(crate) fn timed_out(target: &str, limit: Duration) -> EngineError {
    EngineError::new(
        ErrorKind::Timeout,
        format!(
            "Redis at {target} did not answer within {} ms",
            limit.as_millis()
        ),
    )
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EngineError {}

pub type EngineResult<T> = Result<T, EngineError>;

//! The lock engine of simple-distributed-lock 2.
//!
//! Leases on Redis with v1's data layout (`SET key token PX ttl NX`, compare-and-delete,
//! compare-and-expire), one self-healing connection per server, and one auto-extension
//! scheduler per `Locker`. Nothing here knows about Node.js; the binding crate wraps it.

mod backend;
mod cluster;
mod config;
mod connection;
mod error;
mod keys;
mod lazy;
mod leases;
mod locker;
mod ops;
mod quorum;
mod scripts;
mod sentinel;
mod token;
mod waiters;
pub mod wire;

pub use backend::{ReplicaAck, Topology};
pub use config::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, ServerAddress, ServerConfig, TlsOptions,
};
pub use error::{EngineError, EngineResult, ErrorKind};
pub use leases::{DEFAULT_DRIFT_FACTOR, LostCallback, LostLease, LostReason, safety_margin};
pub use locker::{
    AcquireOptions, Acquired, Locker, LockerOptions, ReleaseWatch, RetryPolicy, WaitPlan,
};
pub use quorum::Tally;
pub use sentinel::SentinelConfig;
pub use token::new_token;
/// Cancels a waiting `acquire` (the binding wires an `AbortSignal` to one).
pub use tokio_util::sync::CancellationToken;
pub use waiters::ReleaseListener;

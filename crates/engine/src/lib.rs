//! The lock engine of simple-distributed-lock 2.
//!
//! Leases on Redis with v1's data layout (`SET key token PX ttl NX`, compare-and-delete,
//! compare-and-expire). One sans-IO core (`core`, over `proto` and `policy`) holds the protocol
//! and every policy; transports drive it: the tokio one here (`net`), and the Node binding's
//! event-loop one. Nothing here knows about Node.js.

mod config;
pub mod core;
mod error;
mod keys;
mod leases;
mod locker;
pub mod net;
pub mod notice;
mod policy;
mod proto;
mod scripts;
mod sentinel;
mod subscriber;
mod token;

pub use config::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, ServerAddress, ServerConfig, TlsOptions,
};
pub use core::{
    AcquireSpec, Call, CallId, Core, Endpoint, Event, Grant, Outcome, ReplicaAck, Topology,
};
pub use error::{EngineError, EngineResult, ErrorKind};
pub use keys::fence_key;
pub use leases::{
    DEFAULT_DRIFT_FACTOR, ExtendedCallback, LostCallback, LostLease, LostReason, safety_margin,
};
pub use locker::{AcquireOptions, Acquired, DoneSink, Locker, LockerOptions, Transport, Waker};
pub use notice::{Notice, NoticeCallback, Vote, VoteAnswer};
pub use policy::tally::Tally;
pub use policy::wait::{RetryPolicy, WaitPlan};
pub use sentinel::SentinelConfig;
pub use token::new_token;
/// Cancels a waiting `acquire`.
pub use tokio_util::sync::CancellationToken;

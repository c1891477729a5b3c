//! The Redis protocol as the engine speaks it: bytes (`resp`), requests and what their replies
//! mean (`request`), and one connection's state without its socket (`conn`).

pub(crate) mod conn;
pub(crate) mod request;
pub(crate) mod resp;

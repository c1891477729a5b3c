//! The runtime's side of I/O: opening sockets (TCP, Unix, TLS, Sentinel discovery), TLS's data
//! path, and the tokio transport that drives a core.

pub(crate) mod driver;
pub mod io;
pub(crate) mod link;
pub mod open;
pub mod tls;

//! One socket's bytes, for any transport that owns a non-blocking socket: reading what it holds
//! (through TLS when the connection has a session) and writing what the core has for it. The
//! transport supplies the socket's `read` and `write`; the tokio driver and the event-loop lane
//! both use this.

use std::io::{ErrorKind, Result};

use crate::core::Core;
use crate::net::open::describe;
use crate::net::tls::TlsLayer;

pub struct SocketIo {
    tls: Option<TlsLayer>,
    /// TLS: bytes for the socket not written yet.
    outbox: Vec<u8>,
}

impl SocketIo {
    /// `tls`: the session the socket was opened with (its handshake done), if any.
    pub fn new(tls: Option<crate::net::open::TlsSession>) -> Self {
        Self {
            tls: tls.map(TlsLayer::new),
            outbox: Vec::new(),
        }
    }

    /// Reads what the socket holds now: plaintext for the core, and why the socket is done if
    /// it is (closed by the peer, an error, a broken TLS session).
    pub fn read(
        &mut self,
        mut read: impl FnMut(&mut [u8]) -> Result<usize>,
        buf: &mut [u8],
    ) -> (Vec<u8>, Option<String>) {
        let mut plain = Vec::new();
        loop {
            match read(buf) {
                Ok(0) => return (plain, Some("the connection closed".into())),
                Ok(n) => {
                    match &mut self.tls {
                        None => plain.extend_from_slice(&buf[..n]),
                        Some(tls) => {
                            if let Err(why) = tls.read_socket(&buf[..n], &mut plain) {
                                return (plain, Some(why));
                            }
                            // Alerts and key updates may want an answer.
                            tls.take_socket_bytes(&mut self.outbox);
                        }
                    }
                    if n < buf.len() {
                        // Most likely all there was: spare the read that would say so.
                        return (plain, None);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return (plain, None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return (plain, Some(describe(&e))),
            }
        }
    }

    /// Writes as much of what `core` has for connection `conn` as the socket takes now.
    /// `Ok(true)`: bytes are left (wait until the socket is writable); `Err`: the socket is done.
    pub fn write(
        &mut self,
        core: &mut Core,
        conn: usize,
        write: impl FnMut(&[u8]) -> Result<usize>,
    ) -> std::result::Result<bool, String> {
        self.write_from(&mut CoreOutput { core, conn }, write)
    }

    /// Like `write`, for bytes of the caller's own (`out` keeps what the socket did not take).
    pub fn write_bytes(
        &mut self,
        out: &mut Vec<u8>,
        write: impl FnMut(&[u8]) -> Result<usize>,
    ) -> std::result::Result<bool, String> {
        self.write_from(out, write)
    }

    fn write_from(
        &mut self,
        source: &mut impl Outgoing,
        mut write: impl FnMut(&[u8]) -> Result<usize>,
    ) -> std::result::Result<bool, String> {
        let Some(tls) = &mut self.tls else {
            // Plain: straight from the source's buffer.
            loop {
                let out = source.pending();
                if out.is_empty() {
                    return Ok(false);
                }
                match write(out) {
                    Ok(0) => return Err("the connection closed".into()),
                    Ok(n) => source.consumed(n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(describe(&e)),
                }
            }
        };
        loop {
            let plain = source.pending();
            let mut taken = 0;
            if !plain.is_empty() {
                taken = tls.write_plain(plain);
                source.consumed(taken);
            }
            tls.take_socket_bytes(&mut self.outbox);
            if taken == 0 && self.outbox.is_empty() {
                // Nothing moved (the session takes no more now): come back when writable.
                return Ok(!source.pending().is_empty());
            }
            while !self.outbox.is_empty() {
                match write(&self.outbox) {
                    Ok(0) => return Err("the connection closed".into()),
                    Ok(n) => {
                        self.outbox.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(describe(&e)),
                }
            }
            // The session takes a bounded amount of plaintext at a time: go on while it takes.
            if source.pending().is_empty() {
                return Ok(false);
            }
        }
    }
}

/// Bytes waiting to be written, and how the writer says how many it took.
trait Outgoing {
    fn pending(&self) -> &[u8];
    fn consumed(&mut self, n: usize);
}

struct CoreOutput<'a> {
    core: &'a mut Core,
    conn: usize,
}

impl Outgoing for CoreOutput<'_> {
    fn pending(&self) -> &[u8] {
        self.core.output(self.conn)
    }

    fn consumed(&mut self, n: usize) {
        self.core.written(self.conn, n);
    }
}

impl Outgoing for Vec<u8> {
    fn pending(&self) -> &[u8] {
        self
    }

    fn consumed(&mut self, n: usize) {
        self.drain(..n);
    }
}

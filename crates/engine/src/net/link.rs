//! A plain request/reply link on the runtime, on the engine's own sockets and TLS: for what is not
//! a lock call and has no ordering to keep — asking a sentinel for the master, and the pub/sub
//! subscriptions (releases heard, Sentinel's `+switch-master`). Same opening, TLS settings
//! (private CA, `NODE_EXTRA_CA_CERTS`, servername, client certificates) and reply limits as the
//! lock calls' connections; AUTH when the settings have a password. Every wait is bounded by the
//! caller (`tokio::time::timeout`).

use redis::Value;

use crate::config::ServerConfig;
use crate::error::{self, EngineError, EngineResult, ErrorKind};
use crate::net::io::SocketIo;
use crate::net::open::{self, Stream};
use crate::proto::resp::{Decoder, encode};

pub(crate) struct Link {
    stream: Stream,
    io: SocketIo,
    decoder: Decoder,
    out: Vec<u8>,
    target: String,
}

impl Link {
    /// Opens a socket to `config` (TLS as it says) and authenticates.
    pub(crate) async fn open(config: &ServerConfig) -> EngineResult<Self> {
        let opened = open::open_server(config).await?;
        let mut link = Self {
            stream: opened.stream,
            io: SocketIo::new(opened.tls),
            decoder: Decoder::default(),
            out: Vec::new(),
            target: config.target(),
        };
        if let Some(password) = &config.password {
            match &config.username {
                Some(user) => {
                    link.send(&[b"AUTH", user.as_bytes(), password.as_bytes()])
                        .await?
                }
                None => link.send(&[b"AUTH", password.as_bytes()]).await?,
            }
            match link.next().await? {
                Value::ServerError(err) => {
                    return Err(error::server_error(err.code(), err.details(), &link.target));
                }
                Value::Okay => {}
                _ => {
                    return Err(error::cannot_connect(
                        &link.target,
                        "the server answered AUTH with something that is not a Redis reply",
                    ));
                }
            }
        }
        Ok(link)
    }

    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// Sends one command (written in full before this returns).
    pub(crate) async fn send(&mut self, args: &[&[u8]]) -> EngineResult<()> {
        encode(&mut self.out, args);
        loop {
            let Link {
                stream, io, out, ..
            } = self;
            let written = io.write_bytes(out, |bytes| stream.try_write(bytes));
            match written {
                Ok(false) => return Ok(()),
                Ok(true) => self.writable().await?,
                Err(why) => return Err(error::connection_failed(&self.target, &why)),
            }
        }
    }

    /// The next reply or pushed message. Cancel-safe: bytes read stay in the decoder.
    pub(crate) async fn next(&mut self) -> EngineResult<Value> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.decoder.next_reply() {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(why) => {
                    return Err(error::connection_failed(
                        &self.target,
                        &format!("protocol error: {why}"),
                    ));
                }
            }
            self.readable().await?;
            let Link {
                stream,
                io,
                decoder,
                ..
            } = self;
            let (plain, done) = io.read(|into| stream.try_read(into), &mut buf);
            decoder.feed(&plain);
            if let Some(why) = done
                && plain.is_empty()
            {
                return Err(error::connection_failed(&self.target, &why));
            }
        }
    }

    async fn readable(&self) -> EngineResult<()> {
        self.stream
            .readable()
            .await
            .map_err(|e| error::connection_failed(&self.target, &open::describe(&e)))
    }

    async fn writable(&self) -> EngineResult<()> {
        self.stream
            .writable()
            .await
            .map_err(|e| error::connection_failed(&self.target, &open::describe(&e)))
    }
}

/// A pushed pub/sub message: (channel, payload), if `value` is one.
pub(crate) fn message(value: &Value) -> Option<(&[u8], &[u8])> {
    let Value::Array(parts) = value else {
        return None;
    };
    match parts.as_slice() {
        [
            Value::BulkString(kind),
            Value::BulkString(channel),
            Value::BulkString(payload),
        ] if kind == b"message" => Some((channel, payload)),
        _ => None,
    }
}

/// A reply that is not what a link asked for, as an error (its content never quoted).
pub(crate) fn unexpected(target: &str, what: &str) -> EngineError {
    EngineError::new(
        ErrorKind::Redis,
        format!("Redis at {target} gave an unexpected reply to {what}"),
    )
}

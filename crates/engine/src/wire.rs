//! The lock's commands as bytes, and a RESP reply reader, for a caller that drives its own
//! socket: the Node binding's event-loop lane, which talks to Redis from the JS thread without
//! crossing to the runtime and back. The commands are the same scripts the engine sends.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{ServerAddress, ServerConfig};
use crate::error::{EngineError, EngineResult, ErrorKind};
use crate::keys;
use crate::scripts;

/// A Redis reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Consumed bytes beyond which `ReplyReader::feed` moves the unread tail to the front.
const COMPACT_AFTER: usize = 16 * 1024;

/// Reads replies from bytes as they arrive.
#[derive(Default)]
pub struct ReplyReader {
    buf: Vec<u8>,
    start: usize,
}

impl ReplyReader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        // Replies already read are dropped before the buffer grows: on a busy pipelined
        // connection a partial reply is nearly always pending, so "empty" alone is not enough.
        if self.start > 0 && (self.start == self.buf.len() || self.start >= COMPACT_AFTER) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held: read replies not yet dropped plus any partial reply.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete reply, `None` if more bytes are needed, an error if the stream is not
    /// RESP (the connection must then be dropped).
    pub fn next_reply(&mut self) -> Result<Option<Reply>, String> {
        let mut pos = self.start;
        match parse(&self.buf, &mut pos)? {
            Some(reply) => {
                self.start = pos;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                Ok(Some(reply))
            }
            None => Ok(None),
        }
    }
}

fn line(buf: &[u8], pos: &mut usize) -> Option<String> {
    let rest = &buf[*pos..];
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    let text = String::from_utf8_lossy(&rest[..end]).into_owned();
    *pos += end + 2;
    Some(text)
}

fn parse(buf: &[u8], pos: &mut usize) -> Result<Option<Reply>, String> {
    let Some(&kind) = buf.get(*pos) else {
        return Ok(None);
    };
    let mut p = *pos + 1;
    let Some(head) = line(buf, &mut p) else {
        return Ok(None);
    };
    let number = || {
        head.parse::<i64>()
            .map_err(|_| format!("bad RESP length {head:?}"))
    };
    let reply = match kind {
        b'+' => Reply::Status(head),
        b'-' => Reply::Error(head),
        b':' => Reply::Integer(number()?),
        b'$' => {
            let len = number()?;
            if len < 0 {
                Reply::Bulk(None)
            } else {
                let len = len as usize;
                if buf.len() < p + len + 2 {
                    return Ok(None);
                }
                let data = buf[p..p + len].to_vec();
                p += len + 2;
                Reply::Bulk(Some(data))
            }
        }
        b'*' => {
            let len = number()?;
            if len < 0 {
                Reply::Array(None)
            } else {
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    match parse(buf, &mut p)? {
                        Some(item) => items.push(item),
                        None => return Ok(None),
                    }
                }
                Reply::Array(Some(items))
            }
        }
        other => return Err(format!("unexpected RESP type byte {other:#x}")),
    };
    *pos = p;
    Ok(Some(reply))
}

/// Appends a command (an array of bulk strings) to `out`.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// A lock command for the lane: its bytes, and for a script what to send instead if Redis does
/// not have it cached (NOSCRIPT, after a restart): EVAL with the source.
pub struct WireCommand {
    pub bytes: Vec<u8>,
    script: Option<(&'static str, Vec<Vec<u8>>)>,
}

impl WireCommand {
    fn script(source: &'static str, sha: &str, keys: &[&[u8]], args: &[&[u8]]) -> Self {
        let numkeys = keys.len().to_string();
        let mut all: Vec<&[u8]> = vec![b"EVALSHA", sha.as_bytes(), numkeys.as_bytes()];
        all.extend_from_slice(keys);
        all.extend_from_slice(args);
        let mut bytes = Vec::with_capacity(64 + all.iter().map(|a| a.len() + 16).sum::<usize>());
        encode(&mut bytes, &all);
        let rest = all[2..].iter().map(|a| a.to_vec()).collect();
        Self {
            bytes,
            script: Some((source, rest)),
        }
    }

    /// The same command as EVAL with the script's source, for a NOSCRIPT reply.
    pub fn eval_fallback(&self) -> Option<Vec<u8>> {
        let (source, rest) = self.script.as_ref()?;
        let mut all: Vec<&[u8]> = vec![b"EVAL", source.as_bytes()];
        all.extend(rest.iter().map(Vec::as_slice));
        let mut bytes = Vec::new();
        encode(&mut bytes, &all);
        Some(bytes)
    }
}

/// `SET key token PX ttl NX` (with the fencing counter when `fencing`).
pub fn acquire_command(key: &str, token: &str, ttl: Duration, fencing: bool) -> WireCommand {
    let ttl_ms = ttl.as_millis().to_string();
    if fencing {
        let fence_key = keys::fence_key(key);
        WireCommand::script(
            scripts::ACQUIRE_FENCED_SOURCE,
            scripts::ACQUIRE_FENCED.get_hash(),
            &[key.as_bytes(), fence_key.as_bytes()],
            &[token.as_bytes(), ttl_ms.as_bytes()],
        )
    } else {
        let mut bytes = Vec::new();
        encode(
            &mut bytes,
            &[
                b"SET",
                key.as_bytes(),
                token.as_bytes(),
                b"PX",
                ttl_ms.as_bytes(),
                b"NX",
            ],
        );
        WireCommand {
            bytes,
            script: None,
        }
    }
}

pub fn release_command(key: &str, token: &str) -> WireCommand {
    release_script(key, token, &keys::released_channel(key))
}

/// The release for a hand-over: a waiter's acquire follows on the same connection, in the same
/// write, so the release wakes nobody else (no publish); their turn comes at an open release.
/// Should the server have lost the script, the EVAL sent instead runs after the waiter's
/// attempt, which then found the lock still held: that EVAL is an open release, waking them.
pub fn release_command_handing_over(key: &str, token: &str) -> WireCommand {
    let mut quiet = release_script(key, token, "");
    quiet.script = release_command(key, token).script;
    quiet
}

fn release_script(key: &str, token: &str, channel: &str) -> WireCommand {
    WireCommand::script(
        scripts::RELEASE_SOURCE,
        scripts::RELEASE.get_hash(),
        &[key.as_bytes()],
        &[token.as_bytes(), channel.as_bytes()],
    )
}

pub fn extend_command(key: &str, token: &str, ttl: Duration) -> WireCommand {
    let ttl_ms = ttl.as_millis().to_string();
    WireCommand::script(
        scripts::EXTEND_SOURCE,
        scripts::EXTEND.get_hash(),
        &[key.as_bytes()],
        &[token.as_bytes(), ttl_ms.as_bytes()],
    )
}

pub fn exists_command(key: &str) -> WireCommand {
    let mut bytes = Vec::new();
    encode(&mut bytes, &[b"EXISTS", key.as_bytes()]);
    WireCommand {
        bytes,
        script: None,
    }
}

/// What an acquire's reply means: `Some(fence)` if acquired (`Some(None)` without fencing).
pub fn acquired(reply: &Reply) -> Result<Option<Option<i64>>, String> {
    match reply {
        Reply::Integer(0) | Reply::Bulk(None) => Ok(None),
        Reply::Integer(fence) => Ok(Some(Some(*fence))),
        Reply::Status(ok) if ok == "OK" => Ok(Some(None)),
        other => Err(format!("unexpected reply to an acquire: {other:?}")),
    }
}

/// What a release's, extend's or EXISTS's reply means.
/// The release script's reply: `None` if the caller did not own the lock, else how many
/// subscribers were told of the release.
pub fn released(reply: &Reply) -> Result<Option<i64>, String> {
    match reply {
        Reply::Integer(0) => Ok(None),
        Reply::Integer(n) if *n >= 1 => Ok(Some(n - 1)),
        other => Err(format!("unexpected reply: {other:?}")),
    }
}

pub fn is_one(reply: &Reply) -> Result<bool, String> {
    match reply {
        Reply::Integer(n) => Ok(*n == 1),
        other => Err(format!("unexpected reply: {other:?}")),
    }
}

/// A server error reply as an engine error (WRONGPASS and the like as auth errors).
pub fn reply_error(message: &str, target: &str) -> EngineError {
    let code = message.split(' ').next().unwrap_or("");
    let kind = match code {
        "NOAUTH" | "WRONGPASS" | "NOPERM" => ErrorKind::Auth,
        _ => ErrorKind::Redis,
    };
    let what = if kind == ErrorKind::Auth {
        "refused the credentials"
    } else {
        "replied with an error"
    };
    EngineError::new(kind, format!("Redis at {target} {what}: {message}"))
}

/// A connected, authenticated socket in blocking-free mode, for the lane.
pub enum RawStream {
    Tcp(std::net::TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

/// Opens a plain (non-TLS) connection to `config`, sends AUTH and SELECT, and hands the socket
/// over, non-blocking. Bounded by the connect timeout.
pub async fn open_stream(config: &ServerConfig) -> EngineResult<RawStream> {
    if config.tls.is_some() {
        return Err(EngineError::new(
            ErrorKind::Unsupported,
            "the event-loop lane does not do TLS",
        ));
    }
    let target = config.target();
    let limit = config.connect_timeout;
    let opened = tokio::time::timeout(limit, async {
        match &config.address {
            ServerAddress::Tcp { host, port } => {
                let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                handshake(&mut stream, config).await?;
                Ok(RawStream::Tcp(stream.into_std()?))
            }
            #[cfg(unix)]
            ServerAddress::Unix { path } => {
                let mut stream = tokio::net::UnixStream::connect(path).await?;
                handshake(&mut stream, config).await?;
                Ok(RawStream::Unix(stream.into_std()?))
            }
            #[cfg(not(unix))]
            ServerAddress::Unix { .. } => Err(HandshakeError::Io(std::io::Error::other(
                "unix sockets are not supported here",
            ))),
        }
    })
    .await;
    match opened {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(HandshakeError::Io(err))) => Err(EngineError::new(
            ErrorKind::Connection,
            format!("cannot connect to Redis at {target}: {err}"),
        )),
        Ok(Err(HandshakeError::Refused(message))) => Err(reply_error(&message, &target)),
        Err(_) => Err(EngineError::new(
            ErrorKind::Connection,
            format!(
                "cannot connect to Redis at {target}: no answer within {} ms",
                limit.as_millis()
            ),
        )),
    }
}

enum HandshakeError {
    Io(std::io::Error),
    Refused(String),
}

impl From<std::io::Error> for HandshakeError {
    fn from(err: std::io::Error) -> Self {
        HandshakeError::Io(err)
    }
}

async fn handshake<S>(stream: &mut S, config: &ServerConfig) -> Result<(), HandshakeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut out = Vec::new();
    let mut expected = 0;
    if let Some(password) = &config.password {
        match &config.username {
            Some(user) => encode(&mut out, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
            None => encode(&mut out, &[b"AUTH", password.as_bytes()]),
        }
        expected += 1;
    }
    if config.db != 0 {
        let db = config.db.to_string();
        encode(&mut out, &[b"SELECT", db.as_bytes()]);
        expected += 1;
    }
    if expected == 0 {
        return Ok(());
    }
    stream.write_all(&out).await?;
    let mut reader = ReplyReader::new();
    let mut chunk = [0u8; 512];
    let mut seen = 0;
    while seen < expected {
        match reader.next_reply() {
            Ok(Some(Reply::Error(message))) => return Err(HandshakeError::Refused(message)),
            Ok(Some(_)) => seen += 1,
            Ok(None) => {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(HandshakeError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                reader.feed(&chunk[..n]);
            }
            Err(bad) => return Err(HandshakeError::Io(std::io::Error::other(bad))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_replies_split_anywhere() {
        let bytes = b"+OK\r\n:17\r\n$-1\r\n$3\r\nabc\r\n-ERR no\r\n*2\r\n:1\r\n:0\r\n";
        for split in 0..bytes.len() {
            let mut reader = ReplyReader::new();
            reader.feed(&bytes[..split]);
            let mut replies = Vec::new();
            while let Some(r) = reader.next_reply().unwrap() {
                replies.push(r);
            }
            reader.feed(&bytes[split..]);
            while let Some(r) = reader.next_reply().unwrap() {
                replies.push(r);
            }
            assert_eq!(
                replies,
                vec![
                    Reply::Status("OK".into()),
                    Reply::Integer(17),
                    Reply::Bulk(None),
                    Reply::Bulk(Some(b"abc".to_vec())),
                    Reply::Error("ERR no".into()),
                    Reply::Array(Some(vec![Reply::Integer(1), Reply::Integer(0)])),
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_stream_that_never_drains_stays_bounded() {
        // Each chunk completes one reply and starts the next, so the reader is never empty.
        let mut reader = ReplyReader::new();
        reader.feed(b":0\r\n:1");
        let mut seen = 0;
        for i in 0..100_000u32 {
            reader.feed(format!("{i}\r\n:1").as_bytes());
            while let Some(reply) = reader.next_reply().unwrap() {
                assert!(matches!(reply, Reply::Integer(_)));
                seen += 1;
            }
            assert!(
                reader.buffered() < 2 * COMPACT_AFTER,
                "{}",
                reader.buffered()
            );
        }
        assert_eq!(seen, 100_001);
    }

    #[test]
    fn eval_fallback_carries_the_same_keys_and_args() {
        let cmd = release_command("lock:a", "tok");
        let text = String::from_utf8(cmd.bytes.clone()).unwrap();
        assert!(text.starts_with("*6\r\n$7\r\nEVALSHA\r\n$40\r\n"), "{text}");
        let eval = String::from_utf8(cmd.eval_fallback().unwrap()).unwrap();
        assert!(eval.starts_with("*6\r\n$4\r\nEVAL\r\n"), "{eval}");
        assert!(
            eval.ends_with(
                "$1\r\n1\r\n$6\r\nlock:a\r\n$3\r\ntok\r\n$19\r\nsdl:released:lock:a\r\n"
            ),
            "{eval}"
        );
        assert!(exists_command("k").eval_fallback().is_none());
    }

    #[test]
    fn a_hand_over_release_names_no_channel() {
        let cmd = release_command_handing_over("lock:a", "tok");
        let text = String::from_utf8(cmd.bytes.clone()).unwrap();
        assert!(
            text.ends_with("$6\r\nlock:a\r\n$3\r\ntok\r\n$0\r\n\r\n"),
            "{text}"
        );
        let eval = String::from_utf8(cmd.eval_fallback().unwrap()).unwrap();
        assert!(eval.ends_with("$19\r\nsdl:released:lock:a\r\n"), "{eval}");
    }
}

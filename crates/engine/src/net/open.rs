//! Opening a connection's socket, on the runtime: TCP or a Unix socket, the TLS handshake, and
//! behind Sentinel, asking the sentinels for the master first. What Redis is told (AUTH,
//! SELECT, ROLE) is the core's business, in band.

use crate::config::{ServerAddress, ServerConfig};
use crate::core::Endpoint;
use crate::error::{self, EngineError, EngineResult};
use crate::net::tls;

/// A connected socket.
pub enum Stream {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

/// An established TLS session (rustls's sans-IO client).
pub type TlsSession = rustls::ClientConnection;

/// A socket ready for Redis: connected, and for TLS, with its session established.
pub struct Opened {
    pub stream: Stream,
    pub tls: Option<TlsSession>,
}

impl Stream {
    pub(crate) fn try_read(&self, into: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(into),
            #[cfg(unix)]
            Stream::Unix(s) => s.try_read(into),
        }
    }

    pub(crate) fn try_write(&self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(bytes),
            #[cfg(unix)]
            Stream::Unix(s) => s.try_write(bytes),
        }
    }

    pub(crate) async fn readable(&self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            #[cfg(unix)]
            Stream::Unix(s) => s.readable().await,
        }
    }

    pub(crate) async fn writable(&self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.writable().await,
            #[cfg(unix)]
            Stream::Unix(s) => s.writable().await,
        }
    }

    pub(crate) fn poll_read_ready(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            #[cfg(unix)]
            Stream::Unix(s) => s.poll_read_ready(cx),
        }
    }

    pub(crate) fn poll_write_ready(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_write_ready(cx),
            #[cfg(unix)]
            Stream::Unix(s) => s.poll_write_ready(cx),
        }
    }

    /// The socket as a std one in non-blocking mode, for a transport of its own (the event loop).
    pub fn into_std(self) -> std::io::Result<StdStream> {
        Ok(match self {
            Stream::Tcp(s) => StdStream::Tcp(s.into_std()?),
            #[cfg(unix)]
            Stream::Unix(s) => StdStream::Unix(s.into_std()?),
        })
    }
}

/// A connected socket in std's types (non-blocking).
pub enum StdStream {
    Tcp(std::net::TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

impl StdStream {
    pub fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Read;
        match self {
            StdStream::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            StdStream::Unix(s) => s.read(buf),
        }
    }

    pub fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::io::Write;
        match self {
            StdStream::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            StdStream::Unix(s) => s.write(buf),
        }
    }

    /// The socket's pending error (`SO_ERROR`), if any: what a poll that failed was about.
    pub fn take_error(&self) -> Option<std::io::Error> {
        match self {
            StdStream::Tcp(s) => s.take_error().ok().flatten(),
            #[cfg(unix)]
            StdStream::Unix(s) => s.take_error().ok().flatten(),
        }
    }

    pub fn set_nonblocking(&self) -> std::io::Result<()> {
        match self {
            StdStream::Tcp(s) => s.set_nonblocking(true),
            #[cfg(unix)]
            StdStream::Unix(s) => s.set_nonblocking(true),
        }
    }

    #[cfg(unix)]
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            StdStream::Tcp(s) => s.as_raw_fd(),
            StdStream::Unix(s) => s.as_raw_fd(),
        }
    }
}

/// Opens a socket to the endpoint, bounded by its connect timeout (plus, behind Sentinel, the
/// sentinels' own).
pub async fn open(endpoint: &Endpoint) -> EngineResult<Opened> {
    match endpoint {
        Endpoint::Server(config) => open_server(config).await,
        Endpoint::Sentinel(sentinel) => {
            let master = sentinel.locate_master().await?;
            open_server(&master).await.map_err(|err| {
                EngineError::new(
                    err.kind(),
                    format!("{} (the master named by the sentinels)", err.message()),
                )
            })
        }
    }
}

pub(crate) async fn open_server(config: &ServerConfig) -> EngineResult<Opened> {
    let target = config.target();
    let limit = config.connect_timeout;
    match tokio::time::timeout(limit, connect(config, &target)).await {
        Ok(result) => result,
        Err(_) => Err(error::cannot_connect(
            &target,
            &format!("no answer within {} ms", limit.as_millis()),
        )),
    }
}

async fn connect(config: &ServerConfig, target: &str) -> EngineResult<Opened> {
    let io_error = |err: std::io::Error| error::cannot_connect(target, &describe(&err));
    match &config.address {
        ServerAddress::Tcp { host, port } => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(io_error)?;
            stream.set_nodelay(true).map_err(io_error)?;
            let tls = match &config.tls {
                None => None,
                Some(options) => {
                    let mut session = tls::session(options, host, target)?;
                    tls::handshake(&stream, &mut session)
                        .await
                        .map_err(|why| error::cannot_connect(target, &why))?;
                    Some(session)
                }
            };
            Ok(Opened {
                stream: Stream::Tcp(stream),
                tls,
            })
        }
        #[cfg(unix)]
        ServerAddress::Unix { path } => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(io_error)?;
            Ok(Opened {
                stream: Stream::Unix(stream),
                tls: None,
            })
        }
        #[cfg(not(unix))]
        ServerAddress::Unix { .. } => Err(error::cannot_connect(
            target,
            "unix sockets are not supported on this platform",
        )),
    }
}

/// An OS error in a few words, without its number.
pub fn describe(err: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match err.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset by peer".into(),
        K::ConnectionAborted => "connection aborted".into(),
        K::NotFound => "no such socket".into(),
        K::PermissionDenied => "permission denied".into(),
        K::TimedOut => "timed out".into(),
        K::UnexpectedEof => "the connection closed".into(),
        _ => {
            let text = err.to_string();
            match text.find(" (os error") {
                Some(at) => text[..at].to_owned(),
                None => text,
            }
        }
    }
}

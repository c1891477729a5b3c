//! Real `redis-server` processes on free ports, stopped when dropped.

#![allow(dead_code)]

pub mod topology;

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sdl_engine::{AcquireOptions, RetryPolicy, ServerConfig};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
}

/// A port nothing listens on, never the same twice in one test binary: its tests run in
/// parallel, and a port handed to one test's server must not go to another test's before that
/// server has bound it (two clusters once shared a node that way).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. `--requirepass x`).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed to run the engine tests");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn config(&self) -> ServerConfig {
        ServerConfig::tcp("127.0.0.1", self.port)
    }

    /// The server's process id (to stop and continue it).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("the server is running")
    }

    /// Kills the server (SIGKILL): its data is gone, like a crash without persistence.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A plain redis-crate connection for checking state behind the engine's back.
    pub async fn inspect(&self) -> redis::aio::MultiplexedConnection {
        let password = self
            .extra_args
            .windows(2)
            .find(|w| w[0] == "--requirepass")
            .map(|w| w[1].clone());
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        };
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One acquire attempt with this ttl, nothing else (v1's defaults).
pub fn once(ttl_ms: u64) -> AcquireOptions {
    AcquireOptions {
        ttl: Duration::from_millis(ttl_ms),
        retry: RetryPolicy::ONCE,
        auto_extend: false,
        watch: false,
        replicas: None,
        max_hold: None,
    }
}

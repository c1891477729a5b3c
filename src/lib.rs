//! Node.js binding of the lock engine. Thin on purpose: it converts arguments, guards against
//! values the facade should never send, and turns engine errors into JS errors whose message
//! starts with a stable code (`ERR_LOCK_...: `) that the facade maps to an error class.
//!
//! Every export either cannot panic or is marked `catch_unwind`; async exports reject on panic
//! (napi-rs contains panics in the futures it drives).

mod errors;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use sdl_engine::{AcquireOptions, Locker, RetryPolicy};

use errors::{invalid_arg, to_js_error};
pub use settings::{ConnectionSettings, TlsSettings};

/// The engine's lock operations on one Redis server. The JS `Lock` class wraps this.
#[napi]
pub struct NativeLocker {
    inner: Arc<Locker>,
}

#[napi]
impl NativeLocker {
    /// Creates the locker; connects lazily on the first operation.
    #[napi(constructor, catch_unwind)]
    pub fn new(settings: ConnectionSettings) -> Result<Self> {
        let config = settings.into_config()?;
        let locker = Locker::new(config, None).map_err(to_js_error)?;
        Ok(Self {
            inner: Arc::new(locker),
        })
    }

    /// `SET key token PX ttl NX`, retried as asked. Resolves to the token, or `null`.
    ///
    /// `retryCount` may be `Infinity`; `retryDelayMs` may be fractional.
    #[napi]
    pub async fn acquire(
        &self,
        key: String,
        ttl_ms: u32,
        retry_count: f64,
        retry_delay_ms: f64,
        auto_extend: bool,
    ) -> Result<Option<String>> {
        let options = AcquireOptions {
            ttl: ttl(ttl_ms)?,
            retry: RetryPolicy {
                retry_count: retry_count_of(retry_count)?,
                retry_delay: delay_of(retry_delay_ms)?,
            },
            auto_extend,
        };
        self.inner.acquire(&key, options).await.map_err(to_js_error)
    }

    /// Deletes the lock if `token` owns it. Resolves to whether it did.
    #[napi]
    pub async fn release(&self, key: String, token: String) -> Result<bool> {
        self.inner.release(&key, &token).await.map_err(to_js_error)
    }

    /// Sets the lock's TTL if `token` owns it. Resolves to whether it did.
    #[napi]
    pub async fn extend(&self, key: String, token: String, ttl_ms: u32) -> Result<bool> {
        let ttl = ttl(ttl_ms)?;
        self.inner
            .extend(&key, &token, ttl)
            .await
            .map_err(to_js_error)
    }

    /// Whether anybody holds the lock at `key`.
    #[napi]
    pub async fn is_locked(&self, key: String) -> Result<bool> {
        self.inner.is_locked(&key).await.map_err(to_js_error)
    }

    /// How many locks are being auto-extended now.
    #[napi(getter, catch_unwind)]
    pub fn auto_extended(&self) -> u32 {
        u32::try_from(self.inner.auto_extended()).unwrap_or(u32::MAX)
    }

    /// `host:port` or socket path of the server (no credentials).
    #[napi(getter, catch_unwind)]
    pub fn target(&self) -> String {
        self.inner.target().to_owned()
    }

    /// Stops auto-extension and pending retries, and drops the connection. Idempotent.
    #[napi(catch_unwind)]
    pub fn close(&self) {
        self.inner.close();
    }
}

fn ttl(ttl_ms: u32) -> Result<Duration> {
    if ttl_ms == 0 || ttl_ms > i32::MAX as u32 {
        return Err(invalid_arg(
            "ttl",
            "must be a positive integer of ms up to 2147483647",
        ));
    }
    Ok(Duration::from_millis(u64::from(ttl_ms)))
}

fn retry_count_of(count: f64) -> Result<Option<u64>> {
    if count == f64::INFINITY {
        Ok(None)
    } else if count.is_finite() && count >= 0.0 && count.fract() == 0.0 {
        Ok(Some(count as u64))
    } else {
        Err(invalid_arg(
            "retryCount",
            "must be a non-negative integer or Infinity",
        ))
    }
}

fn delay_of(ms: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(ms / 1000.0)
        .map_err(|_| invalid_arg("retryDelay", "must be a non-negative finite number of ms"))
}

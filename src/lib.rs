//! Node.js binding of the lock engine. Thin on purpose: it converts arguments, guards against
//! values the facade should never send, wires `AbortSignal`s to cancellation, forwards lost
//! leases to JS, and turns engine errors into JS errors whose message starts with a stable code
//! (`ERR_LOCK_...: `) that the facade maps to an error class.
//!
//! Every sync export is marked `catch_unwind`; async work rejects on panic (napi-rs contains
//! panics in the futures it drives).

mod completions;
mod errors;
mod lane;
mod settings;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use sdl_engine::{
    AcquireOptions, Acquired, CancellationToken, Locker, LockerOptions, LostLease, LostReason,
    ReplicaAck, RetryPolicy, WaitPlan,
};

use completions::{Completions, Event, Grant, Outcome};
use errors::{failed, invalid_arg, to_js_error};
use lane::{Lane, LaneCall, WaitRequest};
pub use settings::{
    ConnectionSettings, LockerSettings, TlsSettings, TopologySettings, WaitSettings,
};

/// (key, token, reason code, message, auto-extended) of a lost lease, for the facade.
type LostArgs = (String, String, String, String, bool);
/// Weak: a pending notification never keeps the process alive.
type LostNotifier = ThreadsafeFunction<LostArgs, (), LostArgs, Status, false, true>;

/// The engine's lock operations on one Redis server. The JS `Lock` class wraps this.
#[napi]
pub struct NativeLocker {
    inner: Arc<Locker>,
    /// Waiting acquires the facade may cancel, by the id it chose.
    cancels: Arc<Mutex<HashMap<u32, CancellationToken>>>,
    /// The hot calls on one plain server, done on the JS thread (see `lane`). Declared before
    /// `completions`, whose error classes it uses, so it is dropped first.
    lane: Lane,
    completions: Completions,
}

#[napi]
impl NativeLocker {
    /// Creates the locker; connects lazily on the first operation. `onLost` receives
    /// `[key, token, reason, message, autoExtended]` once for each tracked lease that is lost.
    #[napi(
        constructor,
        catch_unwind,
        ts_args_type = "topology: TopologySettings, options: LockerSettings, errorClasses: Record<string, new (message: string) => Error>, onLost: (lost: [key: string, token: string, reason: 'not-owner' | 'unreachable' | 'expired', message: string, autoExtended: boolean]) => void"
    )]
    pub fn new(
        env: &Env,
        topology: TopologySettings,
        options: LockerSettings,
        error_classes: Object,
        on_lost: Function<'_, LostArgs, ()>,
    ) -> Result<Self> {
        let classes = error_classes.raw();
        let completions = Completions::new(env, error_classes)?;
        let topology = topology.into_topology()?;
        let drift_factor = options.drift_factor()?;
        let notifier: LostNotifier = on_lost
            .build_threadsafe_function()
            .weak::<true>()
            .callee_handled::<false>()
            .build()?;
        let on_lost = Arc::new(move |lease: LostLease| {
            // Fails only while Node shuts down, when nobody is left to tell.
            let _ = notifier.call(lost_args(lease), ThreadsafeFunctionCallMode::NonBlocking);
        });
        let poster = completions.poster();
        let on_released = Arc::new(move |key: &str| poster.post(Event::Released(key.to_owned())));
        let locker = Locker::new(
            topology,
            LockerOptions {
                fencing: options.fencing.unwrap_or(true),
                on_lost: Some(on_lost),
                on_released: Some(on_released),
                drift_factor,
            },
        )
        .map_err(to_js_error)?;
        let inner = Arc::new(locker);
        let lane = Lane::new(env, inner.clone(), classes);
        let heard = lane.release_listener();
        completions.on_event(Box::new(move |event| match event {
            Event::Released(key) => heard(&key),
        }));
        Ok(Self {
            lane,
            inner,
            cancels: Arc::default(),
            completions,
        })
    }

    /// Takes the lock. Resolves to the token, or `null`. `wait` is absent for a single attempt;
    /// `cancelId` 0 means not cancellable, else `cancel(cancelId)` stops the wait.
    #[napi(catch_unwind, ts_return_type = "Promise<string | null>")]
    pub fn acquire<'env>(
        &self,
        env: &'env Env,
        key: String,
        ttl_ms: u32,
        auto_extend: bool,
        wait: Option<WaitSettings>,
        cancel_id: u32,
    ) -> Result<PromiseRaw<'env, Option<String>>> {
        self.take(env, key, ttl_ms, auto_extend, wait, cancel_id, false)
    }

    /// Like `acquire`, and watches the lease so its loss is reported; resolves to a grant.
    #[napi(
        catch_unwind,
        ts_return_type = "Promise<{ token: string, fence: number | null, validForMs: number } | null>"
    )]
    pub fn acquire_lease<'env>(
        &self,
        env: &'env Env,
        key: String,
        ttl_ms: u32,
        auto_extend: bool,
        wait: Option<WaitSettings>,
        cancel_id: u32,
    ) -> Result<PromiseRaw<'env, Option<String>>> {
        self.take(env, key, ttl_ms, auto_extend, wait, cancel_id, true)
    }

    /// Stops the waiting acquire registered under `cancelId`, if it still waits.
    #[napi(catch_unwind)]
    pub fn cancel(&self, cancel_id: u32) {
        if self.lane.cancel(cancel_id) {
            return;
        }
        if let Some(token) = lock(&self.cancels).get(&cancel_id) {
            token.cancel();
        }
    }

    /// Deletes the lock if `token` owns it. Resolves to whether it did. Tracking stops at once,
    /// before this returns, so no loss is reported for a lease being released.
    #[napi(catch_unwind, ts_return_type = "Promise<boolean>")]
    pub fn release<'env>(
        &self,
        env: &'env Env,
        key: String,
        token: String,
    ) -> Result<PromiseRaw<'env, bool>> {
        self.inner.stop_tracking(&key, &token);
        if let Some(raw) = self.lane.call(
            env,
            LaneCall::Release {
                key: &key,
                token: &token,
            },
        ) {
            return raw_promise(env, raw);
        }
        let inner = self.inner.clone();
        self.promise(env, async move { flag(inner.release(&key, &token).await) })
    }

    /// Sets the lock's TTL if `token` owns it. Resolves to whether it did.
    #[napi(catch_unwind, ts_return_type = "Promise<boolean>")]
    pub fn extend<'env>(
        &self,
        env: &'env Env,
        key: String,
        token: String,
        ttl_ms: u32,
    ) -> Result<PromiseRaw<'env, bool>> {
        let ttl = ttl(ttl_ms)?;
        let call = LaneCall::Extend {
            key: &key,
            token: &token,
            ttl,
        };
        if let Some(raw) = self.lane.call(env, call) {
            return raw_promise(env, raw);
        }
        let inner = self.inner.clone();
        self.promise(
            env,
            async move { flag(inner.extend(&key, &token, ttl).await) },
        )
    }

    /// Whether anybody holds the lock at `key`.
    #[napi(catch_unwind, ts_return_type = "Promise<boolean>")]
    pub fn is_locked<'env>(&self, env: &'env Env, key: String) -> Result<PromiseRaw<'env, bool>> {
        if let Some(raw) = self.lane.call(env, LaneCall::Exists { key: &key }) {
            return raw_promise(env, raw);
        }
        let inner = self.inner.clone();
        self.promise(env, async move { flag(inner.is_locked(&key).await) })
    }

    /// Ms until the tracked lease's deadline (0 once passed); `null` if it is not tracked.
    #[napi(catch_unwind)]
    pub fn time_left_ms(&self, token: String) -> Option<f64> {
        self.inner
            .time_left(&token)
            .map(|left| left.as_secs_f64() * 1000.0)
    }

    /// `[tracked leases, of which auto-extended]`.
    #[napi(getter, catch_unwind)]
    pub fn tracked(&self) -> Vec<u32> {
        let (tracked, extended) = self.inner.tracked();
        [tracked, extended]
            .into_iter()
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            .collect()
    }

    /// `host:port` or socket path of the server (no credentials).
    #[napi(getter, catch_unwind)]
    pub fn target(&self) -> String {
        self.inner.target().to_owned()
    }

    /// Stops auto-extension, tracking and pending waits, and drops the connections. Idempotent.
    #[napi(catch_unwind)]
    pub fn close(&self, env: &Env) {
        self.lane.close(env);
        self.inner.close();
    }
}

impl NativeLocker {
    /// `acquire` and `acquireLease`: on the lane when it can take the call, else on the runtime.
    #[allow(clippy::too_many_arguments)]
    fn take<'env, T>(
        &self,
        env: &'env Env,
        key: String,
        ttl_ms: u32,
        auto_extend: bool,
        wait: Option<WaitSettings>,
        cancel_id: u32,
        lease: bool,
    ) -> Result<PromiseRaw<'env, T>> {
        if wait.is_none()
            && cancel_id == 0
            && let Some(promise) = self.acquire_on_lane(env, &key, ttl_ms, auto_extend, lease)
        {
            return promise;
        }
        let options = acquire_options(ttl_ms, auto_extend, lease, wait)?;
        if let Some(promise) = self.wait_on_lane(env, &key, &options, cancel_id) {
            return promise;
        }
        let acquiring = self.acquiring(key, options, cancel_id);
        self.promise(env, async move {
            match acquiring.await {
                Ok(acquired) => Outcome::acquired(
                    lease,
                    acquired.map(|acquired| Grant {
                        valid_for_ms: acquired.time_left().as_secs_f64() * 1000.0,
                        token: acquired.token,
                        fence: acquired.fence,
                    }),
                ),
                Err(err) => failed(err),
            }
        })
    }

    /// A single acquire attempt through the lane, if it is open.
    fn acquire_on_lane<'env, T>(
        &self,
        env: &'env Env,
        key: &str,
        ttl_ms: u32,
        auto_extend: bool,
        lease: bool,
    ) -> Option<Result<PromiseRaw<'env, T>>> {
        let ttl = match ttl(ttl_ms) {
            Ok(ttl) => ttl,
            Err(err) => return Some(Err(err)),
        };
        let call = LaneCall::Acquire {
            key,
            ttl,
            auto_extend,
            lease,
        };
        self.lane.call(env, call).map(|raw| raw_promise(env, raw))
    }

    /// A waiting acquire on the lane, if it can take it (no replica acknowledgement).
    fn wait_on_lane<'env, T>(
        &self,
        env: &'env Env,
        key: &str,
        options: &AcquireOptions,
        cancel_id: u32,
    ) -> Option<Result<PromiseRaw<'env, T>>> {
        if options.replicas.is_some() {
            return None;
        }
        let request = WaitRequest {
            key: key.to_owned(),
            ttl: options.ttl,
            auto_extend: options.auto_extend,
            lease: options.watch,
            plan: WaitPlan::new(options.retry, tokio::time::Instant::now()),
            cancel_id,
        };
        self.lane
            .wait(env, request)
            .map(|raw| raw_promise(env, raw))
    }

    /// Runs `work` on the runtime; its outcome settles the returned promise.
    fn promise<'env, T>(
        &self,
        env: &'env Env,
        work: impl std::future::Future<Output = Outcome> + Send + 'static,
    ) -> Result<PromiseRaw<'env, T>> {
        raw_promise(env, self.completions.run(env, work))
    }

    /// The acquire future, with its cancellation registered now (before JS can ask for it).
    fn acquiring(
        &self,
        key: String,
        options: AcquireOptions,
        cancel_id: u32,
    ) -> impl std::future::Future<Output = sdl_engine::EngineResult<Option<Acquired>>> + Send + 'static
    {
        let inner = self.inner.clone();
        let registration = (cancel_id != 0).then(|| {
            let token = CancellationToken::new();
            lock(&self.cancels).insert(cancel_id, token.clone());
            (self.cancels.clone(), token)
        });
        async move {
            let result = inner
                .acquire(&key, options, registration.as_ref().map(|(_, token)| token))
                .await;
            if let Some((cancels, _)) = registration {
                lock(&cancels).remove(&cancel_id);
            }
            result
        }
    }
}

fn raw_promise<'env, T>(
    env: &'env Env,
    raw: Result<napi::sys::napi_value>,
) -> Result<PromiseRaw<'env, T>> {
    unsafe { PromiseRaw::from_napi_value(env.raw(), raw?) }
}

fn flag(result: sdl_engine::EngineResult<bool>) -> Outcome {
    match result {
        Ok(value) => Outcome::Flag(value),
        Err(err) => failed(err),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lost_args(lease: LostLease) -> LostArgs {
    let (code, message) = match lease.reason {
        LostReason::NotOwner => (
            "not-owner",
            "another owner holds it, or it expired".to_owned(),
        ),
        LostReason::Expired => ("expired", "its ttl ran out".to_owned()),
        LostReason::Unreachable(err) => (
            "unreachable",
            format!(
                "no extend succeeded before its ttl ran out ({}: {})",
                err.code(),
                err.message()
            ),
        ),
    };
    (
        lease.key,
        lease.token,
        code.to_owned(),
        message,
        lease.auto_extended,
    )
}

fn acquire_options(
    ttl_ms: u32,
    auto_extend: bool,
    watch: bool,
    wait: Option<WaitSettings>,
) -> Result<AcquireOptions> {
    let (retry, replicas) = match wait {
        None => (RetryPolicy::ONCE, None),
        Some(wait) => (
            RetryPolicy {
                retry_count: retry_count_of(wait.retry_count)?,
                retry_delay: ms_of("retryDelay", wait.retry_delay_ms)?,
                retry_jitter: ms_of("retryJitter", wait.retry_jitter_ms)?,
                wait_timeout: wait
                    .wait_timeout_ms
                    .map(|ms| ms_of("waitTimeout", ms))
                    .transpose()?,
            },
            match wait.replicas {
                None | Some(0) => None,
                Some(count) => Some(ReplicaAck {
                    count,
                    timeout: Duration::from_millis(u64::from(
                        wait.replicas_timeout_ms.unwrap_or(1000),
                    )),
                }),
            },
        ),
    };
    Ok(AcquireOptions {
        ttl: ttl(ttl_ms)?,
        retry,
        auto_extend,
        watch,
        replicas,
    })
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

fn ms_of(name: &str, ms: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(ms / 1000.0)
        .map_err(|_| invalid_arg(name, "must be a non-negative finite number of ms"))
}

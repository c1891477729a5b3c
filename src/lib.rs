//! Node.js binding of the lock engine: argument conversion, promises and their settlement, and
//! the event-loop transport (`lane`). It holds no protocol and no policy: the engine's core
//! does (see `crates/engine`).
//!
//! Every sync export is marked `catch_unwind`; every callback from C (libuv, the completion
//! channel, Node's cleanup hooks) catches panics itself, since one cannot unwind into C.

#![deny(clippy::undocumented_unsafe_blocks)]

mod errors;
mod js;
mod lane;
mod metrics;
mod notices;
mod settings;
mod settle;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use sdl_engine::{
    AcquireSpec, Call, CallId, Core, Locker, LockerOptions, LostLease, LostReason, ReplicaAck,
    RetryPolicy, Transport,
};

use errors::{invalid_arg, to_js_error};
use js::JsEnv;
use lane::Lane;
use metrics::Counted;
pub use metrics::{DurationSummary, NativeMetrics};
pub use notices::{EngineNotice, EngineVote};
pub use settings::{
    ConnectionSettings, LockerSettings, TlsSettings, TopologySettings, WaitSettings,
};
use settle::{Clock, Expect, LaneEvent, Settler};

/// (key, token, reason code, message, auto-extended) of a lost lease, for the facade.
type LostArgs = (String, String, String, String, bool);
/// Weak: a pending notification never keeps the process alive.
type LostNotifier = ThreadsafeFunction<LostArgs, (), LostArgs, Status, false, true>;
/// (token, the extend's send time, the new deadline), on the JS clock, of the watched leases an
/// auto-extension moved.
type ExtendedArgs = Vec<(String, f64, f64)>;
type ExtendedNotifier = ThreadsafeFunction<ExtendedArgs, (), ExtendedArgs, Status, false, true>;
type NoticeNotifier = ThreadsafeFunction<EngineNotice, (), EngineNotice, Status, false, true>;

/// The lock operations of one Lock. The JS `Lock` class wraps this.
#[napi]
pub struct NativeLocker {
    locker: Arc<Locker>,
    settler: Rc<Settler>,
    /// The event-loop transport, when the deployment can use it (see `lane::usable`).
    lane: Option<Rc<Lane>>,
    /// Waiting acquires the facade may cancel: its id -> the call's.
    cancels: RefCell<HashMap<u32, CallId>>,
}

#[napi]
impl NativeLocker {
    /// Creates the locker; connects lazily on the first operation. `onLost` receives
    /// `[key, token, reason, message, autoExtended]` once for each tracked lease that is lost;
    /// `onExtended` receives `[token, sentAt, deadline][]` for the watched leases (`acquireLease`)
    /// that an auto-extension moved, on the clock of `options.clockOriginMs`; `onNotice`
    /// receives what an operator may want to know (connections, redirects, votes, ...).
    #[napi(
        constructor,
        catch_unwind,
        ts_args_type = "topology: TopologySettings, options: LockerSettings, errorClasses: Record<string, new (message: string) => Error>, onLost: (lost: [key: string, token: string, reason: 'not-owner' | 'unreachable' | 'expired' | 'max-hold-time', message: string, autoExtended: boolean]) => void, onExtended: (extended: Array<[token: string, sentAt: number, deadline: number]>) => void, onNotice: (notice: EngineNotice) => void"
    )]
    pub fn new(
        env: &Env,
        topology: TopologySettings,
        options: LockerSettings,
        error_classes: Object,
        on_lost: Function<'_, LostArgs, ()>,
        on_extended: Function<'_, ExtendedArgs, ()>,
        on_notice: Function<'_, EngineNotice, ()>,
    ) -> Result<Self> {
        // SAFETY: a constructor call from JS: the env is live and this is its JS thread.
        let js = unsafe { JsEnv::new(env.raw()) };
        let clock = Clock::new(options.clock_origin_ms.unwrap_or(0.0));
        let settler = Settler::new(js, error_classes.raw(), clock)?;
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
        let extended: ExtendedNotifier = on_extended
            .build_threadsafe_function()
            .weak::<true>()
            .callee_handled::<false>()
            .build()?;
        let on_extended = Arc::new(move |moved: Vec<(String, Instant, Instant)>| {
            let moved = moved
                .into_iter()
                .map(|(token, sent_at, deadline)| {
                    (token, clock.js_ms(sent_at), clock.js_ms(deadline))
                })
                .collect();
            // As above.
            let _ = extended.call(moved, ThreadsafeFunctionCallMode::NonBlocking);
        });
        let noticed: NoticeNotifier = on_notice
            .build_threadsafe_function()
            .weak::<true>()
            .callee_handled::<false>()
            .build()?;
        let on_notice = Arc::new(move |notice, background| {
            // As above.
            let _ = noticed.call(
                EngineNotice::from_engine(notice, background),
                ThreadsafeFunctionCallMode::NonBlocking,
            );
        });
        let on_lane = lane::usable();
        let poster = settler.poster();
        let transport = if on_lane {
            Transport::EventLoop(Arc::new(move || poster.post_lane(LaneEvent::Wake)))
        } else {
            Transport::RuntimeWithSink(Arc::new(move |done| poster.post_done(done)))
        };
        let runtime =
            napi::bindgen_prelude::within_runtime_if_available(tokio::runtime::Handle::current);
        let locker = Locker::new(
            topology,
            LockerOptions {
                fencing: options.fencing.unwrap_or(true),
                key_prefix: options.key_prefix.clone().unwrap_or_default(),
                on_lost: Some(on_lost),
                on_extended: Some(on_extended),
                on_notice: Some(on_notice),
                semaphore: match options.permits {
                    Some(0) => return Err(invalid_arg("permits", "must be a positive integer")),
                    permits => permits,
                },
                read_write: options.read_write.unwrap_or(false),
                drift_factor,
                runtime: Some(runtime),
                transport,
            },
        )
        .map_err(to_js_error)?;
        let locker = Arc::new(locker);
        let lane = if on_lane {
            let lane = Lane::new(js, locker.clone(), settler.clone())?;
            let weak = Rc::downgrade(&lane);
            settler.on_lane_event(Box::new(move |event| {
                if let Some(lane) = weak.upgrade() {
                    lane.on_event(event);
                }
            }));
            Some(lane)
        } else {
            None
        };
        Ok(Self {
            locker,
            settler,
            lane,
            cancels: RefCell::default(),
        })
    }

    /// Like `acquire`, resolving to `{ token, fence, validForMs, deadline, attempts }` or
    /// `{ token: null, attempts }` (what the tracing channels report); the lease is not watched.
    #[napi(
        catch_unwind,
        ts_return_type = "Promise<{ token: string, fence: number | null, validForMs: number, deadline: number, attempts: number } | { token: null, attempts: number }>"
    )]
    #[allow(clippy::too_many_arguments)]
    pub fn acquire_detailed<'env>(
        &self,
        env: &'env Env,
        key: String,
        ttl_ms: u32,
        auto_extend: bool,
        wait: Option<WaitSettings>,
        cancel_id: u32,
        max_hold_ms: Option<u32>,
        write: Option<bool>,
        also: Option<Vec<String>>,
    ) -> Result<PromiseRaw<'env, Option<String>>> {
        let lease = Leasing {
            auto_extend,
            max_hold_ms,
            expect: Expect::Detail,
            write: write.unwrap_or(false),
            also: also.unwrap_or_default(),
        };
        self.take(env, key, ttl_ms, lease, wait, cancel_id)
    }

    /// Redlock: whether every acquire reports each master's vote as a `quorum` notice (by
    /// default only those where a master failed or did not answer do).
    #[napi(catch_unwind)]
    pub fn set_votes_wanted(&self, wanted: bool) {
        self.locker.set_votes_wanted(wanted);
    }

    /// The counters and summaries of `lock.metrics()` kept where calls settle.
    #[napi(catch_unwind)]
    pub fn metrics(&self) -> NativeMetrics {
        self.settler.metrics_snapshot()
    }

    /// The facade was told a tracked lease was lost: it is not held any more.
    #[napi(catch_unwind)]
    pub fn lease_lost(&self, token: String) {
        self.settler.metrics().borrow_mut().lost(&token);
    }

    /// `event-loop` (the libuv transport) or `runtime` (calls driven from the tokio runtime).
    #[napi(getter, catch_unwind)]
    pub fn transport(&self) -> &'static str {
        if self.lane.is_some() {
            "event-loop"
        } else {
            "runtime"
        }
    }

    /// Takes the lock. Resolves to the token, or `null`. `wait` is absent for a single attempt;
    /// `cancelId` 0 means not cancellable, else `cancel(cancelId)` stops the wait; `maxHoldMs`:
    /// auto-extension stops once the lock has been held that long.
    #[napi(catch_unwind, ts_return_type = "Promise<string | null>")]
    #[allow(clippy::too_many_arguments)]
    pub fn acquire<'env>(
        &self,
        env: &'env Env,
        key: String,
        ttl_ms: u32,
        auto_extend: bool,
        wait: Option<WaitSettings>,
        cancel_id: u32,
        max_hold_ms: Option<u32>,
        write: Option<bool>,
        also: Option<Vec<String>>,
    ) -> Result<PromiseRaw<'env, Option<String>>> {
        let lease = Leasing {
            auto_extend,
            max_hold_ms,
            expect: Expect::Token,
            write: write.unwrap_or(false),
            also: also.unwrap_or_default(),
        };
        self.take(env, key, ttl_ms, lease, wait, cancel_id)
    }

    /// Like `acquireDetailed`, and watches the lease so its loss is reported (`deadline` on the
    /// clock of `options.clockOriginMs`).
    #[napi(
        catch_unwind,
        ts_return_type = "Promise<{ token: string, fence: number | null, validForMs: number, deadline: number, attempts: number } | { token: null, attempts: number }>"
    )]
    #[allow(clippy::too_many_arguments)]
    pub fn acquire_lease<'env>(
        &self,
        env: &'env Env,
        key: String,
        ttl_ms: u32,
        auto_extend: bool,
        wait: Option<WaitSettings>,
        cancel_id: u32,
        max_hold_ms: Option<u32>,
        write: Option<bool>,
        also: Option<Vec<String>>,
    ) -> Result<PromiseRaw<'env, Option<String>>> {
        let lease = Leasing {
            auto_extend,
            max_hold_ms,
            expect: Expect::Grant,
            write: write.unwrap_or(false),
            also: also.unwrap_or_default(),
        };
        self.take(env, key, ttl_ms, lease, wait, cancel_id)
    }

    /// Stops the waiting acquire registered under `cancelId`, if it still waits.
    #[napi(catch_unwind)]
    pub fn cancel(&self, cancel_id: u32) {
        let id = self.cancels.borrow_mut().remove(&cancel_id);
        if let Some(id) = id {
            self.locker.cancel(id);
            self.pump();
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
        let counted = Counted::Release {
            token: token.clone(),
        };
        self.call(env, Call::Release { key, token }, Expect::Flag, counted)
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
        let counted = Counted::Extend {
            token: token.clone(),
            ttl,
            sent_at: Instant::now(),
        };
        self.call(env, Call::Extend { key, token, ttl }, Expect::Flag, counted)
    }

    /// Deletes each of the keys `token` owns (a lock over several resources). Resolves to
    /// whether every one was its. Tracking stops at once.
    #[napi(catch_unwind, ts_return_type = "Promise<boolean>")]
    pub fn release_all<'env>(
        &self,
        env: &'env Env,
        keys: Vec<String>,
        token: String,
    ) -> Result<PromiseRaw<'env, bool>> {
        let counted = Counted::Release {
            token: token.clone(),
        };
        self.call(env, Call::ReleaseAll { keys, token }, Expect::Flag, counted)
    }

    /// Sets the TTL of every key if `token` owns every one. Resolves to whether it did.
    #[napi(catch_unwind, ts_return_type = "Promise<boolean>")]
    pub fn extend_all<'env>(
        &self,
        env: &'env Env,
        keys: Vec<String>,
        token: String,
        ttl_ms: u32,
    ) -> Result<PromiseRaw<'env, bool>> {
        let ttl = ttl(ttl_ms)?;
        let counted = Counted::Extend {
            token: token.clone(),
            ttl,
            sent_at: Instant::now(),
        };
        let call = Call::ExtendAll { keys, token, ttl };
        self.call(env, call, Expect::Flag, counted)
    }

    /// A semaphore's permits held now (a lock: 1 if held, else 0).
    #[napi(catch_unwind, ts_return_type = "Promise<number>")]
    pub fn count<'env>(&self, env: &'env Env, key: String) -> Result<PromiseRaw<'env, f64>> {
        self.call(env, Call::Count { key }, Expect::Count, Counted::Other)
    }

    /// Whether anybody holds the lock at `key`.
    #[napi(catch_unwind, ts_return_type = "Promise<boolean>")]
    pub fn is_locked<'env>(&self, env: &'env Env, key: String) -> Result<PromiseRaw<'env, bool>> {
        self.call(env, Call::Exists { key }, Expect::Flag, Counted::Other)
    }

    /// Ms until the tracked lease's deadline (0 once passed); `null` if it is not tracked.
    #[napi(catch_unwind)]
    pub fn time_left_ms(&self, token: String) -> Option<f64> {
        self.locker
            .time_left(&token)
            .map(|left| left.as_secs_f64() * 1000.0)
    }

    /// `[tracked leases, of which auto-extended]`.
    #[napi(getter, catch_unwind)]
    pub fn tracked(&self) -> Vec<u32> {
        let (tracked, extended) = self.locker.tracked();
        [tracked, extended]
            .into_iter()
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            .collect()
    }

    /// `host:port` or socket path of the server (no credentials).
    #[napi(getter, catch_unwind)]
    pub fn target(&self) -> String {
        self.locker.target().to_owned()
    }

    /// Stops auto-extension, tracking and pending waits, and drops the connections; pending
    /// calls reject with a closed error. Idempotent.
    #[napi(catch_unwind)]
    pub fn close(&self) {
        self.locker.close();
        self.settler.metrics().borrow_mut().closed();
        self.pump();
    }
}

impl NativeLocker {
    /// `acquire` and `acquireLease`.
    fn take<'env, T>(
        &self,
        env: &'env Env,
        key: String,
        ttl_ms: u32,
        lease: Leasing,
        wait: Option<WaitSettings>,
        cancel_id: u32,
    ) -> Result<PromiseRaw<'env, T>> {
        let Leasing {
            auto_extend,
            max_hold_ms,
            expect,
            write,
            also,
        } = lease;
        let max_hold = match max_hold_ms {
            None => None,
            Some(0) => {
                return Err(invalid_arg(
                    "maxHoldTime",
                    "must be a positive integer of ms",
                ));
            }
            Some(ms) => Some(Duration::from_millis(u64::from(ms))),
        };
        let (retry, replicas) = match wait {
            None => (None, None),
            Some(wait) => wait_policy(wait)?,
        };
        let spec = AcquireSpec {
            key,
            ttl: ttl(ttl_ms)?,
            auto_extend,
            watch: expect == Expect::Grant,
            replicas,
            max_hold,
            write,
            also,
        };
        let id = self.locker.next_call_id();
        if cancel_id != 0 {
            let mut cancels = self.cancels.borrow_mut();
            if cancels.len() >= 64 {
                // Entries of calls that ended without being cancelled.
                cancels.retain(|_, call| self.settler.is_pending_call(*call));
            }
            cancels.insert(cancel_id, id);
        }
        let counted = Counted::Acquire {
            started: Instant::now(),
            waits: retry.is_some(),
            ttl: spec.ttl,
            tracked: spec.auto_extend || spec.watch,
        };
        self.start(env, id, Call::Acquire { spec, retry }, expect, counted)
    }

    fn call<'env, T>(
        &self,
        env: &'env Env,
        call: Call,
        expect: Expect,
        counted: Counted,
    ) -> Result<PromiseRaw<'env, T>> {
        let id = self.locker.next_call_id();
        self.start(env, id, call, expect, counted)
    }

    /// Makes the call; its outcome settles the returned promise.
    fn start<'env, T>(
        &self,
        env: &'env Env,
        id: CallId,
        call: Call,
        expect: Expect,
        counted: Counted,
    ) -> Result<PromiseRaw<'env, T>> {
        let promise = self.settler.add(id, expect, counted)?;
        self.locker.submit(id, call);
        self.pump();
        // SAFETY: `promise` is a live promise value made in this call's env and scope.
        unsafe { PromiseRaw::from_napi_value(env.raw(), promise) }
    }

    /// On the lane: act on what the call changed (within a napi call, so no callback scope).
    fn pump(&self) {
        if let Some(lane) = &self.lane {
            lane.pump(lane::From::Call);
        }
    }
}

impl Drop for NativeLocker {
    /// The Lock was collected (napi-rs finalizes on the JS thread): its engine stays until its
    /// pending calls have settled, then closes.
    fn drop(&mut self) {
        let locker = self.locker.clone();
        let lane = self.lane.take();
        self.settler.abandon(Box::new(move || {
            match lane {
                Some(lane) => lane.shutdown(),
                None => locker.close(),
            }
            drop(locker);
        }));
    }
}

/// How an acquire holds what it takes.
struct Leasing {
    auto_extend: bool,
    max_hold_ms: Option<u32>,
    expect: Expect,
    /// A read-write lock's write side (else its read side; other Locks ignore it).
    write: bool,
    /// A lock over several resources: the keys besides `key`.
    also: Vec<String>,
}

/// The core, locked (a panic while it was locked is a bug; its state is still the best there is).
pub(crate) fn lock_core(locker: &Locker) -> MutexGuard<'_, Core> {
    lock(locker.core())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
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
        LostReason::MaxHoldTime => (
            "max-hold-time",
            "it was held for maxHoldTime, so auto-extension stopped and its ttl ran out".to_owned(),
        ),
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

fn wait_policy(wait: WaitSettings) -> Result<(Option<RetryPolicy>, Option<ReplicaAck>)> {
    let retry = RetryPolicy {
        retry_count: retry_count_of(wait.retry_count)?,
        retry_delay: ms_of("retryDelay", wait.retry_delay_ms)?,
        retry_jitter: ms_of("retryJitter", wait.retry_jitter_ms)?,
        wait_timeout: wait
            .wait_timeout_ms
            .map(|ms| ms_of("waitTimeout", ms))
            .transpose()?,
    };
    let replicas = match wait.replicas {
        None | Some(0) => None,
        Some(count) => Some(ReplicaAck {
            count,
            timeout: Duration::from_millis(u64::from(wait.replicas_timeout_ms.unwrap_or(1000))),
        }),
    };
    // Replica acknowledgement alone is a single attempt.
    let waits = retry != RetryPolicy::ONCE;
    Ok((waits.then_some(retry), replicas))
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

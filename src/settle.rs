//! Promises and how they are settled: every call of a Lock gets a promise, kept here by call id
//! until the engine's outcome for it comes, from the event-loop transport on the JS thread or
//! from the runtime through one thread-safe function per Lock, which wakes the JS thread once
//! for however many outcomes are waiting (napi-rs's `async fn` would make a thread-safe function,
//! and with it a libuv handle, for every call).
//!
//! The thread-safe function keeps the event loop alive exactly while a promise is pending, so an
//! idle process exits by itself. Failures settle as instances of the facade's error classes
//! (looked up by code), so the facade hands the promise to its caller without wrapping it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use napi::sys;
use napi::{Error, Result, Status};
use sdl_engine::net::open::{StdStream, TlsSession};
use sdl_engine::{CallId, EngineError, EngineResult, Outcome};

use crate::errors::code_and_message;
use crate::js::{AsyncScope, Deferred, JsEnv};
use crate::metrics::{Counted, Metrics, NativeMetrics};

/// Node's monotonic clock (`performance.now()`) beside the engine's: an `Instant` in JS ms.
///
/// Both are the OS's monotonic clock. The origin pair is read JS first, engine second, so the
/// engine's origin is a little later than the true match: deadlines come out a little early in
/// JS, never late.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    origin: Instant,
    origin_js_ms: f64,
}

impl Clock {
    pub(crate) fn new(origin_js_ms: f64) -> Self {
        Self {
            origin: Instant::now(),
            origin_js_ms,
        }
    }

    pub(crate) fn js_ms(&self, at: Instant) -> f64 {
        match at.checked_duration_since(self.origin) {
            Some(after) => self.origin_js_ms + after.as_secs_f64() * 1000.0,
            None => self.origin_js_ms - self.origin.duration_since(at).as_secs_f64() * 1000.0,
        }
    }
}

/// What the JS side expects of a call's outcome.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// `acquire`: the token or `null`.
    Token,
    /// `acquireLease`: `{ token, fence, validForMs, deadline, attempts }`, or `{ token: null,
    /// attempts }` when refused (`deadline` on the JS monotonic clock, see `Clock`).
    Grant,
    /// `acquireDetailed`: the same as `Grant`, for a lease that is not watched.
    Detail,
    /// `count`: a number.
    Count,
    Flag,
}

/// News for the event-loop transport from the runtime.
pub(crate) enum LaneEvent {
    /// A socket the lane asked the runtime to open.
    Opened {
        conn: usize,
        epoch: u64,
        result: Box<EngineResult<(StdStream, Option<TlsSession>)>>,
    },
    /// The core changed from the runtime side (a release heard, a failover, a close).
    Wake,
}

/// Settlements per callback scope when many come at once: after each slice the microtasks run
/// and queue their next calls, which the transport writes before settling the next slice, so
/// Redis works on those while this thread settles the rest.
pub(crate) const SLICE: usize = 16;

struct Shared {
    tsfn: AtomicPtr<sys::napi_threadsafe_function__>,
    /// False once Node finalized the thread-safe function; calls hold the read lock while they
    /// use it, the finalizer takes the write lock.
    alive: RwLock<bool>,
    released: AtomicBool,
    done: Mutex<Vec<(CallId, Outcome)>>,
    lane: Mutex<Vec<LaneEvent>>,
}

// SAFETY: the raw thread-safe function is the one Node-API object made to be used from any
// thread (`napi_call_threadsafe_function`); everything else is in Send + Sync types.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// Asks the JS thread to drain the queues. From any thread.
    fn wake(&self) {
        let alive = self.alive.read().unwrap_or_else(|p| p.into_inner());
        if *alive && !self.released.load(Ordering::Acquire) {
            // SAFETY: the function is alive (read lock held, finalizer not run) and not
            // released; calling it from any thread is what it is for. It fails only while Node
            // shuts down, when nobody waits.
            unsafe {
                sys::napi_call_threadsafe_function(
                    self.tsfn.load(Ordering::Acquire),
                    ptr::null_mut(),
                    sys::ThreadsafeFunctionCallMode::nonblocking,
                )
            };
        }
    }
}

/// Posts to the JS thread, from any thread.
#[derive(Clone)]
pub(crate) struct Poster {
    shared: Arc<Shared>,
}

impl Poster {
    pub(crate) fn post_done(&self, done: Vec<(CallId, Outcome)>) {
        let first = {
            let mut queue = self.shared.done.lock().unwrap_or_else(|p| p.into_inner());
            let first = queue.is_empty();
            queue.extend(done);
            first
        };
        if first {
            self.shared.wake();
        }
    }

    pub(crate) fn post_lane(&self, event: LaneEvent) {
        let first = {
            let mut queue = self.shared.lane.lock().unwrap_or_else(|p| p.into_inner());
            queue.push(event);
            queue.len() == 1
        };
        if first {
            self.shared.wake();
        }
    }
}

type LaneHandler = Box<dyn Fn(LaneEvent)>;

/// The promises of one Lock. On the JS thread only.
pub(crate) struct Settler {
    env: JsEnv,
    /// The environment is being torn down: no more Node-API calls.
    gone: Cell<bool>,
    classes: sys::napi_ref,
    pending: RefCell<HashMap<CallId, (Deferred, Expect, Counted)>>,
    metrics: RefCell<Metrics>,
    shared: Arc<Shared>,
    /// What to let go once nothing is pending (the Lock was collected meanwhile).
    abandoned: RefCell<Option<Box<dyn FnOnce()>>>,
    lane_handler: RefCell<Option<LaneHandler>>,
    clock: Clock,
}

impl Settler {
    /// `classes`: the facade's `{ [code]: ErrorClass }`.
    pub(crate) fn new(env: JsEnv, classes: sys::napi_value, clock: Clock) -> Result<Rc<Self>> {
        let classes = env.reference(classes)?;
        let shared = Arc::new(Shared {
            tsfn: AtomicPtr::new(ptr::null_mut()),
            alive: RwLock::new(true),
            released: AtomicBool::new(false),
            done: Mutex::new(Vec::new()),
            lane: Mutex::new(Vec::new()),
        });
        let settler = Rc::new(Self {
            env,
            gone: Cell::new(false),
            classes,
            pending: RefCell::default(),
            metrics: RefCell::new(Metrics::new()),
            shared: shared.clone(),
            abandoned: RefCell::new(None),
            lane_handler: RefCell::new(None),
            clock,
        });
        // The thread-safe function holds one count on the settler, given back in `finalize`.
        let context = Rc::into_raw(settler.clone()) as *mut c_void;
        let name = env.string("simple-distributed-lock")?;
        let mut tsfn = ptr::null_mut();
        // SAFETY: a live env on its JS thread; no JS function (the callback settles); the
        // context outlives the function (finalize gives it back); both callbacks catch panics.
        let status = unsafe {
            sys::napi_create_threadsafe_function(
                env.raw(),
                ptr::null_mut(),
                ptr::null_mut(),
                name,
                0,
                1,
                context,
                Some(finalize),
                context,
                Some(drain),
                &mut tsfn,
            )
        };
        if status != sys::Status::napi_ok {
            // SAFETY: the count handed over above was not taken by Node: take it back.
            drop(unsafe { Rc::from_raw(context as *const Settler) });
            return Err(Error::new(
                Status::GenericFailure,
                "cannot create the completion channel",
            ));
        }
        shared.tsfn.store(tsfn, Ordering::Release);
        // SAFETY: a live env on its JS thread; `tsfn` was just created. Idle until a call is
        // pending.
        unsafe { sys::napi_unref_threadsafe_function(env.raw(), tsfn) };
        Ok(settler)
    }

    pub(crate) fn poster(&self) -> Poster {
        Poster {
            shared: self.shared.clone(),
        }
    }

    /// The environment is being torn down: no Node-API call from here on.
    pub(crate) fn set_gone(&self) {
        self.gone.set(true);
    }

    pub(crate) fn env(&self) -> Option<JsEnv> {
        (!self.gone.get()).then_some(self.env)
    }

    /// Who receives the lane's events.
    pub(crate) fn on_lane_event(&self, handler: LaneHandler) {
        *self.lane_handler.borrow_mut() = Some(handler);
    }

    /// A new pending call: its promise.
    pub(crate) fn add(
        &self,
        id: CallId,
        expect: Expect,
        counted: Counted,
    ) -> Result<sys::napi_value> {
        let (deferred, promise) = self.env.promise()?;
        let mut pending = self.pending.borrow_mut();
        if pending.is_empty() {
            self.keep_alive(true);
        }
        self.metrics.borrow_mut().started(&counted);
        pending.insert(id, (deferred, expect, counted));
        Ok(promise)
    }

    /// The counters and summaries of `lock.metrics()`.
    pub(crate) fn metrics(&self) -> &RefCell<Metrics> {
        &self.metrics
    }

    pub(crate) fn metrics_snapshot(&self) -> NativeMetrics {
        self.metrics.borrow_mut().snapshot()
    }

    pub(crate) fn is_pending_call(&self, id: CallId) -> bool {
        self.pending.borrow().contains_key(&id)
    }

    fn keep_alive(&self, on: bool) {
        if self.gone.get() || self.shared.released.load(Ordering::Acquire) {
            return;
        }
        let tsfn = self.shared.tsfn.load(Ordering::Acquire);
        // SAFETY: a live env on its JS thread; the function is alive (not released, and its
        // finalizer sets `gone` before it could be freed).
        unsafe {
            if on {
                sys::napi_ref_threadsafe_function(self.env.raw(), tsfn);
            } else {
                sys::napi_unref_threadsafe_function(self.env.raw(), tsfn);
            }
        }
    }

    /// Settles outcomes, in slices of `SLICE` inside `scope`'s callback scope when given, calling
    /// `between` after each slice but the last.
    pub(crate) fn settle_all(
        &self,
        outcomes: Vec<(CallId, Outcome)>,
        scope: Option<&AsyncScope>,
        between: &dyn Fn(),
    ) {
        let slice = if scope.is_some() { SLICE } else { usize::MAX };
        let mut outcomes = outcomes.into_iter().peekable();
        while outcomes.peek().is_some() {
            if self.gone.get() {
                return;
            }
            self.env.scoped(scope, |env| {
                for (id, outcome) in outcomes.by_ref().take(slice) {
                    self.settle(env, id, outcome);
                }
            });
            if outcomes.peek().is_some() {
                between();
            }
        }
    }

    fn settle(&self, env: JsEnv, id: CallId, outcome: Outcome) {
        let Some((deferred, expect, counted)) = self.pending.borrow_mut().remove(&id) else {
            return;
        };
        self.metrics.borrow_mut().settled(counted, &outcome);
        let value = self.value(env, expect, outcome);
        env.settle(deferred, value);
        if self.pending.borrow().is_empty() {
            self.keep_alive(false);
            if let Some(let_go) = self.abandoned.borrow_mut().take() {
                let_go();
                self.release();
            }
        }
    }

    fn value(
        &self,
        env: JsEnv,
        expect: Expect,
        outcome: Outcome,
    ) -> std::result::Result<sys::napi_value, sys::napi_value> {
        let made = match (expect, outcome) {
            (_, Outcome::Failed(err)) => return Err(self.error(env, &err)),
            (Expect::Token, Outcome::Granted(grant)) => env.string(&grant.token),
            (Expect::Token, Outcome::Refused { .. }) => env.null(),
            (Expect::Grant | Expect::Detail, Outcome::Refused { attempts }) => {
                match (env.null(), env.number(f64::from(attempts))) {
                    (Ok(token), Ok(attempts)) => {
                        env.object(&[(c"token", token), (c"attempts", attempts)])
                    }
                    _ => Err(Error::from_reason("cannot make the refusal")),
                }
            }
            (Expect::Grant | Expect::Detail, Outcome::Granted(grant)) => {
                let left = grant.deadline.saturating_duration_since(Instant::now());
                let fence = match grant.fence {
                    Some(fence) => env.number(fence as f64),
                    None => env.null(),
                };
                let deadline = env.number(self.clock.js_ms(grant.deadline));
                match (
                    env.string(&grant.token),
                    fence,
                    env.number(left.as_secs_f64() * 1000.0),
                    deadline,
                    env.number(f64::from(grant.attempts)),
                ) {
                    (Ok(token), Ok(fence), Ok(left), Ok(deadline), Ok(attempts)) => env.object(&[
                        (c"token", token),
                        (c"fence", fence),
                        (c"validForMs", left),
                        (c"deadline", deadline),
                        (c"attempts", attempts),
                    ]),
                    _ => Err(Error::from_reason("cannot make the grant")),
                }
            }
            (Expect::Flag, Outcome::Flag(flag)) => env.boolean(flag),
            (Expect::Count, Outcome::Count(n)) => env.number(n as f64),
            _ => Err(Error::from_reason(
                "an outcome of the wrong kind (a bug: please report it)",
            )),
        };
        made.map_err(|err| env.error(self.classes, "ERR_LOCK", &err.reason))
    }

    fn error(&self, env: JsEnv, err: &EngineError) -> sys::napi_value {
        let (code, message) = code_and_message(err);
        env.error(self.classes, code, &message)
    }

    /// The Lock was collected: `let_go` runs now if nothing is pending, else once the last
    /// pending call settles (a pending call keeps its Lock's engine alive).
    pub(crate) fn abandon(&self, let_go: Box<dyn FnOnce()>) {
        if self.pending.borrow().is_empty() {
            let_go();
            self.release();
        } else {
            *self.abandoned.borrow_mut() = Some(let_go);
        }
    }

    fn release(&self) {
        if let Ok(mut handler) = self.lane_handler.try_borrow_mut() {
            handler.take();
        }
        let _alive = self.shared.alive.write().unwrap_or_else(|p| p.into_inner());
        if !self.gone.get() && !self.shared.released.swap(true, Ordering::AcqRel) {
            // SAFETY: the function is alive (write lock held, so no `wake` uses it meanwhile, and
            // `gone` is false); released once (the flag).
            unsafe {
                sys::napi_release_threadsafe_function(
                    self.shared.tsfn.load(Ordering::Acquire),
                    sys::ThreadsafeFunctionReleaseMode::release,
                )
            };
        }
    }
}

impl Drop for Settler {
    fn drop(&mut self) {
        if !self.gone.get() {
            self.env.delete_reference(self.classes);
        }
    }
}

/// On the JS thread: hands the lane its events, then settles what the runtime finished.
unsafe extern "C" fn drain(
    env: sys::napi_env,
    _js: sys::napi_value,
    context: *mut c_void,
    _data: *mut c_void,
) {
    if env.is_null() || context.is_null() {
        return; // the environment is shutting down
    }
    // SAFETY: `context` is the settler count the thread-safe function holds until `finalize`,
    // which has not run (Node calls this before it). Borrowed for this call only.
    let settler = unsafe { &*(context as *const Settler) };
    let drained = catch_unwind(AssertUnwindSafe(|| {
        let events = std::mem::take(
            &mut *settler
                .shared
                .lane
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if !events.is_empty()
            && let Ok(handler) = settler.lane_handler.try_borrow()
            && let Some(handler) = handler.as_ref()
        {
            for event in events {
                handler(event);
            }
        }
        let done = std::mem::take(
            &mut *settler
                .shared
                .done
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if !done.is_empty() {
            settler.settle_all(done, None, &|| {});
        }
    }));
    if drained.is_err() {
        // A bug; the calls whose outcome it was are failed rather than left hanging.
        let ids: Vec<CallId> = settler.pending.borrow().keys().copied().collect();
        let err = EngineError::new(
            sdl_engine::ErrorKind::Connection,
            "internal error in the lock engine (a bug: please report it)",
        );
        let failed = ids
            .into_iter()
            .map(|id| (id, Outcome::Failed(err.clone())))
            .collect();
        let _ = catch_unwind(AssertUnwindSafe(|| {
            settler.settle_all(failed, None, &|| {})
        }));
    }
}

/// The thread-safe function is gone (released, or the environment torn down): give back the
/// count it held; at teardown no Node-API call may follow.
unsafe extern "C" fn finalize(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    if data.is_null() {
        return;
    }
    // SAFETY: `data` is the count handed over in `Settler::new`, given back exactly once, here.
    let settler = unsafe { Rc::from_raw(data as *const Settler) };
    let _ = catch_unwind(AssertUnwindSafe(|| {
        *settler
            .shared
            .alive
            .write()
            .unwrap_or_else(|p| p.into_inner()) = false;
        if !settler.shared.released.load(Ordering::Acquire) {
            // Not released by us: Node tears the environment down.
            settler.gone.set(true);
        }
    }));
}

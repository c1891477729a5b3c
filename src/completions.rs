//! How results come back to JS: one thread-safe function per locker, shared by every call, with
//! completions batched.
//!
//! napi-rs's `async fn` creates (and later destroys) a thread-safe function, and with it a libuv
//! handle, for every call. Here a call creates only its promise; the runtime pushes the finished
//! result onto a queue and wakes the JS thread once for however many results are waiting, and
//! the JS thread settles them all in one go. The thread-safe function keeps the event loop alive
//! only while calls are pending, so an idle process exits by itself.
//!
//! Failures settle as instances of the facade's error classes (looked up by code), so the facade
//! can hand the promise to its caller without wrapping it.

use std::ffi::c_void;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures_util::FutureExt;
use napi::bindgen_prelude::*;
use napi::sys;

/// A finished call's result, turned into a JS value on the JS thread.
pub(crate) enum Outcome {
    Token(Option<String>),
    Flag(bool),
    Grant(Option<Grant>),
    Failed { code: &'static str, message: String },
}

pub(crate) struct Grant {
    pub token: String,
    pub fence: Option<i64>,
    pub valid_for_ms: f64,
}

impl Outcome {
    /// An acquire's result: a grant for `acquireLease`, else the token (both `null` if held).
    pub(crate) fn acquired(lease: bool, grant: Option<Grant>) -> Outcome {
        if lease {
            Outcome::Grant(grant)
        } else {
            Outcome::Token(grant.map(|g| g.token))
        }
    }
}

struct Deferred(sys::napi_deferred);
// The deferred is only ever settled on the JS thread that created it; other threads carry it.
unsafe impl Send for Deferred {}

struct Shared {
    tsfn: AtomicPtr<sys::napi_threadsafe_function__>,
    queue: Mutex<Vec<(Deferred, Outcome)>>,
    /// Calls not yet settled. Read and written on the JS thread only.
    pending: AtomicUsize,
    /// The locker is gone: release the thread-safe function once nothing is pending.
    abandoned: AtomicBool,
    released: AtomicBool,
    /// False once Node finalized the thread-safe function (at environment teardown it does so
    /// even while we hold it, and frees it): no call may reach it after that. Calls hold the
    /// read lock while they use it; the finalizer takes the write lock.
    alive: RwLock<bool>,
    /// `{ [code]: ErrorClass }` from the facade.
    error_classes: sys::napi_ref,
    /// Notices from the runtime for code on the JS thread (see `Poster`).
    events: Mutex<Vec<Event>>,
    /// Receives the events; set and called on the JS thread only.
    on_event: std::cell::RefCell<Option<EventHandler>>,
}

/// Code on the JS thread that receives the events.
pub(crate) type EventHandler = Box<dyn Fn(Event)>;

/// A notice from the runtime for code on the JS thread.
pub(crate) enum Event {
    /// A release of this lock key was heard from Redis.
    Released(String),
}

/// Posts events to the JS thread, from any thread.
#[derive(Clone)]
pub(crate) struct Poster {
    shared: Arc<Shared>,
}

impl Poster {
    pub(crate) fn post(&self, event: Event) {
        let shared = &self.shared;
        let wake = {
            let mut events = shared.events.lock().unwrap_or_else(|p| p.into_inner());
            events.push(event);
            events.len() == 1
        };
        if wake {
            shared.wake();
        }
    }
}
// The raw handles are used as napi allows: the thread-safe function from any thread, the
// reference and deferreds on the JS thread only.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

pub(crate) struct Completions {
    shared: Arc<Shared>,
}

impl Completions {
    /// Creates the locker's completion channel. On the JS thread.
    pub(crate) fn new(env: &Env, error_classes: Object) -> Result<Self> {
        let raw_env = env.raw();
        let mut classes_ref = ptr::null_mut();
        check(unsafe {
            sys::napi_create_reference(raw_env, error_classes.raw(), 1, &mut classes_ref)
        })?;
        let mut name = ptr::null_mut();
        let label = "simple-distributed-lock";
        check(unsafe {
            sys::napi_create_string_utf8(
                raw_env,
                label.as_ptr().cast(),
                label.len() as isize,
                &mut name,
            )
        })?;
        // The shared state is created first and handed over as the context; the thread-safe
        // function keeps one strong count, given back in its finalizer.
        let shared = Arc::new(Shared {
            tsfn: AtomicPtr::new(ptr::null_mut()),
            queue: Mutex::new(Vec::new()),
            pending: AtomicUsize::new(0),
            abandoned: AtomicBool::new(false),
            released: AtomicBool::new(false),
            alive: RwLock::new(true),
            error_classes: classes_ref,
            events: Mutex::new(Vec::new()),
            on_event: std::cell::RefCell::new(None),
        });
        let context = Arc::into_raw(shared.clone()) as *mut c_void;
        let mut tsfn = ptr::null_mut();
        let status = unsafe {
            sys::napi_create_threadsafe_function(
                raw_env,
                ptr::null_mut(),
                ptr::null_mut(),
                name,
                0,
                1,
                context,
                Some(finalize),
                context,
                Some(settle_ready),
                &mut tsfn,
            )
        };
        if status != sys::Status::napi_ok {
            drop(unsafe { Arc::from_raw(context as *const Shared) });
            return Err(Error::new(
                Status::GenericFailure,
                "cannot create the completion channel",
            ));
        }
        shared.tsfn.store(tsfn, Ordering::Release);
        // Idle until a call is pending.
        check(unsafe { sys::napi_unref_threadsafe_function(raw_env, tsfn) })?;
        Ok(Self { shared })
    }

    /// Starts `work` on the runtime and returns the promise it settles. On the JS thread.
    pub(crate) fn run<F>(&self, env: &Env, work: F) -> Result<sys::napi_value>
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        let raw_env = env.raw();
        let mut deferred = ptr::null_mut();
        let mut promise = ptr::null_mut();
        check(unsafe { sys::napi_create_promise(raw_env, &mut deferred, &mut promise) })?;
        let shared = &self.shared;
        if shared.pending.fetch_add(1, Ordering::Relaxed) == 0 {
            // Something is pending: keep the process alive until it settles.
            unsafe { sys::napi_ref_threadsafe_function(raw_env, shared.tsfn()) };
        }
        let shared = shared.clone();
        let deferred = Deferred(deferred);
        napi::bindgen_prelude::spawn(async move {
            let outcome = AssertUnwindSafe(work)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Outcome::Failed {
                    code: "ERR_LOCK",
                    message: "internal error in the lock engine (a bug: please report it)".into(),
                });
            let wake = {
                let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                queue.push((deferred, outcome));
                queue.len() == 1
            };
            if wake {
                shared.wake();
            }
        });
        Ok(promise)
    }
}

impl Completions {
    /// A handle for posting events from the runtime.
    pub(crate) fn poster(&self) -> Poster {
        Poster {
            shared: self.shared.clone(),
        }
    }

    /// Who receives the events. On the JS thread.
    pub(crate) fn on_event(&self, handler: EventHandler) {
        *self.shared.on_event.borrow_mut() = Some(handler);
    }
}

impl Shared {
    fn tsfn(&self) -> sys::napi_threadsafe_function {
        self.tsfn.load(Ordering::Acquire)
    }

    /// Asks the JS thread to drain the queues. From any thread.
    fn wake(&self) {
        let alive = self.alive.read().unwrap_or_else(|p| p.into_inner());
        if *alive && !self.released.load(Ordering::Acquire) {
            // Fails only while Node shuts down, when nobody waits for the result.
            unsafe {
                sys::napi_call_threadsafe_function(
                    self.tsfn(),
                    ptr::null_mut(),
                    sys::ThreadsafeFunctionCallMode::nonblocking,
                )
            };
        }
    }
}

impl Drop for Completions {
    /// The locker was collected. On the JS thread (napi-rs finalizes wrapped objects there).
    fn drop(&mut self) {
        // The handler holds JS-thread state: drop it here, not wherever `Shared` ends.
        self.shared.on_event.borrow_mut().take();
        self.shared.abandoned.store(true, Ordering::Relaxed);
        if self.shared.pending.load(Ordering::Relaxed) == 0 {
            release(&self.shared);
        }
    }
}

fn release(shared: &Shared) {
    // The write lock: no `wake` may be using the thread-safe function while it is released.
    let alive = shared.alive.write().unwrap_or_else(|p| p.into_inner());
    if *alive && !shared.released.swap(true, Ordering::AcqRel) {
        unsafe {
            sys::napi_release_threadsafe_function(
                shared.tsfn(),
                sys::ThreadsafeFunctionReleaseMode::release,
            )
        };
    }
}

/// On the JS thread: settles every queued result.
unsafe extern "C" fn settle_ready(
    env: sys::napi_env,
    _js: sys::napi_value,
    context: *mut c_void,
    _data: *mut c_void,
) {
    if env.is_null() || context.is_null() {
        return; // the environment is shutting down
    }
    let shared = unsafe { &*(context as *const Shared) };
    let events = std::mem::take(&mut *shared.events.lock().unwrap_or_else(|p| p.into_inner()));
    if !events.is_empty()
        && let Ok(handler) = shared.on_event.try_borrow()
        && let Some(handler) = handler.as_ref()
    {
        for event in events {
            handler(event);
        }
    }
    let ready = std::mem::take(&mut *shared.queue.lock().unwrap_or_else(|p| p.into_inner()));
    let settled = ready.len();
    for (deferred, outcome) in ready {
        unsafe { settle(env, shared.error_classes, deferred.0, outcome) };
    }
    let left = shared.pending.fetch_sub(settled, Ordering::Relaxed) - settled;
    if left == 0 {
        unsafe { sys::napi_unref_threadsafe_function(env, shared.tsfn()) };
        if shared.abandoned.load(Ordering::Relaxed) {
            release(shared);
        }
    }
}

/// Settles a promise with an outcome. On the JS thread, inside a handle scope.
pub(crate) unsafe fn settle(
    env: sys::napi_env,
    error_classes: sys::napi_ref,
    deferred: sys::napi_deferred,
    outcome: Outcome,
) {
    let (ok, value) = match outcome {
        Outcome::Token(token) => (true, unsafe { optional_string(env, token.as_deref()) }),
        Outcome::Flag(flag) => (true, unsafe { boolean(env, flag) }),
        Outcome::Grant(grant) => (true, unsafe { grant_object(env, grant) }),
        Outcome::Failed { code, message } => {
            (false, unsafe { error(env, error_classes, code, &message) })
        }
    };
    unsafe {
        if ok {
            sys::napi_resolve_deferred(env, deferred, value);
        } else {
            sys::napi_reject_deferred(env, deferred, value);
        }
    }
}

unsafe fn optional_string(env: sys::napi_env, text: Option<&str>) -> sys::napi_value {
    let mut value = ptr::null_mut();
    unsafe {
        match text {
            Some(text) => sys::napi_create_string_utf8(
                env,
                text.as_ptr().cast(),
                text.len() as isize,
                &mut value,
            ),
            None => sys::napi_get_null(env, &mut value),
        };
    }
    value
}

unsafe fn boolean(env: sys::napi_env, flag: bool) -> sys::napi_value {
    let mut value = ptr::null_mut();
    unsafe { sys::napi_get_boolean(env, flag, &mut value) };
    value
}

unsafe fn number(env: sys::napi_env, n: f64) -> sys::napi_value {
    let mut value = ptr::null_mut();
    unsafe { sys::napi_create_double(env, n, &mut value) };
    value
}

unsafe fn grant_object(env: sys::napi_env, grant: Option<Grant>) -> sys::napi_value {
    let Some(grant) = grant else {
        return unsafe { optional_string(env, None) };
    };
    let mut object = ptr::null_mut();
    unsafe {
        sys::napi_create_object(env, &mut object);
        let token = optional_string(env, Some(&grant.token));
        sys::napi_set_named_property(env, object, c"token".as_ptr(), token);
        let fence = match grant.fence {
            Some(fence) => number(env, fence as f64),
            None => optional_string(env, None),
        };
        sys::napi_set_named_property(env, object, c"fence".as_ptr(), fence);
        sys::napi_set_named_property(
            env,
            object,
            c"validForMs".as_ptr(),
            number(env, grant.valid_for_ms),
        );
    }
    object
}

/// `new ErrorClasses[code](message)`, or a plain Error with `code` set if there is no class.
unsafe fn error(
    env: sys::napi_env,
    error_classes: sys::napi_ref,
    code: &str,
    message: &str,
) -> sys::napi_value {
    unsafe {
        let text = optional_string(env, Some(message));
        let mut classes = ptr::null_mut();
        sys::napi_get_reference_value(env, error_classes, &mut classes);
        let mut class = ptr::null_mut();
        let key = std::ffi::CString::new(code).unwrap_or_default();
        if !classes.is_null() {
            sys::napi_get_named_property(env, classes, key.as_ptr(), &mut class);
        }
        let mut kind = 0;
        if !class.is_null() {
            sys::napi_typeof(env, class, &mut kind);
        }
        let mut instance = ptr::null_mut();
        if kind == sys::ValueType::napi_function
            && sys::napi_new_instance(env, class, 1, &text, &mut instance) == sys::Status::napi_ok
        {
            return instance;
        }
        let code_value = optional_string(env, Some(code));
        sys::napi_create_error(env, code_value, text, &mut instance);
        instance
    }
}

/// The thread-safe function is gone: give back the strong count it held.
unsafe extern "C" fn finalize(env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    if data.is_null() {
        return;
    }
    let shared = unsafe { Arc::from_raw(data as *const Shared) };
    *shared.alive.write().unwrap_or_else(|p| p.into_inner()) = false;
    if !env.is_null() {
        unsafe { sys::napi_delete_reference(env, shared.error_classes) };
    }
}

fn check(status: sys::napi_status) -> Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(Error::new(Status::GenericFailure, "a Node-API call failed"))
    }
}

//! The event-loop lane: the hot lock calls done on the JS thread itself, for one plain Redis
//! server or Redlock over plain masters.
//!
//! Each call through the runtime crosses threads twice (JS → tokio → JS), which costs more than
//! the round trip to Redis on a VM. The lane removes both crossings for the hot calls (a single
//! acquire attempt, release, extend, isLocked, and on one server waiting and cancellable
//! acquires, see `wait`): the call encodes its command into a buffer; the buffer is written to a
//! socket watched by Node's own event loop (libuv), once per loop turn for everything queued
//! (auto-pipelining); replies are parsed as they arrive and settle their promises in callback
//! scopes (see `io::apply`). For Redlock the call goes to every master's socket in the same turn
//! and is decided as the replies come (see `quorum`). What the lane cannot do (waiting on
//! Redlock, TLS, Sentinel, cluster, replica acknowledgement) takes the runtime path, which also
//! serves calls while the lane's sockets are being opened (by the runtime), or after one broke,
//! or while a Redlock master is down.
//!
//! Everything here runs on the JS thread, except the sockets' opening.

mod env;
mod io;
mod quorum;
mod uv;
mod wait;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use napi::bindgen_prelude::*;
use napi::sys;
use sdl_engine::wire::{self, RawStream};
use sdl_engine::{EngineResult, Locker, ServerConfig};

use crate::completions::{Grant, Outcome};

use env::LaneEnv;
pub(crate) use io::Op;
use io::{Effects, Io};
use quorum::{QuorumCall, QuorumOp};
use wait::Turn;
pub(crate) use wait::WaitRequest;

/// After a socket failed to open or broke, the runtime path serves alone for this long.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// A single acquire attempt, with what it needs once answered.
pub(crate) struct AcquireCall {
    pub key: String,
    pub token: String,
    pub ttl: Duration,
    pub sent_at: tokio::time::Instant,
    pub auto_extend: bool,
    /// `acquireLease`: the lease is watched, and the answer is a grant.
    pub lease: bool,
}

impl AcquireCall {
    fn new(key: &str, ttl: Duration, auto_extend: bool, lease: bool) -> Self {
        Self {
            key: key.to_owned(),
            token: sdl_engine::new_token(),
            ttl,
            sent_at: tokio::time::Instant::now(),
            auto_extend,
            lease,
        }
    }

    /// The lock was granted: the engine tracks it like its own; the caller gets the outcome.
    pub(crate) fn granted(&self, locker: &Locker, fence: Option<i64>) -> Outcome {
        let deadline = napi::bindgen_prelude::within_runtime_if_available(|| {
            locker.adopt(
                &self.key,
                &self.token,
                self.ttl,
                self.sent_at,
                self.auto_extend,
                self.lease,
            )
        });
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        Outcome::acquired(
            self.lease,
            Some(Grant {
                token: self.token.clone(),
                fence,
                valid_for_ms: left.as_secs_f64() * 1000.0,
            }),
        )
    }

    /// The lock is held by someone else.
    pub(crate) fn refused(&self) -> Outcome {
        Outcome::acquired(self.lease, None)
    }
}

/// A call the lane can make.
pub(crate) enum LaneCall<'a> {
    Acquire {
        key: &'a str,
        ttl: Duration,
        auto_extend: bool,
        lease: bool,
    },
    Release {
        key: &'a str,
        token: &'a str,
    },
    Extend {
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    },
    Exists {
        key: &'a str,
    },
}

enum Phase {
    Idle { open_after: Option<Instant> },
    Opening(Arc<Mutex<Option<EngineResult<RawStream>>>>),
    Ready(Rc<RefCell<Io>>),
}

/// One server's socket on the lane.
struct Node {
    config: ServerConfig,
    phase: RefCell<Phase>,
}

pub(crate) struct Lane {
    shared: Rc<LaneShared>,
}

/// The lane's state, shared with the waiters' timers.
pub(crate) struct LaneShared {
    /// Empty when the lane is off for this deployment or platform.
    nodes: Vec<Node>,
    closed: RefCell<bool>,
    locker: Arc<Locker>,
    waiting: RefCell<wait::Waiting>,
    lane_env: Rc<LaneEnv>,
    /// For settling from the lane's own timers (a callback scope needs an async context).
    async_context: sys::napi_async_context,
    resource: sys::napi_ref,
    /// The Lock was collected: close the sockets once the last waiter is done.
    dropped: std::cell::Cell<bool>,
}

impl Lane {
    /// `error_classes`: the facade's `{ code: ErrorClass }` (the lane keeps its own reference).
    pub(crate) fn new(env: &Env, locker: Arc<Locker>, error_classes: sys::napi_value) -> Self {
        let usable = uv::uv().is_some() && enabled_by_env();
        let nodes = match locker.plain_servers() {
            Some(configs) if usable => configs
                .into_iter()
                .map(|config| Node {
                    config: config.clone(),
                    phase: RefCell::new(Phase::Idle { open_after: None }),
                })
                .collect(),
            _ => Vec::new(),
        };
        let (async_context, resource) = unsafe { io::async_context(env.raw()) }
            .unwrap_or((std::ptr::null_mut(), std::ptr::null_mut()));
        let shared = Rc::new(LaneShared {
            nodes,
            closed: RefCell::new(false),
            locker,
            waiting: RefCell::default(),
            lane_env: Rc::new(LaneEnv::new(env.raw(), error_classes)),
            async_context,
            resource,
            dropped: std::cell::Cell::new(false),
        });
        // The waiters' timers must be closed before a worker's loop is (LaneShared::drop
        // removes the hook when the lane goes first).
        unsafe {
            sys::napi_add_env_cleanup_hook(
                env.raw(),
                Some(on_env_cleanup),
                Rc::as_ptr(&shared) as *mut std::ffi::c_void,
            )
        };
        Self { shared }
    }

    /// A waiting acquire on the lane (one plain server only), or `None` for the runtime path.
    pub(crate) fn wait(&self, env: &Env, request: WaitRequest) -> Option<Result<sys::napi_value>> {
        let shared = &self.shared;
        if shared.nodes.len() != 1 || *shared.closed.borrow() {
            return None;
        }
        shared.nodes[0].ready(&shared.lane_env, &shared.locker)?;
        Some(wait::start(shared, env.raw(), request))
    }

    /// Rejects the lane's waiting acquire registered under `cancel_id`. `false` if none.
    pub(crate) fn cancel(&self, cancel_id: u32) -> bool {
        let mut effects = Effects::default();
        let found = wait::cancel(&self.shared, cancel_id, &mut effects);
        self.shared.apply_in_call(effects);
        found
    }

    /// What to call when a release of a key is heard from Redis: its first waiter here tries
    /// at once. Holds the lane weakly.
    pub(crate) fn release_listener(&self) -> impl Fn(&str) + 'static {
        let shared = Rc::downgrade(&self.shared);
        move |key| {
            if let Some(shared) = shared.upgrade() {
                let mut effects = Effects::default();
                wait::hand_over(&shared, key, &mut effects);
                shared.apply_in_call(effects);
            }
        }
    }

    /// Makes `call` on the lane if every socket it needs is open, returning the promise its
    /// replies settle; `None` means: take the runtime path (idle sockets start opening in the
    /// background, for later calls).
    pub(crate) fn call(&self, env: &Env, call: LaneCall<'_>) -> Option<Result<sys::napi_value>> {
        let shared = &self.shared;
        if shared.nodes.is_empty() || *shared.closed.borrow() {
            return None;
        }
        let mut ios = Vec::with_capacity(shared.nodes.len());
        for node in &shared.nodes {
            // Visit every node, so all closed sockets start (re)opening, not only the first.
            if let Some(io) = node.ready(&shared.lane_env, &shared.locker) {
                ios.push(io);
            }
        }
        if ios.len() < shared.nodes.len() {
            return None;
        }
        Some(if ios.len() == 1 {
            let deadline = Instant::now() + shared.nodes[0].config.command_timeout;
            shared.single(env, &ios[0], call, deadline)
        } else {
            shared.quorum(env, ios, call)
        })
    }

    /// Closes the lane: its pending calls and waiters reject with `closed`. On the JS thread.
    pub(crate) fn close(&self, env: &Env) {
        let shared = &self.shared;
        *shared.closed.borrow_mut() = true;
        let mut effects = Effects::default();
        wait::end_all(shared, &io::closed_error(), &mut effects);
        shared.apply_in_call(effects);
        for node in &shared.nodes {
            let previous = node.phase.replace(Phase::Idle { open_after: None });
            if let Phase::Ready(io) = previous {
                io::shut(&io, Some(env.raw()), io::closed_error());
            }
        }
    }
}

impl LaneShared {
    fn single(
        self: &Rc<Self>,
        env: &Env,
        io: &Rc<RefCell<Io>>,
        call: LaneCall<'_>,
        deadline: Instant,
    ) -> Result<sys::napi_value> {
        let now = tokio::time::Instant::now();
        let mut turn = Turn::Nobody;
        let (command, op) = match call {
            LaneCall::Acquire {
                key,
                ttl,
                auto_extend,
                lease,
            } => {
                let call = AcquireCall::new(key, ttl, auto_extend, lease);
                let command = wire::acquire_command(key, &call.token, ttl, self.locker.fencing());
                (command, Op::Acquire(call))
            }
            LaneCall::Release { key, token } => {
                turn = wait::next_in_line(self, key);
                let command = match turn {
                    Turn::HandOver(_) => wire::release_command_handing_over(key, token),
                    Turn::Open | Turn::Nobody => wire::release_command(key, token),
                };
                let op = Op::Release {
                    key: key.to_owned(),
                    open: matches!(turn, Turn::Open).then(|| Rc::downgrade(self)),
                };
                (command, op)
            }
            LaneCall::Extend { key, token, ttl } => (
                wire::extend_command(key, token, ttl),
                Op::Extend {
                    token: token.to_owned(),
                    ttl,
                    sent_at: now,
                },
            ),
            LaneCall::Exists { key } => (wire::exists_command(key), Op::Flag),
        };
        let promise = io::submit(io, env.raw(), command, op, deadline)?;
        if let Turn::HandOver(waiter) = turn {
            // Hand-over: the waiter's attempt goes out right behind the release.
            let mut effects = Effects::default();
            wait::attempt(&waiter, &mut effects);
            self.apply_in_call(effects);
        }
        Ok(promise)
    }

    fn quorum(
        &self,
        env: &Env,
        ios: Vec<Rc<RefCell<Io>>>,
        call: LaneCall<'_>,
    ) -> Result<sys::napi_value> {
        let now = tokio::time::Instant::now();
        let (op, command): (QuorumOp, Box<dyn Fn() -> wire::WireCommand>) = match call {
            LaneCall::Acquire {
                key,
                ttl,
                auto_extend,
                lease,
            } => {
                let call = AcquireCall::new(key, ttl, auto_extend, lease);
                let fencing = self.locker.fencing();
                let (k, t) = (key.to_owned(), call.token.clone());
                let command = Box::new(move || wire::acquire_command(&k, &t, ttl, fencing));
                (QuorumOp::Acquire(call), command)
            }
            LaneCall::Release { key, token } => {
                let (k, t) = (key.to_owned(), token.to_owned());
                let op = QuorumOp::Release {
                    key: key.to_owned(),
                };
                (op, Box::new(move || wire::release_command(&k, &t)))
            }
            LaneCall::Extend { key, token, ttl } => {
                let (k, t) = (key.to_owned(), token.to_owned());
                let op = QuorumOp::Extend {
                    token: token.to_owned(),
                    ttl,
                    sent_at: now,
                };
                (op, Box::new(move || wire::extend_command(&k, &t, ttl)))
            }
            LaneCall::Exists { key } => {
                let k = key.to_owned();
                (QuorumOp::Exists, Box::new(move || wire::exists_command(&k)))
            }
        };
        let (deferred, promise) = io::new_promise(env.raw())?;
        let targets = self.nodes.iter().map(|n| n.config.target()).collect();
        let call = Rc::new(RefCell::new(QuorumCall::new(
            deferred,
            op,
            self.locker.clone(),
            ios.clone(),
            targets,
        )));
        for (index, (io, node)) in ios.iter().zip(&self.nodes).enumerate() {
            let deadline = Instant::now() + node.config.command_timeout;
            io::submit_member(io, &call, index, command(), deadline);
        }
        Ok(promise)
    }

    pub(crate) fn command_timeout(&self) -> Duration {
        self.nodes
            .first()
            .map_or(Duration::from_secs(1), |n| n.config.command_timeout)
    }

    /// The single server's open socket, if it is open.
    pub(crate) fn single_io(&self) -> Option<Rc<RefCell<Io>>> {
        match self.nodes.as_slice() {
            [node] => match &*node.phase.borrow() {
                Phase::Ready(io) if !io.borrow().is_closing() => Some(io.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Acts on `effects` during a napi call (microtasks run after it returns).
    fn apply_in_call(&self, effects: Effects) {
        unsafe { io::apply(effects, &self.lane_env, None, None) };
    }

    /// Acts on `effects` from a libuv callback: in a callback scope, whose end runs microtasks.
    pub(crate) fn apply_in_callback(&self, effects: Effects) {
        let scope = (!self.resource.is_null()).then_some((self.resource, self.async_context));
        unsafe { io::apply(effects, &self.lane_env, scope, None) };
    }
}

impl LaneShared {
    /// Each socket closes once its pending calls have settled.
    fn abandon_nodes(&self) {
        for node in &self.nodes {
            if let Phase::Ready(io) = node.phase.replace(Phase::Idle { open_after: None }) {
                io::abandon(&io);
            }
        }
    }

    /// A waiter finished: if the Lock is gone and nobody waits any more, close the sockets.
    pub(crate) fn waiter_done(&self) {
        if self.dropped.get() && self.waiting.borrow().is_empty() {
            self.abandon_nodes();
        }
    }
}

impl Drop for LaneShared {
    fn drop(&mut self) {
        if self.lane_env.is_gone() {
            return;
        }
        let env = self.lane_env.env();
        unsafe {
            sys::napi_remove_env_cleanup_hook(
                env,
                Some(on_env_cleanup),
                self as *const LaneShared as *mut std::ffi::c_void,
            );
            if !self.resource.is_null() {
                sys::napi_async_destroy(env, self.async_context);
                sys::napi_delete_reference(env, self.resource);
            }
        }
    }
}

/// The environment is being torn down: end the waiters (nothing is settled any more) so their
/// timers close before the loop does.
unsafe extern "C" fn on_env_cleanup(arg: *mut std::ffi::c_void) {
    let shared = unsafe { &*(arg as *const LaneShared) };
    shared.lane_env.set_gone();
    let mut ignored = Effects::default();
    wait::end_all(shared, &io::closed_error(), &mut ignored);
}

impl Node {
    /// The open socket, or `None` (then it starts opening in the background if it was idle).
    fn ready(&self, lane_env: &Rc<LaneEnv>, locker: &Arc<Locker>) -> Option<Rc<RefCell<Io>>> {
        let retry_later = || Phase::Idle {
            open_after: Some(Instant::now() + REOPEN_AFTER),
        };
        let opened = {
            let mut phase = self.phase.borrow_mut();
            match &*phase {
                Phase::Ready(io) if !io.borrow().is_closing() => return Some(io.clone()),
                Phase::Ready(_) => {
                    *phase = retry_later();
                    return None;
                }
                Phase::Idle { open_after } => {
                    if open_after.is_some_and(|at| Instant::now() < at) {
                        return None;
                    }
                    let slot = Arc::new(Mutex::new(None));
                    let (filled, config) = (slot.clone(), self.config.clone());
                    napi::bindgen_prelude::spawn(async move {
                        let opened = wire::open_stream(&config).await;
                        *filled.lock().unwrap_or_else(|p| p.into_inner()) = Some(opened);
                    });
                    *phase = Phase::Opening(slot);
                    return None;
                }
                Phase::Opening(slot) => {
                    let taken = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                    match taken {
                        None => return None,
                        Some(Err(_)) => {
                            // The runtime path reports the failure on its own calls.
                            *phase = retry_later();
                            return None;
                        }
                        Some(Ok(stream)) => stream,
                    }
                }
            }
        };
        // Installed with the phase not borrowed: it runs async hooks, which may run JS.
        let installed = Io::install(
            lane_env,
            opened,
            locker.clone(),
            self.config.target(),
            self.config.command_timeout,
        );
        let mut phase = self.phase.borrow_mut();
        match installed {
            Some(io) => {
                *phase = Phase::Ready(io.clone());
                Some(io)
            }
            None => {
                *phase = retry_later();
                None
            }
        }
    }
}

impl Drop for Lane {
    /// The locker was collected: the sockets close once the pending calls have settled and the
    /// waiters (who keep the lane alive) are done.
    fn drop(&mut self) {
        self.shared.dropped.set(true);
        self.shared.waiter_done();
    }
}

/// `SDL_EVENT_LOOP_LANE=0` turns the lane off (every call takes the runtime path).
fn enabled_by_env() -> bool {
    std::env::var("SDL_EVENT_LOOP_LANE").map_or(true, |v| v != "0")
}

//! The lane's socket on Node's event loop: a poll handle for the socket, prepare and check
//! handles that write what the turn queued, a timer for the oldest reply's deadline.
//!
//! Replies come in the order of the commands, so the pending calls are a queue. A reply that
//! cannot be matched (a broken or silent connection) fails every pending call and closes the
//! lane; the runtime path takes over and the lane reopens later.
//!
//! Ownership: the `Io` is shared (`Rc`) by the lane and by each open handle and the environment's
//! cleanup hook; each gives its count back when it closes. Nothing here holds the `RefCell`
//! borrowed while JS runs: promises are settled after the borrow ends, in a callback scope that
//! then runs the microtasks (which may queue more calls).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::io::{ErrorKind, Read, Write};
use std::ptr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use napi::bindgen_prelude::*;
use napi::sys;
use sdl_engine::wire::{self, RawStream, Reply, ReplyReader, WireCommand};
use sdl_engine::{EngineError, ErrorKind as EngineErrorKind, Locker};

use super::env::LaneEnv;
use super::quorum::QuorumCall;
use super::uv::{self, Handle, Uv};
use super::wait::{self, AttemptReply, Waiter};
use super::{AcquireCall, LaneShared};
use crate::completions::{Outcome, settle};
use crate::errors::failed;

/// What a pending call does with its reply.
pub(crate) enum Op {
    /// A single acquire attempt.
    Acquire(AcquireCall),
    /// An extend: `1` is true, and moves the tracked lease's deadline.
    Extend {
        token: String,
        ttl: Duration,
        sent_at: tokio::time::Instant,
    },
    /// A release: true if it deleted the key; wakes this Locker's runtime waiters for the key.
    /// `open`: a release made in the open by this lane (nobody queued behind it), whose waiters
    /// here then get their turn (see `wait::after_open_release`).
    Release {
        key: String,
        open: Option<Weak<LaneShared>>,
    },
    /// EXISTS: `1` is true.
    Flag,
}

/// Whom a reply answers.
enum Target {
    /// A call's own promise.
    Promise(sys::napi_deferred),
    /// Master `usize`'s part of a Redlock call.
    Member(Rc<RefCell<QuorumCall>>, usize),
    /// A waiting acquire's attempt, with its token and send time.
    Waiter(Rc<RefCell<Waiter>>, String, tokio::time::Instant),
    /// Nobody: a clean-up release after a refused Redlock acquire.
    Ignore,
}

struct Pending {
    target: Target,
    op: Op,
    command: WireCommand,
    deadline: Instant,
}

/// What handling replies produced, acted on once no `Io` is borrowed: promises to settle, and
/// commands to queue on (other) masters' sockets.
#[derive(Default)]
pub(crate) struct Effects {
    pub(crate) settlements: Vec<(sys::napi_deferred, Outcome)>,
    pub(crate) releases: Vec<GiveBack>,
    pub(crate) waiter_replies: Vec<(Rc<RefCell<Waiter>>, AttemptReply)>,
    /// Open releases made here that deleted their key, with how many other subscribers heard.
    pub(crate) open_releases: Vec<(Weak<LaneShared>, String, i64)>,
}

/// A lock to give back that nobody waits for: a refused Redlock acquire's grants, a cancelled
/// waiter's late grant. On the master's lane socket when it is open (behind that master's own
/// attempt), else on the runtime, so it is never dropped.
pub(crate) struct GiveBack {
    pub(crate) io: Option<Rc<RefCell<Io>>>,
    pub(crate) locker: Arc<Locker>,
    pub(crate) key: String,
    pub(crate) token: String,
}

pub(crate) struct Io {
    lane_env: Rc<LaneEnv>,
    uv: &'static Uv,
    stream: Option<RawStream>,
    poll: *mut Handle,
    timer: *mut Handle,
    prepare: *mut Handle,
    check: *mut Handle,
    out: Vec<u8>,
    reader: ReplyReader,
    pending: VecDeque<Pending>,
    events: c_int,
    flushing: bool,
    closing: bool,
    abandoned: bool,
    hook: *const RefCell<Io>,
    async_context: sys::napi_async_context,
    resource: sys::napi_ref,
    locker: Arc<Locker>,
    target: String,
    command_timeout: Duration,
}

impl Io {
    /// Puts an opened socket on this environment's event loop. `None` if libuv refuses.
    pub(crate) fn install(
        lane_env: &Rc<LaneEnv>,
        stream: RawStream,
        locker: Arc<Locker>,
        target: String,
        command_timeout: Duration,
    ) -> Option<Rc<RefCell<Io>>> {
        let env = lane_env.env();
        let uv = uv::uv()?;
        let fd = raw_fd(&stream)?;
        set_nonblocking(&stream).ok()?;
        let mut event_loop = ptr::null_mut();
        unsafe { sys::napi_get_uv_event_loop(env, &mut event_loop) };
        if event_loop.is_null() {
            return None;
        }
        let (async_context, resource) = unsafe { async_context(env)? };
        let io = Rc::new(RefCell::new(Io {
            lane_env: lane_env.clone(),
            uv,
            stream: Some(stream),
            poll: uv.alloc_handle(),
            timer: uv.alloc_handle(),
            prepare: uv.alloc_handle(),
            check: uv.alloc_handle(),
            out: Vec::with_capacity(4096),
            reader: ReplyReader::new(),
            pending: VecDeque::new(),
            events: uv::READABLE,
            flushing: false,
            closing: false,
            abandoned: false,
            hook: ptr::null(),
            async_context,
            resource,
            locker,
            target,
            command_timeout,
        }));
        let (handles, inits) = {
            let me = io.borrow();
            let handles = [me.poll, me.timer, me.prepare, me.check];
            let inits = unsafe {
                [
                    (uv.poll_init_socket)(event_loop.cast(), me.poll, fd),
                    (uv.timer_init)(event_loop.cast(), me.timer),
                    (uv.prepare_init)(event_loop.cast(), me.prepare),
                    (uv.check_init)(event_loop.cast(), me.check),
                ]
            };
            (handles, inits)
        };
        if inits.iter().any(|&r| r != 0) {
            // Close what did initialize (libuv still knows it), free what did not.
            for (handle, init) in handles.into_iter().zip(inits) {
                if init == 0 {
                    unsafe { (uv.close)(handle, Some(free_only)) };
                } else {
                    uv.free_handle(handle);
                }
            }
            return None;
        }
        for handle in handles {
            // Each handle holds the Io until its close callback gives it back.
            unsafe {
                (uv.set_data)(handle, Rc::into_raw(io.clone()) as *mut c_void);
                (uv.unref_handle)(handle);
            }
        }
        let polling = unsafe { (uv.poll_start)(handles[0], uv::READABLE, on_poll) } == 0;
        if !polling {
            let mut ignored = Effects::default();
            io.borrow_mut().shut_down(&closed_error(), &mut ignored);
            return None;
        }
        let hook = Rc::into_raw(io.clone());
        io.borrow_mut().hook = hook;
        unsafe { sys::napi_add_env_cleanup_hook(env, Some(on_env_cleanup), hook as *mut c_void) };
        Some(io)
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing
    }

    /// Writes as much of the queued output as the socket takes now.
    fn flush(&mut self) -> std::result::Result<(), EngineError> {
        let mut written = 0;
        let result = loop {
            if written == self.out.len() {
                break Ok(());
            }
            let Some(stream) = self.stream.as_mut() else {
                break Ok(());
            };
            match write(stream, &self.out[written..]) {
                Ok(0) => break Err(self.broken("the connection closed")),
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(self.broken(&e.to_string())),
            }
        };
        self.out.drain(..written);
        let want = if self.out.is_empty() {
            uv::READABLE
        } else {
            uv::READABLE | uv::WRITABLE
        };
        if want != self.events && !self.closing {
            self.events = want;
            unsafe { (self.uv.poll_start)(self.poll, want, on_poll) };
        }
        if self.out.is_empty() && self.flushing {
            self.flushing = false;
            unsafe {
                (self.uv.prepare_stop)(self.prepare);
                (self.uv.check_stop)(self.check);
            }
        }
        result
    }

    /// Reads what arrived and pairs replies with pending calls.
    fn read(&mut self, effects: &mut Effects) -> std::result::Result<(), EngineError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Ok(());
            };
            match read(stream, &mut chunk) {
                Ok(0) => return Err(self.broken("the connection closed")),
                Ok(n) => {
                    self.reader.feed(&chunk[..n]);
                    if n < chunk.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.broken(&e.to_string())),
            }
        }
        loop {
            match self.reader.next_reply() {
                Ok(Some(reply)) => {
                    let Some(pending) = self.pending.pop_front() else {
                        return Err(self.broken("a reply came that nothing asked for"));
                    };
                    self.answer(pending, reply, effects);
                }
                Ok(None) => return Ok(()),
                Err(bad) => return Err(self.broken(&bad)),
            }
        }
    }

    fn answer(&mut self, pending: Pending, reply: Reply, effects: &mut Effects) {
        if let Reply::Error(message) = &reply
            && message.starts_with("NOSCRIPT")
            && let Some(eval) = pending.command.eval_fallback()
        {
            // The server lost its script cache (a restart): send the script itself.
            self.out.extend_from_slice(&eval);
            self.pending.push_back(pending);
            self.schedule_flush();
            return;
        }
        let deferred = match pending.target {
            Target::Promise(deferred) => deferred,
            Target::Member(call, index) => {
                let answer = call.borrow().answer_of(&reply, &self.target);
                call.borrow_mut().record(index, answer, effects);
                return;
            }
            Target::Waiter(waiter, token, sent_at) => {
                let attempt = match &reply {
                    Reply::Error(message) => {
                        AttemptReply::Failed(wire::reply_error(message, &self.target))
                    }
                    _ => match wire::acquired(&reply) {
                        Ok(Some(fence)) => AttemptReply::Granted {
                            token,
                            fence,
                            sent_at,
                        },
                        Ok(None) => AttemptReply::Held,
                        Err(bad) => {
                            AttemptReply::Failed(EngineError::new(EngineErrorKind::Redis, bad))
                        }
                    },
                };
                effects.waiter_replies.push((waiter, attempt));
                return;
            }
            Target::Ignore => return,
        };
        if let Reply::Error(message) = &reply {
            let err = wire::reply_error(message, &self.target);
            effects.settlements.push((deferred, failed(err)));
            return;
        }
        let outcome = self.outcome(pending.op, &reply, effects);
        effects.settlements.push((deferred, outcome));
    }

    /// A single server's reply to `op`, as the call's outcome.
    fn outcome(&self, op: Op, reply: &Reply, effects: &mut Effects) -> Outcome {
        let unexpected = |bad: String| failed(EngineError::new(EngineErrorKind::Redis, bad));
        match op {
            Op::Flag => wire::is_one(reply).map_or_else(unexpected, Outcome::Flag),
            Op::Release { key, open } => match wire::released(reply) {
                Ok(told) => {
                    if let Some(told) = told {
                        self.locker.note_released(&key);
                        if let Some(lane) = open {
                            effects.open_releases.push((lane, key, told));
                        }
                    }
                    Outcome::Flag(told.is_some())
                }
                Err(bad) => unexpected(bad),
            },
            Op::Extend {
                token,
                ttl,
                sent_at,
            } => match wire::is_one(reply) {
                Ok(extended) => {
                    if extended {
                        self.locker.note_extended(&token, sent_at, ttl);
                    }
                    Outcome::Flag(extended)
                }
                Err(bad) => unexpected(bad),
            },
            Op::Acquire(call) => match wire::acquired(reply) {
                Ok(Some(fence)) => call.granted(&self.locker, fence),
                Ok(None) => call.refused(),
                Err(bad) => unexpected(bad),
            },
        }
    }

    fn schedule_flush(&mut self) {
        if !self.flushing && !self.closing {
            self.flushing = true;
            unsafe {
                (self.uv.prepare_start)(self.prepare, on_flush);
                (self.uv.check_start)(self.check, on_flush);
            }
        }
    }

    /// Keeps the loop alive, and the deadline timer running, exactly while calls are pending.
    fn track_pending(&mut self, was_empty: bool) {
        let now_empty = self.pending.is_empty();
        if was_empty == now_empty || self.closing {
            return;
        }
        unsafe {
            if now_empty {
                (self.uv.unref_handle)(self.poll);
                (self.uv.timer_stop)(self.timer);
            } else {
                (self.uv.ref_handle)(self.poll);
                self.arm_timer();
            }
        }
    }

    unsafe fn arm_timer(&self) {
        if let Some(front) = self.pending.front() {
            let wait = front.deadline.saturating_duration_since(Instant::now());
            unsafe { (self.uv.timer_start)(self.timer, on_timer, wait.as_millis() as u64 + 1, 0) };
        }
    }

    fn broken(&self, why: &str) -> EngineError {
        EngineError::new(
            EngineErrorKind::Connection,
            format!("connection to Redis at {} failed: {why}", self.target),
        )
    }

    /// Fails every pending call with `err` and closes the handles (and then the socket).
    fn shut_down(&mut self, err: &EngineError, effects: &mut Effects) {
        for pending in self.pending.drain(..) {
            match pending.target {
                Target::Promise(deferred) => {
                    effects.settlements.push((deferred, failed(err.clone())))
                }
                Target::Member(call, index) => call.borrow_mut().record(
                    index,
                    super::quorum::Answer::Failed(err.clone()),
                    effects,
                ),
                Target::Waiter(waiter, _, _) => effects
                    .waiter_replies
                    .push((waiter, AttemptReply::Failed(err.clone()))),
                Target::Ignore => {}
            }
        }
        if self.closing {
            return;
        }
        self.closing = true;
        self.out.clear();
        unsafe {
            for (handle, close) in [
                (self.poll, on_poll_closed as uv::HandleCb),
                (self.timer, on_handle_closed as uv::HandleCb),
                (self.prepare, on_handle_closed as uv::HandleCb),
                (self.check, on_handle_closed as uv::HandleCb),
            ] {
                (self.uv.close)(handle, Some(close));
            }
            if !self.hook.is_null() {
                if !self.lane_env.is_gone() {
                    sys::napi_remove_env_cleanup_hook(
                        self.lane_env.env(),
                        Some(on_env_cleanup),
                        self.hook as *mut c_void,
                    );
                }
                drop(Rc::from_raw(self.hook));
                self.hook = ptr::null();
            }
        }
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        if !self.lane_env.is_gone() {
            let env = self.lane_env.env();
            unsafe {
                sys::napi_async_destroy(env, self.async_context);
                sys::napi_delete_reference(env, self.resource);
            }
        }
    }
}

/// Queues a call and returns its promise. On the JS thread, in a napi call.
pub(crate) fn submit(
    io: &Rc<RefCell<Io>>,
    env: sys::napi_env,
    command: WireCommand,
    op: Op,
    deadline: Instant,
) -> Result<sys::napi_value> {
    let (deferred, promise) = new_promise(env)?;
    enqueue(io, Target::Promise(deferred), command, op, deadline);
    Ok(promise)
}

/// Queues master `index`'s part of a Redlock call.
pub(crate) fn submit_member(
    io: &Rc<RefCell<Io>>,
    call: &Rc<RefCell<QuorumCall>>,
    index: usize,
    command: WireCommand,
    deadline: Instant,
) {
    enqueue(
        io,
        Target::Member(call.clone(), index),
        command,
        Op::Flag,
        deadline,
    );
}

/// Queues a waiting acquire's attempt.
pub(crate) fn submit_attempt(
    io: &Rc<RefCell<Io>>,
    waiter: &Rc<RefCell<Waiter>>,
    token: String,
    sent_at: tokio::time::Instant,
    command: WireCommand,
    deadline: Instant,
) {
    let target = Target::Waiter(waiter.clone(), token, sent_at);
    enqueue(io, target, command, Op::Flag, deadline);
}

pub(crate) fn new_promise(env: sys::napi_env) -> Result<(sys::napi_deferred, sys::napi_value)> {
    let mut deferred = ptr::null_mut();
    let mut promise = ptr::null_mut();
    let status = unsafe { sys::napi_create_promise(env, &mut deferred, &mut promise) };
    if status != sys::Status::napi_ok {
        return Err(Error::new(
            Status::GenericFailure,
            "cannot create a promise",
        ));
    }
    Ok((deferred, promise))
}

fn enqueue(io: &Rc<RefCell<Io>>, target: Target, command: WireCommand, op: Op, deadline: Instant) {
    let mut me = io.borrow_mut();
    if me.closing {
        // Only clean-up releases get here after a close; the lock expires at its ttl then.
        return;
    }
    let was_empty = me.pending.is_empty();
    me.out.extend_from_slice(&command.bytes);
    me.pending.push_back(Pending {
        target,
        op,
        command,
        deadline,
    });
    me.track_pending(was_empty);
    me.schedule_flush();
}

/// Does what handling replies asked for, once no `Io` is borrowed: queues the clean-up
/// commands, then settles the promises in a callback scope (their microtasks run at its end).
///
/// From a socket's read (`reading`), many settlements are made in slices of `SETTLE_SLICE`: after
/// each slice the scope closes, so the continuations run and queue their next commands, and that
/// socket is written at once. Redis then works on the first slice's commands while this thread
/// settles the rest, instead of each side idling while the other works through a whole batch.
pub(crate) unsafe fn apply(
    mut effects: Effects,
    lane_env: &LaneEnv,
    scope: Option<(sys::napi_ref, sys::napi_async_context)>,
    reading: Option<&RefCell<Io>>,
) {
    // A waiter's reply may queue its next attempt (or end it): before settling anything.
    while !effects.waiter_replies.is_empty() {
        for (waiter, reply) in std::mem::take(&mut effects.waiter_replies) {
            wait::on_reply(&waiter, reply, &mut effects);
        }
    }
    // A waiter here may take a lock released in the open; after the replies above, so that a
    // waiter whose attempt came back in the same read counts as idle.
    for (lane, key, told) in std::mem::take(&mut effects.open_releases) {
        if let Some(lane) = lane.upgrade() {
            wait::after_open_release(&lane, &key, told, &mut effects);
        }
    }
    for give_back in effects.releases {
        let open = give_back.io.filter(|io| !io.borrow().closing);
        match open {
            Some(io) => {
                let deadline = Instant::now() + io.borrow().command_timeout();
                let command = wire::release_command(&give_back.key, &give_back.token);
                enqueue(&io, Target::Ignore, command, Op::Flag, deadline);
            }
            None => {
                let GiveBack {
                    locker, key, token, ..
                } = give_back;
                napi::bindgen_prelude::spawn(async move {
                    // Best effort: if Redis is unreachable too, the lock expires at its ttl.
                    let _ = locker.release(&key, &token).await;
                });
            }
        }
    }
    if effects.settlements.is_empty() || lane_env.is_gone() {
        return;
    }
    let env = lane_env.env();
    let slice = match (scope, reading) {
        (Some(_), Some(_)) => SETTLE_SLICE,
        _ => usize::MAX,
    };
    let mut settlements = effects.settlements.into_iter().peekable();
    while settlements.peek().is_some() {
        if lane_env.is_gone() {
            // The environment went away during the previous slice's continuations.
            return;
        }
        unsafe {
            let mut handle_scope = ptr::null_mut();
            sys::napi_open_handle_scope(env, &mut handle_scope);
            let mut callback_scope = ptr::null_mut();
            if let Some((resource, async_context)) = scope {
                let mut object = ptr::null_mut();
                sys::napi_get_reference_value(env, resource, &mut object);
                sys::napi_open_callback_scope(env, object, async_context, &mut callback_scope);
            }
            for (deferred, outcome) in settlements.by_ref().take(slice) {
                settle(env, lane_env.error_classes(), deferred, outcome);
            }
            if !callback_scope.is_null() {
                sys::napi_close_callback_scope(env, callback_scope);
            }
            sys::napi_close_handle_scope(env, handle_scope);
        }
        if settlements.peek().is_some()
            && let Some(cell) = reading
            && let Ok(mut io) = cell.try_borrow_mut()
            && !io.closing
        {
            // A write error shows again on the next poll, which shuts the socket down.
            let _ = io.flush();
        }
    }
}

/// Settlements per callback scope when a read brought many replies (see `apply`).
const SETTLE_SLICE: usize = 16;

pub(crate) fn shut(io: &Rc<RefCell<Io>>, env: Option<sys::napi_env>, err: EngineError) {
    let mut effects = Effects::default();
    let lane_env = {
        let mut me = io.borrow_mut();
        me.shut_down(&err, &mut effects);
        me.lane_env.clone()
    };
    if env.is_some() {
        // In a napi call already: no callback scope needed, microtasks run after it returns.
        unsafe { apply(effects, &lane_env, None, None) };
    }
}

/// The locker is gone: close now if idle, else once the pending calls settle.
pub(crate) fn abandon(io: &Rc<RefCell<Io>>) {
    let idle = {
        let mut me = io.borrow_mut();
        me.abandoned = true;
        me.pending.is_empty()
    };
    if idle {
        shut(io, None, closed_error());
    }
}

pub(crate) fn closed_error() -> EngineError {
    EngineError::closed()
}

/// Runs `body` with the Io borrowed, then acts on what it produced (see `apply`).
unsafe fn with_io(handle: *mut Handle, body: impl FnOnce(&mut Io, &mut Effects)) {
    let Some(uv) = uv::uv() else { return };
    let data = unsafe { (uv.get_data)(handle) } as *const RefCell<Io>;
    if data.is_null() {
        return;
    }
    let cell = unsafe { &*data };
    let mut effects = Effects::default();
    let (lane_env, resource, async_context) = {
        let mut me = cell.borrow_mut();
        if me.closing {
            return;
        }
        let was_empty = me.pending.is_empty();
        body(&mut me, &mut effects);
        me.track_pending(was_empty);
        if me.abandoned && me.pending.is_empty() && !me.closing {
            me.shut_down(&closed_error(), &mut effects);
        }
        (me.lane_env.clone(), me.resource, me.async_context)
    };
    unsafe {
        apply(
            effects,
            &lane_env,
            Some((resource, async_context)),
            Some(cell),
        )
    };
}

unsafe extern "C" fn on_poll(handle: *mut Handle, status: c_int, events: c_int) {
    unsafe {
        with_io(handle, |io, effects| {
            let outcome = if status < 0 {
                Err(io.broken(&format!("poll error {status}")))
            } else {
                let mut result = Ok(());
                if events & uv::WRITABLE != 0 {
                    result = io.flush();
                }
                if result.is_ok() && events & uv::READABLE != 0 {
                    result = io.read(effects);
                }
                result
            };
            if let Err(err) = outcome {
                io.shut_down(&err, effects);
            }
        })
    };
}

unsafe extern "C" fn on_flush(handle: *mut Handle) {
    unsafe {
        with_io(handle, |io, effects| {
            if let Err(err) = io.flush() {
                io.shut_down(&err, effects);
            }
        })
    };
}

unsafe extern "C" fn on_timer(handle: *mut Handle) {
    unsafe {
        with_io(handle, |io, effects| {
            let expired = io
                .pending
                .front()
                .is_some_and(|p| p.deadline <= Instant::now());
            if expired {
                let err = io.timeout_error();
                io.shut_down(&err, effects);
            } else {
                io.arm_timer();
            }
        })
    };
}

impl Io {
    pub(crate) fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    fn timeout_error(&self) -> EngineError {
        EngineError::new(
            EngineErrorKind::Timeout,
            format!(
                "Redis at {} did not answer within {} ms",
                self.target,
                self.command_timeout.as_millis()
            ),
        )
    }
}

/// A handle finished closing: give back its count on the Io, free its memory.
unsafe extern "C" fn on_handle_closed(handle: *mut Handle) {
    let Some(uv) = uv::uv() else { return };
    let data = unsafe { (uv.get_data)(handle) } as *const RefCell<Io>;
    uv.free_handle(handle);
    if !data.is_null() {
        drop(unsafe { Rc::from_raw(data) });
    }
}

/// A handle that never got its data: only its memory to free.
unsafe extern "C" fn free_only(handle: *mut Handle) {
    if let Some(uv) = uv::uv() {
        uv.free_handle(handle);
    }
}

unsafe extern "C" fn on_poll_closed(handle: *mut Handle) {
    // The socket may close only once its poll handle is closed.
    let Some(uv) = uv::uv() else { return };
    let data = unsafe { (uv.get_data)(handle) } as *const RefCell<Io>;
    if !data.is_null()
        && let Ok(mut io) = unsafe { &*data }.try_borrow_mut()
    {
        io.stream = None;
    }
    unsafe { on_handle_closed(handle) };
}

/// Node is tearing the environment down: close the handles (no JS may run any more).
unsafe extern "C" fn on_env_cleanup(arg: *mut c_void) {
    let cell = arg as *const RefCell<Io>;
    if cell.is_null() {
        return;
    }
    let mut ignored = Effects::default();
    if let Ok(mut io) = unsafe { &*cell }.try_borrow_mut() {
        io.lane_env.set_gone();
        // shut_down drops this hook's count (the hook itself is being run, so not removed).
        io.shut_down(&closed_error(), &mut ignored);
    }
    // The deferreds and clean-ups of `ignored` die with the environment.
}

pub(crate) unsafe fn async_context(
    env: sys::napi_env,
) -> Option<(sys::napi_async_context, sys::napi_ref)> {
    unsafe {
        let mut resource = ptr::null_mut();
        sys::napi_create_object(env, &mut resource);
        let mut reference = ptr::null_mut();
        sys::napi_create_reference(env, resource, 1, &mut reference);
        let name = "simple-distributed-lock";
        let mut name_value = ptr::null_mut();
        sys::napi_create_string_utf8(
            env,
            name.as_ptr().cast(),
            name.len() as isize,
            &mut name_value,
        );
        let mut context = ptr::null_mut();
        if sys::napi_async_init(env, resource, name_value, &mut context) != sys::Status::napi_ok {
            sys::napi_delete_reference(env, reference);
            return None;
        }
        Some((context, reference))
    }
}

#[cfg(unix)]
fn raw_fd(stream: &RawStream) -> Option<c_int> {
    use std::os::fd::AsRawFd;
    Some(match stream {
        RawStream::Tcp(s) => s.as_raw_fd(),
        RawStream::Unix(s) => s.as_raw_fd(),
    })
}

#[cfg(not(unix))]
fn raw_fd(_: &RawStream) -> Option<c_int> {
    None
}

fn set_nonblocking(stream: &RawStream) -> std::io::Result<()> {
    match stream {
        RawStream::Tcp(s) => s.set_nonblocking(true),
        #[cfg(unix)]
        RawStream::Unix(s) => s.set_nonblocking(true),
    }
}

fn write(stream: &mut RawStream, bytes: &[u8]) -> std::io::Result<usize> {
    match stream {
        RawStream::Tcp(s) => s.write(bytes),
        #[cfg(unix)]
        RawStream::Unix(s) => s.write(bytes),
    }
}

fn read(stream: &mut RawStream, into: &mut [u8]) -> std::io::Result<usize> {
    match stream {
        RawStream::Tcp(s) => s.read(into),
        #[cfg(unix)]
        RawStream::Unix(s) => s.read(into),
    }
}

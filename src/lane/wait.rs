//! Waiting acquires on the lane (one plain server): the engine's `WaitPlan` decides when to try
//! again; the attempts, the timers and the hand-over all stay on the JS thread.
//!
//! Hand-over: when this process releases a lock through the lane, the first waiter for it gets
//! its attempt queued right behind the release, in the same write. Redis runs a client's
//! pipelined commands back to back, so the waiter takes the lock one round trip after the
//! holder let it go, and waiters of one process take it in the order they came (first in,
//! first served). Such a release publishes nothing: waiters elsewhere would only wake to find
//! the lock taken again.
//!
//! Fairness between processes: after `HAND_OVER_STREAK` hand-overs in a row, a release is made
//! in the open (published, no attempt behind it). The release script says how many subscribers
//! heard it: if any besides this lane's own, its first waiter holds back for `YIELD` while
//! theirs, woken by the release, take the lock; if not, it tries as soon as the release's reply
//! is in. (An open release is always made when no waiter here is idle.) If a hand-over release
//! meets NOSCRIPT, its EVAL runs after the waiter's attempt and is an open release, so nobody is
//! left sleeping. A new waiting acquire that finds waiters of this lane already queued for the
//! key joins the queue without trying (no barging past them, and no attempt bound to fail).
//! Without the streak, a process with steady demand for a lock would keep it for as long as the
//! demand lasts, and waiters elsewhere would starve.
//!
//! A release by another process is heard through the engine's subscriber and gives the first
//! waiter an attempt at once. Notified and handed-over attempts are free: the retry budget
//! counts only the timed attempts, as on the runtime path.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::c_void;
use std::ptr;
use std::rc::Rc;
use std::time::Duration;

use napi::sys;
use sdl_engine::{EngineError, ReleaseWatch, WaitPlan, wire};

use super::AcquireCall;
use super::LaneShared;
use super::io::{self, Effects, GiveBack};
use super::uv::{self, Handle};
use crate::completions::Outcome;
use crate::errors::failed;

/// What the server said to a waiter's attempt.
pub(crate) enum AttemptReply {
    Granted {
        token: String,
        fence: Option<i64>,
        sent_at: tokio::time::Instant,
    },
    Held,
    Failed(EngineError),
}

pub(crate) struct Waiter {
    deferred: Option<sys::napi_deferred>,
    key: String,
    ttl: Duration,
    auto_extend: bool,
    lease: bool,
    plan: WaitPlan,
    /// The retry timer; its data holds a count on this waiter until it is closed.
    timer: *mut Handle,
    attempting: bool,
    /// Holding back after this process's open release (see `after_open_release`).
    yielding: bool,
    watch: Option<ReleaseWatch>,
    cancel_id: u32,
    /// Strong: a waiter keeps its lane (and Lock engine) alive until it is done.
    lane: Rc<LaneShared>,
}

/// The waiters of one lane, first come first served per key.
#[derive(Default)]
pub(crate) struct Waiting {
    by_key: HashMap<String, VecDeque<Rc<RefCell<Waiter>>>>,
    by_cancel_id: HashMap<u32, Rc<RefCell<Waiter>>>,
    /// Hand-overs in a row per key since its last open release.
    streaks: HashMap<String, u32>,
}

/// Hand-overs in a row within this process before a release is made in the open, so that
/// waiters in other processes get their turn (see the module comment).
const HAND_OVER_STREAK: u32 = 4;

/// How long this process's waiters hold back after its own open release heard by others, so
/// that waiters in other processes, which have to be woken first, can take the lock. (libuv
/// timers count whole ms: the attempt comes 1-2 ms later.)
const YIELD: Duration = Duration::from_millis(1);

/// Past this many streaks kept, the streaks of keys without waiters are dropped.
const STREAKS_KEPT: usize = 1024;

impl Waiting {
    pub(crate) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

pub(crate) struct WaitRequest {
    pub key: String,
    pub ttl: Duration,
    pub auto_extend: bool,
    pub lease: bool,
    pub plan: WaitPlan,
    pub cancel_id: u32,
}

/// Starts a waiting acquire and returns its promise. On the JS thread, in a napi call.
pub(crate) fn start(
    lane: &Rc<LaneShared>,
    env: sys::napi_env,
    request: WaitRequest,
) -> napi::Result<sys::napi_value> {
    let uv = uv::uv().ok_or_else(|| napi::Error::from_reason("libuv is not available"))?;
    let (deferred, promise) = io::new_promise(env)?;
    let mut event_loop = ptr::null_mut();
    unsafe { sys::napi_get_uv_event_loop(env, &mut event_loop) };
    let timer = uv.alloc_handle();
    if event_loop.is_null() || unsafe { (uv.timer_init)(event_loop.cast(), timer) } != 0 {
        uv.free_handle(timer);
        return Err(napi::Error::from_reason("cannot start a timer"));
    }
    let waiter = Rc::new(RefCell::new(Waiter {
        deferred: Some(deferred),
        key: request.key,
        ttl: request.ttl,
        auto_extend: request.auto_extend,
        lease: request.lease,
        plan: request.plan,
        timer,
        attempting: false,
        yielding: false,
        watch: None,
        cancel_id: request.cancel_id,
        lane: lane.clone(),
    }));
    unsafe { (uv.set_data)(timer, Rc::into_raw(waiter.clone()) as *mut c_void) };
    let queued_behind = {
        let mut waiting = lane.waiting.borrow_mut();
        let key = waiter.borrow().key.clone();
        let queue = waiting.by_key.entry(key).or_default();
        let queued_behind = !queue.is_empty();
        queue.push_back(waiter.clone());
        if request.cancel_id != 0 {
            waiting
                .by_cancel_id
                .insert(request.cancel_id, waiter.clone());
        }
        queued_behind
    };
    // Behind waiters of this process, the lock is held (or being handed to them): no barging.
    // The first attempt counts as made and found it held, so the time budget stays v1's; the
    // turn comes by hand-over, by a release heard, or by the retry timer.
    let next = queued_behind
        .then(|| {
            waiter
                .borrow_mut()
                .plan
                .after_held(tokio::time::Instant::now())
        })
        .flatten();
    let mut effects = Effects::default();
    match next {
        Some(at) => wait_until(&waiter, at),
        None => attempt(&waiter, &mut effects),
    }
    lane.apply_in_call(effects);
    Ok(promise)
}

/// Queues an attempt for `waiter` unless one is under way.
pub(crate) fn attempt(waiter: &Rc<RefCell<Waiter>>, effects: &mut Effects) {
    let (lane, key, ttl) = {
        let mut w = waiter.borrow_mut();
        if w.attempting || w.deferred.is_none() {
            return;
        }
        w.attempting = true;
        w.yielding = false;
        (w.lane.clone(), w.key.clone(), w.ttl)
    };
    let Some(io) = lane.single_io() else {
        let err = EngineError::new(
            sdl_engine::ErrorKind::Connection,
            "the connection to Redis was lost while waiting for the lock",
        );
        finish(waiter, failed(err), effects);
        return;
    };
    let token = sdl_engine::new_token();
    let command = wire::acquire_command(&key, &token, ttl, lane.locker.fencing());
    let deadline = std::time::Instant::now() + lane.command_timeout();
    io::submit_attempt(
        &io,
        waiter,
        token,
        tokio::time::Instant::now(),
        command,
        deadline,
    );
}

/// The reply to `waiter`'s attempt: done, or wait for the next attempt.
pub(crate) fn on_reply(waiter: &Rc<RefCell<Waiter>>, reply: AttemptReply, effects: &mut Effects) {
    waiter.borrow_mut().attempting = false;
    if waiter.borrow().deferred.is_none() {
        // Ended meanwhile (cancelled, closed): a lock this attempt took goes back at once.
        let w = waiter.borrow();
        if let AttemptReply::Granted { token, .. } = reply {
            effects.releases.push(GiveBack {
                io: w.lane.single_io(),
                locker: w.lane.locker.clone(),
                key: w.key.clone(),
                token,
            });
        }
        return;
    }
    match reply {
        AttemptReply::Granted {
            token,
            fence,
            sent_at,
        } => {
            let outcome = {
                let w = waiter.borrow();
                let call = AcquireCall {
                    key: w.key.clone(),
                    token,
                    ttl: w.ttl,
                    sent_at,
                    auto_extend: w.auto_extend,
                    lease: w.lease,
                };
                call.granted(&w.lane.locker, fence)
            };
            finish(waiter, outcome, effects);
        }
        AttemptReply::Failed(err) => finish(waiter, failed(err), effects),
        AttemptReply::Held => {
            let next = waiter
                .borrow_mut()
                .plan
                .after_held(tokio::time::Instant::now());
            match next {
                None => {
                    let outcome = Outcome::acquired(waiter.borrow().lease, None);
                    finish(waiter, outcome, effects);
                }
                Some(at) => wait_until(waiter, at),
            }
        }
    }
}

/// Arms the retry timer, and listens for releases of the key (once).
fn wait_until(waiter: &Rc<RefCell<Waiter>>, at: tokio::time::Instant) {
    let mut w = waiter.borrow_mut();
    if w.watch.is_none() {
        let (lane, key) = (w.lane.clone(), w.key.clone());
        w.watch = Some(napi::bindgen_prelude::within_runtime_if_available(|| {
            lane.locker.watch_releases(&key)
        }));
    }
    let Some(uv) = uv::uv() else { return };
    // libuv counts whole ms from the loop's cached time, so it can fire up to 1 ms early: an
    // early attempt would pass for a notified one. Round up and add that ms.
    let wait = at.saturating_duration_since(tokio::time::Instant::now());
    let ms = wait.as_micros().div_ceil(1000) as u64 + 1;
    unsafe { (uv.timer_start)(w.timer, on_timer, ms, 0) };
}

/// Gives the first idle waiter for `key` an attempt now: a release was heard. Not while it
/// yields after this process's own open release (whose echo this may be): its timer makes the
/// attempt within `YIELD` anyway.
pub(crate) fn hand_over(lane: &LaneShared, key: &str, effects: &mut Effects) {
    if let Some(waiter) = first_idle(lane, key)
        && !waiter.borrow().yielding
    {
        attempt(&waiter, effects);
    }
}

/// This process released `key` in the open and `told` other subscribers heard it. With none
/// (no other process waits), the first waiter here tries at once. Otherwise it holds back
/// for `YIELD`, so that waiters elsewhere, woken by the same release, get the lock; if none
/// took it by then, it tries.
pub(crate) fn after_open_release(lane: &LaneShared, key: &str, told: i64, effects: &mut Effects) {
    let Some(waiter) = first_idle(lane, key) else {
        return;
    };
    // Our own subscriber may be among those told.
    let ours = i64::from(waiter.borrow().watch.is_some());
    if told > ours {
        waiter.borrow_mut().yielding = true;
        wait_until(&waiter, tokio::time::Instant::now() + YIELD);
    } else {
        attempt(&waiter, effects);
    }
}

/// Who comes next after a release of a key by this lane.
pub(crate) enum Turn {
    /// This waiter: its attempt follows the release in the same write.
    HandOver(Rc<RefCell<Waiter>>),
    /// An open release, with waiters here (see `after_open_release`).
    Open,
    /// An open release, and nobody here waits for the key.
    Nobody,
}

/// This lane is about to release `key`: a hand-over to its first idle waiter, or an open
/// release (no waiter here is idle, or the streak of hand-overs is used up and waiters
/// elsewhere get their turn).
pub(crate) fn next_in_line(lane: &LaneShared, key: &str) -> Turn {
    {
        let mut waiting = lane.waiting.borrow_mut();
        if waiting.is_empty() {
            // The common case, nobody waits here: nothing to look up, and any streak ends.
            if !waiting.streaks.is_empty() {
                waiting.streaks.remove(key);
            }
            return Turn::Nobody;
        }
    }
    let Some(next) = first_idle(lane, key) else {
        // Nobody here to hand it to: the streak ends.
        let mut waiting = lane.waiting.borrow_mut();
        waiting.streaks.remove(key);
        return if waiting.by_key.contains_key(key) {
            Turn::Open
        } else {
            Turn::Nobody
        };
    };
    let mut waiting = lane.waiting.borrow_mut();
    if waiting.streaks.len() >= STREAKS_KEPT && !waiting.streaks.contains_key(key) {
        // Streaks whose last holder never released through here (expired, lost, released on
        // the runtime path): keep only those of keys with waiters.
        let Waiting {
            by_key, streaks, ..
        } = &mut *waiting;
        streaks.retain(|k, _| by_key.contains_key(k));
    }
    let streak = waiting.streaks.entry(key.to_owned()).or_default();
    if *streak >= HAND_OVER_STREAK {
        *streak = 0;
        return Turn::Open;
    }
    *streak += 1;
    Turn::HandOver(next)
}

fn first_idle(lane: &LaneShared, key: &str) -> Option<Rc<RefCell<Waiter>>> {
    lane.waiting
        .borrow()
        .by_key
        .get(key)
        .and_then(|queue| queue.iter().find(|w| !w.borrow().attempting).cloned())
}

/// Rejects the waiter registered under `cancel_id`, if any. `true` if there was one.
pub(crate) fn cancel(lane: &LaneShared, cancel_id: u32, effects: &mut Effects) -> bool {
    let waiter = lane.waiting.borrow().by_cancel_id.get(&cancel_id).cloned();
    match waiter {
        Some(waiter) => {
            finish(&waiter, failed(EngineError::cancelled()), effects);
            true
        }
        None => false,
    }
}

/// Ends every waiter with `err` (the Lock closed).
pub(crate) fn end_all(lane: &LaneShared, err: &EngineError, effects: &mut Effects) {
    let all: Vec<_> = lane
        .waiting
        .borrow()
        .by_key
        .values()
        .flatten()
        .cloned()
        .collect();
    for waiter in all {
        finish(&waiter, failed(err.clone()), effects);
    }
}

/// Settles the waiter's promise and lets go of its timer, listener and registration.
fn finish(waiter: &Rc<RefCell<Waiter>>, outcome: Outcome, effects: &mut Effects) {
    let (deferred, timer, watch, key, cancel_id, lane) = {
        let mut w = waiter.borrow_mut();
        let Some(deferred) = w.deferred.take() else {
            return;
        };
        (
            deferred,
            std::mem::replace(&mut w.timer, ptr::null_mut()),
            w.watch.take(),
            w.key.clone(),
            w.cancel_id,
            w.lane.clone(),
        )
    };
    effects.settlements.push((deferred, outcome));
    if let Some(uv) = uv::uv()
        && !timer.is_null()
    {
        unsafe { (uv.close)(timer, Some(on_timer_closed)) };
    }
    {
        let mut waiting = lane.waiting.borrow_mut();
        if let Some(queue) = waiting.by_key.get_mut(&key) {
            queue.retain(|w| !Rc::ptr_eq(w, waiter));
            if queue.is_empty() {
                // The streak stays: the waiter may just have been handed the lock.
                waiting.by_key.remove(&key);
            }
        }
        if cancel_id != 0 {
            waiting.by_cancel_id.remove(&cancel_id);
        }
    }
    // Unsubscribing may start the subscriber's task: give it the runtime.
    napi::bindgen_prelude::within_runtime_if_available(|| drop(watch));
    lane.waiter_done();
}

unsafe extern "C" fn on_timer(handle: *mut Handle) {
    let Some(uv) = uv::uv() else { return };
    let data = unsafe { (uv.get_data)(handle) } as *const RefCell<Waiter>;
    if data.is_null() {
        return;
    }
    // Borrow the handle's count for this call.
    let waiter = unsafe {
        Rc::increment_strong_count(data);
        Rc::from_raw(data)
    };
    let lane = waiter.borrow().lane.clone();
    let mut effects = Effects::default();
    attempt(&waiter, &mut effects);
    lane.apply_in_callback(effects);
}

unsafe extern "C" fn on_timer_closed(handle: *mut Handle) {
    let Some(uv) = uv::uv() else { return };
    let data = unsafe { (uv.get_data)(handle) } as *const RefCell<Waiter>;
    uv.free_handle(handle);
    if !data.is_null() {
        drop(unsafe { Rc::from_raw(data) });
    }
}

//! The event-loop transport: the engine's core driven from the JS thread, on sockets that Node's
//! own event loop (libuv) watches, for every deployment whose servers are reached without TLS.
//!
//! Each call through the runtime would cross threads twice (JS → tokio → JS), which costs more
//! than a round trip to Redis on a VM. Here a call goes into the core on the JS thread; what the
//! core has to write is written once per loop turn (a prepare and a check handle), for every
//! call queued in that turn (auto-pipelining); replies are read when the socket is readable and
//! fed to the core; outcomes settle their promises in slices, writing between slices what the
//! continuations queued. Only opening a socket happens on the runtime (connect, and behind
//! Sentinel, asking the sentinels); the socket is then handed to the loop.
//!
//! No protocol and no policy live here: bytes, timers and promises only. Everything runs on
//! the JS thread, and every callback from libuv catches panics: a panic fails that socket's
//! calls (the core drops the socket and opens another), never the process.

mod uv;

use std::cell::{Cell, RefCell};
use std::ffi::{c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use napi::sys;
use sdl_engine::net::io::SocketIo;
use sdl_engine::net::open::{self, StdStream, TlsSession};
use sdl_engine::{Core, EngineError, ErrorKind, Locker};

use crate::js::{AsyncScope, JsEnv};
use crate::settle::{LaneEvent, Poster, Settler};
use uv::UvHandle;

/// Whether the lane can run here: libuv is reachable (not on Windows) and `SDL_EVENT_LOOP_LANE`
/// is not `0`. It carries every deployment: one server, Sentinel, Cluster, Redlock, plain or TLS.
pub(crate) fn usable() -> bool {
    let enabled = std::env::var("SDL_EVENT_LOOP_LANE").map_or(true, |v| v != "0");
    enabled && uv::available()
}

/// Where a settlement is made from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum From {
    /// A napi call from JS: its return runs the microtasks.
    Call,
    /// A libuv or completion-channel callback: settle in callback scopes, in slices.
    Callback,
}

struct LaneSocket {
    epoch: u64,
    poll: UvHandle,
    data: *const PollData,
    events: Cell<c_int>,
}

/// A poll handle's data: the socket, closed only once the handle is (libuv's rule).
struct PollData {
    lane: Rc<Lane>,
    conn: usize,
    epoch: u64,
    stream: RefCell<StdStream>,
    /// Its bytes' state: the TLS session, if any.
    io: RefCell<SocketIo>,
}

pub(crate) struct Lane {
    locker: Arc<Locker>,
    settler: Rc<Settler>,
    poster: Poster,
    event_loop: *mut uv::Loop,
    sockets: RefCell<Vec<Option<LaneSocket>>>,
    timer: RefCell<Option<UvHandle>>,
    /// Write what the turn queued: before the loop blocks (prepare) and after it polled (check).
    prepare: RefCell<Option<UvHandle>>,
    check: RefCell<Option<UvHandle>>,
    timer_at: Cell<Option<Instant>>,
    flushing: Cell<bool>,
    scope: Option<AsyncScope>,
    shut: Cell<bool>,
}

impl Lane {
    pub(crate) fn new(
        env: JsEnv,
        locker: Arc<Locker>,
        settler: Rc<Settler>,
    ) -> napi::Result<Rc<Self>> {
        let mut event_loop = ptr::null_mut();
        // SAFETY: a live env on its JS thread (JsEnv); the out-pointer is a valid local.
        let status = unsafe { sys::napi_get_uv_event_loop(env.raw(), &mut event_loop) };
        if status != sys::Status::napi_ok || event_loop.is_null() {
            return Err(napi::Error::from_reason("no event loop for the lane"));
        }
        let event_loop = event_loop as *mut uv::Loop;
        let handles = (
            UvHandle::timer(event_loop),
            UvHandle::prepare(event_loop),
            UvHandle::check(event_loop),
        );
        let (Some(timer), Some(prepare), Some(check)) = handles else {
            return Err(napi::Error::from_reason("libuv refused the lane's handles"));
        };
        let lane = Rc::new(Self {
            poster: settler.poster(),
            locker,
            settler,
            event_loop,
            sockets: RefCell::default(),
            timer: RefCell::new(None),
            prepare: RefCell::new(None),
            check: RefCell::new(None),
            timer_at: Cell::new(None),
            flushing: Cell::new(false),
            scope: env.async_context().ok(),
            shut: Cell::new(false),
        });
        // Each handle holds a count on the lane until its close callback gives it back.
        for (handle, slot) in [
            (timer, &lane.timer),
            (prepare, &lane.prepare),
            (check, &lane.check),
        ] {
            handle.set_data(Rc::into_raw(lane.clone()) as *mut c_void);
            *slot.borrow_mut() = Some(handle);
        }
        let hook = Rc::into_raw(lane.clone());
        // SAFETY: a live env on its JS thread; the hook's argument is a count on the lane that
        // `on_env_cleanup` gives back (or `shutdown` removes the hook and gives it back).
        let status = unsafe {
            sys::napi_add_env_cleanup_hook(env.raw(), Some(on_env_cleanup), hook as *mut c_void)
        };
        if status != sys::Status::napi_ok {
            // SAFETY: the count made above was not taken by Node: take it back.
            drop(unsafe { Rc::from_raw(hook) });
            lane.close_handles();
            return Err(napi::Error::from_reason(
                "cannot register the lane's cleanup",
            ));
        }
        Ok(lane)
    }

    /// Brings sockets and timers in line with the core and settles what it finished.
    pub(crate) fn pump(self: &Rc<Self>, from: From) {
        if self.shut.get() {
            return;
        }
        let events = self.step();
        if events.is_empty() {
            return;
        }
        let done = self.locker.apply(events);
        if done.is_empty() {
            return;
        }
        let scope = match from {
            From::Call => None,
            From::Callback => self.scope.as_ref(),
        };
        // Between slices, write what the continuations queued, so Redis works meanwhile.
        self.settler.settle_all(done, scope, &|| self.flush());
        // What the last continuations queued is written at this turn's end (prepare/check).
        if self.has_output() {
            self.schedule_flush();
        }
    }

    /// Opens and closes sockets as the core wants, schedules the writes, arms the timer, and
    /// returns the core's events.
    fn step(self: &Rc<Self>) -> Vec<sdl_engine::Event> {
        let mut core = crate::lock_core(&self.locker);
        let now = Instant::now();
        let mut sockets = self.sockets.borrow_mut();
        if sockets.len() < core.conn_count() {
            sockets.resize_with(core.conn_count(), || None);
        }
        let mut output = false;
        for conn in 0..core.conn_count() {
            if let Some(socket) = &sockets[conn]
                && core.live_epoch(conn) != Some(socket.epoch)
            {
                // Dropped by the core (timeout, protocol error, failover, close).
                if let Some(socket) = sockets[conn].take() {
                    socket.poll.close(on_poll_closed);
                }
            }
            if sockets[conn].is_none() && core.wants_socket(conn, now) {
                self.open(&mut core, conn, now);
            }
            output |= sockets[conn].is_some() && !core.output(conn).is_empty();
        }
        drop(sockets);
        let timer = core.next_timer();
        let events = core.take_events();
        drop(core);
        if output {
            self.schedule_flush();
        }
        self.arm(timer);
        events
    }

    /// Opens `conn`'s socket on the runtime; the socket comes back as a `LaneEvent::Opened`.
    fn open(&self, core: &mut Core, conn: usize, now: Instant) {
        let epoch = core.opening(conn, now);
        let endpoint = core.endpoint(conn).clone();
        let poster = self.poster.clone();
        self.locker.runtime().spawn(async move {
            // Connect, TLS handshake and Sentinel's answer on the runtime; then the socket and its
            // TLS session go to the loop.
            let result = match open::open(&endpoint).await {
                Ok(opened) => opened
                    .stream
                    .into_std()
                    .and_then(|stream| stream.set_nonblocking().map(|()| (stream, opened.tls)))
                    .map_err(|e| {
                        EngineError::new(
                            ErrorKind::Connection,
                            format!("cannot hand the socket over: {e}"),
                        )
                    }),
                Err(err) => Err(err),
            };
            poster.post_lane(LaneEvent::Opened {
                conn,
                epoch,
                result: Box::new(result),
            });
        });
    }

    /// News from the runtime, on the JS thread.
    pub(crate) fn on_event(self: &Rc<Self>, event: LaneEvent) {
        if let LaneEvent::Opened {
            conn,
            epoch,
            result,
        } = event
        {
            self.install(conn, epoch, *result);
        }
        self.pump(From::Callback);
    }

    fn install(
        self: &Rc<Self>,
        conn: usize,
        epoch: u64,
        result: sdl_engine::EngineResult<(StdStream, Option<TlsSession>)>,
    ) {
        let now = Instant::now();
        let (stream, tls) = match result {
            Ok(opened) => opened,
            Err(err) => return crate::lock_core(&self.locker).open_failed(conn, epoch, err, now),
        };
        if self.shut.get() {
            return;
        }
        #[cfg(unix)]
        let fd = stream.raw_fd();
        #[cfg(not(unix))]
        let fd = -1;
        let Some(poll) = UvHandle::poll(self.event_loop, fd) else {
            let err = EngineError::new(ErrorKind::Connection, "libuv refused to watch the socket");
            return crate::lock_core(&self.locker).open_failed(conn, epoch, err, now);
        };
        let data = Rc::into_raw(Rc::new(PollData {
            lane: self.clone(),
            conn,
            epoch,
            stream: RefCell::new(stream),
            io: RefCell::new(SocketIo::new(tls)),
        }));
        poll.set_data(data as *mut c_void);
        let kept = crate::lock_core(&self.locker).opened(conn, epoch, now)
            && poll.poll_start(uv::READABLE, on_poll);
        if !kept {
            crate::lock_core(&self.locker).socket_closed(
                conn,
                epoch,
                "the socket could not be watched",
                now,
            );
            poll.close(on_poll_closed);
            return;
        }
        let mut sockets = self.sockets.borrow_mut();
        if sockets.len() <= conn {
            sockets.resize_with(conn + 1, || None);
        }
        if let Some(old) = sockets[conn].replace(LaneSocket {
            epoch,
            poll,
            data,
            events: Cell::new(uv::READABLE),
        }) {
            old.poll.close(on_poll_closed);
        }
    }

    fn has_output(&self) -> bool {
        let core = crate::lock_core(&self.locker);
        let sockets = self.sockets.borrow();
        sockets.iter().enumerate().any(|(conn, s)| {
            s.is_some() && conn < core.conn_count() && !core.output(conn).is_empty()
        })
    }

    fn schedule_flush(&self) {
        if self.flushing.replace(true) || self.shut.get() {
            return;
        }
        if let Some(prepare) = &*self.prepare.borrow() {
            prepare.prepare_start(on_flush);
        }
        if let Some(check) = &*self.check.borrow() {
            check.check_start(on_flush);
        }
    }

    /// Writes what the core has for each socket, as much as the sockets take now.
    fn flush(&self) {
        let mut core = crate::lock_core(&self.locker);
        let now = Instant::now();
        let sockets = self.sockets.borrow();
        let mut left = false;
        for (conn, socket) in sockets.iter().enumerate() {
            let Some(socket) = socket else { continue };
            if conn >= core.conn_count() || !core.is_open(conn, socket.epoch) {
                continue;
            }
            // SAFETY: `data` stays valid while the socket is in `sockets` (it is freed only in
            // the poll handle's close callback, after the socket left `sockets`).
            let data = unsafe { &*socket.data };
            let written = data.io.borrow_mut().write(&mut core, conn, |bytes| {
                data.stream.borrow_mut().write(bytes)
            });
            let pending = match written {
                Ok(pending) => pending,
                Err(why) => {
                    core.socket_closed(conn, socket.epoch, &why, now);
                    continue;
                }
            };
            left |= pending;
            let want = if pending {
                uv::READABLE | uv::WRITABLE
            } else {
                uv::READABLE
            };
            if want != socket.events.get() {
                socket.events.set(want);
                socket.poll.poll_start(want, on_poll);
            }
        }
        drop(sockets);
        drop(core);
        if !left && self.flushing.replace(false) {
            if let Some(prepare) = &*self.prepare.borrow() {
                prepare.prepare_stop();
            }
            if let Some(check) = &*self.check.borrow() {
                check.check_stop();
            }
        }
    }

    /// Reads what the socket of `conn` holds and feeds it to the core.
    fn read(&self, conn: usize, epoch: u64, data: &PollData) {
        let mut chunk = [0u8; 16 * 1024];
        let (bytes, done) = data
            .io
            .borrow_mut()
            .read(|into| data.stream.borrow_mut().read(into), &mut chunk);
        let mut core = crate::lock_core(&self.locker);
        let now = Instant::now();
        if !bytes.is_empty() {
            core.feed(conn, epoch, &bytes, now);
        }
        if let Some(why) = done {
            core.socket_closed(conn, epoch, &why, now);
        }
    }

    /// Whatever every socket holds, before time is told to the core.
    fn read_all(&self) {
        let open: Vec<(usize, u64, *const PollData)> = self
            .sockets
            .borrow()
            .iter()
            .enumerate()
            .filter_map(|(conn, s)| s.as_ref().map(|s| (conn, s.epoch, s.data)))
            .collect();
        for (conn, epoch, data) in open {
            // SAFETY: the sockets listed are still in `sockets` (nothing ran in between that
            // could close them), so their data is valid (see `flush`).
            let data = unsafe { &*data };
            self.read(conn, epoch, data);
        }
    }

    fn arm(&self, at: Option<Instant>) {
        if self.timer_at.get() == at {
            return;
        }
        self.timer_at.set(at);
        let timer = self.timer.borrow();
        let Some(timer) = timer.as_ref() else { return };
        match at {
            None => timer.timer_stop(),
            Some(at) => {
                // libuv counts whole ms from the loop's cached time, so it can fire up to 1 ms
                // early: round up and add that ms, so no deadline is seen before it passed.
                let wait = at.saturating_duration_since(Instant::now());
                let ms = wait.as_micros().div_ceil(1000) as u64 + 1;
                timer.timer_start(on_timer, ms);
            }
        }
    }

    /// Closes every handle and socket: the Lock is closed and collected, or the environment
    /// goes away. Nothing settles after this.
    pub(crate) fn shutdown(self: &Rc<Self>) {
        if !self.close_handles() {
            return;
        }
        if let Some(env) = self.settler.env() {
            // SAFETY: a live env on its JS thread; removes the hook added in `new` (same
            // function and argument) and gives back the count it held.
            unsafe {
                sys::napi_remove_env_cleanup_hook(
                    env.raw(),
                    Some(on_env_cleanup),
                    Rc::as_ptr(self) as *mut c_void,
                );
                drop(Rc::from_raw(Rc::as_ptr(self)));
            }
            if let Some(scope) = &self.scope {
                env.drop_async(scope);
            }
        }
    }

    /// Closes the engine and every handle and socket, once; `false` if done already.
    fn close_handles(&self) -> bool {
        if self.shut.replace(true) {
            return false;
        }
        self.locker.close();
        for socket in self.sockets.borrow_mut().drain(..).flatten() {
            socket.poll.close(on_poll_closed);
        }
        for slot in [&self.timer, &self.prepare, &self.check] {
            if let Some(handle) = slot.borrow_mut().take() {
                handle.close(on_lane_handle_closed);
            }
        }
        true
    }

    /// A callback panicked (a bug): every pending call fails and the sockets are dropped, so
    /// nothing is left hanging; the lane goes on.
    fn recover(self: &Rc<Self>) {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let err = EngineError::new(
                ErrorKind::Connection,
                "internal error in the lock engine (a bug: please report it)",
            );
            crate::lock_core(&self.locker).fail_all(err, Instant::now());
            self.pump(From::Callback);
        }));
    }
}

/// Runs a lane callback's body with the lane borrowed from a handle's data, catching panics.
///
/// # Safety
/// `data` is a count on a `Lane` held by a live handle (given back only in its close callback).
unsafe fn with_lane(data: *const Lane, body: impl FnOnce(&Rc<Lane>)) {
    if data.is_null() {
        return;
    }
    // SAFETY: per the contract, `data` is a live count; this makes a second one for the call.
    let lane = unsafe {
        Rc::increment_strong_count(data);
        Rc::from_raw(data)
    };
    if lane.shut.get() {
        return;
    }
    if catch_unwind(AssertUnwindSafe(|| body(&lane))).is_err() {
        lane.recover();
    }
}

unsafe extern "C" fn on_poll(handle: *mut uv::Handle, status: c_int, events: c_int) {
    // SAFETY: libuv passes a live poll handle, whose data is the `PollData` count it holds.
    let data = unsafe { uv::data(handle) } as *const PollData;
    if data.is_null() {
        return;
    }
    // SAFETY: the handle is open, so its data is valid (freed only in its close callback).
    let poll_data = unsafe { &*data };
    let lane = Rc::as_ptr(&poll_data.lane);
    // SAFETY: `poll_data.lane` is a live count on the lane for as long as the handle lives.
    unsafe {
        with_lane(lane, |lane| {
            let (conn, epoch) = (poll_data.conn, poll_data.epoch);
            if status < 0 {
                // libuv reports a socket in error (POLLERR) as UV_EBADF; the socket knows why.
                let why = match poll_data.stream.borrow().take_error() {
                    Some(err) => format!("the socket failed: {err}"),
                    None => format!("the event loop reported error {status} on the socket"),
                };
                crate::lock_core(&lane.locker).socket_closed(conn, epoch, &why, Instant::now());
            } else {
                if events & uv::WRITABLE != 0 {
                    lane.flush();
                }
                if events & uv::READABLE != 0 {
                    lane.read(conn, epoch, poll_data);
                }
            }
            lane.pump(From::Callback);
        })
    };
}

unsafe extern "C" fn on_flush(handle: *mut uv::Handle) {
    // SAFETY: libuv passes a live prepare or check handle whose data is a count on the lane.
    unsafe {
        with_lane(uv::data(handle) as *const Lane, |lane| {
            lane.flush();
            lane.pump(From::Callback);
        })
    };
}

unsafe extern "C" fn on_timer(handle: *mut uv::Handle) {
    // SAFETY: libuv passes the live timer handle whose data is a count on the lane.
    unsafe {
        with_lane(uv::data(handle) as *const Lane, |lane| {
            lane.timer_at.set(None);
            lane.read_all();
            crate::lock_core(&lane.locker).on_timer(Instant::now());
            lane.pump(From::Callback);
        })
    };
}

/// A socket's poll handle closed: its data (the socket, a count on the lane) goes.
unsafe extern "C" fn on_poll_closed(handle: *mut uv::Handle) {
    // SAFETY: this is the handle's close callback; `free` returns its data and frees it.
    let data = unsafe { uv::free(handle) } as *const PollData;
    if !data.is_null() {
        // SAFETY: the count made in `install`, given back once, here. Dropping closes the socket.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Rc::from_raw(data) })));
    }
}

/// One of the lane's own handles closed: its count on the lane goes.
unsafe extern "C" fn on_lane_handle_closed(handle: *mut uv::Handle) {
    // SAFETY: this is the handle's close callback.
    let data = unsafe { uv::free(handle) } as *const Lane;
    if !data.is_null() {
        // SAFETY: the count made in `Lane::new` for this handle, given back once, here.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Rc::from_raw(data) })));
    }
}

/// Node tears the environment down (a worker ends): close the handles before the loop goes.
unsafe extern "C" fn on_env_cleanup(arg: *mut c_void) {
    if arg.is_null() {
        return;
    }
    // SAFETY: the count handed to the hook in `Lane::new`; the hook runs once and is not
    // removed afterwards, so the count is given back here.
    let lane = unsafe { Rc::from_raw(arg as *const Lane) };
    let _ = catch_unwind(AssertUnwindSafe(|| {
        lane.settler.set_gone();
        lane.close_handles();
    }));
}

//! The event-loop lane: lock calls on one plain Redis server, done on the JS thread itself.
//!
//! Each call through the runtime crosses threads twice (JS → tokio → JS), which costs more than
//! the round trip to Redis on a VM. The lane removes both crossings for the hot calls (a single
//! acquire attempt, release, extend, isLocked): the call encodes its command into a buffer; the
//! buffer is written to a socket watched by Node's own event loop (libuv), once per loop turn
//! for everything queued (auto-pipelining); replies are parsed as they arrive and settle their
//! promises in one callback scope. What the lane cannot do (waiting, TLS, Sentinel, cluster,
//! Redlock, replica acknowledgement, cancellation) takes the runtime path, which also serves
//! calls while the lane's socket is being opened (by the runtime) or after it broke.
//!
//! Everything here runs on the JS thread, except the socket's opening.

mod io;
mod uv;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use napi::bindgen_prelude::*;
use napi::sys;
use sdl_engine::wire::{self, RawStream, WireCommand};
use sdl_engine::{EngineResult, Locker};

use io::Io;
pub(crate) use io::Op;

/// After the lane's socket failed to open or broke, the runtime path serves alone for this long.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

enum Phase {
    /// Not for this deployment or platform.
    Off,
    Idle {
        open_after: Option<Instant>,
    },
    Opening(Arc<Mutex<Option<EngineResult<RawStream>>>>),
    Ready(Rc<RefCell<Io>>),
}

pub(crate) struct Lane {
    phase: RefCell<Phase>,
    locker: Arc<Locker>,
    error_classes: sys::napi_ref,
    command_timeout: Duration,
}

impl Lane {
    /// `error_classes`: the facade's `{ code: ErrorClass }`, kept alive by the caller.
    pub(crate) fn new(locker: Arc<Locker>, error_classes: sys::napi_ref) -> Self {
        let usable = uv::uv().is_some() && locker.plain_server().is_some() && enabled_by_env();
        let command_timeout = locker
            .plain_server()
            .map(|c| c.command_timeout)
            .unwrap_or(Duration::from_secs(1));
        Self {
            phase: RefCell::new(if usable {
                Phase::Idle { open_after: None }
            } else {
                Phase::Off
            }),
            locker,
            error_classes,
            command_timeout,
        }
    }

    /// The open lane, or `None`: then take the runtime path (the lane starts opening in the
    /// background if it is idle, for later calls).
    pub(crate) fn open(&self, env: &Env) -> Option<OpenLane> {
        self.ready(env).map(|io| OpenLane {
            io,
            command_timeout: self.command_timeout,
        })
    }

    fn ready(&self, env: &Env) -> Option<Rc<RefCell<Io>>> {
        let mut phase = self.phase.borrow_mut();
        loop {
            match &*phase {
                Phase::Off => return None,
                Phase::Ready(io) => {
                    if !io.borrow().is_closing() {
                        return Some(io.clone());
                    }
                    *phase = Phase::Idle {
                        open_after: Some(Instant::now() + REOPEN_AFTER),
                    };
                }
                Phase::Idle { open_after } => {
                    if open_after.is_some_and(|at| Instant::now() < at) {
                        return None;
                    }
                    let slot = Arc::new(Mutex::new(None));
                    let config = self.locker.plain_server()?.clone();
                    let filled = slot.clone();
                    napi::bindgen_prelude::spawn(async move {
                        let opened = wire::open_stream(&config).await;
                        *filled.lock().unwrap_or_else(|p| p.into_inner()) = Some(opened);
                    });
                    *phase = Phase::Opening(slot);
                    return None;
                }
                Phase::Opening(slot) => {
                    let opened = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                    match opened {
                        None => return None,
                        Some(Ok(stream)) => {
                            let target = self
                                .locker
                                .plain_server()
                                .map(|c| c.target())
                                .unwrap_or_default();
                            match Io::install(
                                env.raw(),
                                stream,
                                self.locker.clone(),
                                self.error_classes,
                                target,
                            ) {
                                Some(io) => *phase = Phase::Ready(io),
                                None => *phase = Phase::Off,
                            }
                        }
                        Some(Err(_)) => {
                            // The runtime path reports the failure on its own calls.
                            *phase = Phase::Idle {
                                open_after: Some(Instant::now() + REOPEN_AFTER),
                            };
                            return None;
                        }
                    }
                }
            }
        }
    }

    /// Closes the lane: its pending calls reject with `closed`. On the JS thread.
    pub(crate) fn close(&self, env: &Env) {
        let previous = std::mem::replace(&mut *self.phase.borrow_mut(), Phase::Off);
        if let Phase::Ready(io) = previous {
            io::shut(&io, Some(env.raw()), io::closed_error());
        }
    }
}

/// The lane, open for one call.
pub(crate) struct OpenLane {
    io: Rc<RefCell<Io>>,
    command_timeout: Duration,
}

impl OpenLane {
    /// Sends `command`; returns the promise its reply settles.
    pub(crate) fn submit(
        &self,
        env: &Env,
        command: WireCommand,
        op: Op,
    ) -> Result<sys::napi_value> {
        io::submit(
            &self.io,
            env.raw(),
            command,
            op,
            Instant::now() + self.command_timeout,
        )
    }
}

impl Drop for Lane {
    /// The locker was collected: close once its pending calls have settled.
    fn drop(&mut self) {
        if let Phase::Ready(io) = std::mem::replace(self.phase.get_mut(), Phase::Off) {
            io::abandon(&io);
        }
    }
}

/// `SDL_EVENT_LOOP_LANE=0` turns the lane off (every call takes the runtime path).
fn enabled_by_env() -> bool {
    std::env::var("SDL_EVENT_LOOP_LANE").map_or(true, |v| v != "0")
}

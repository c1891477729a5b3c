//! The few libuv functions the lane needs, looked up in the running Node process (which exports
//! its libuv), so the addon does not link against any particular libuv; and `UvHandle`, which
//! keeps the rules of a libuv handle in one place. Unix only; elsewhere the lane is off and
//! calls take the runtime transport.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

pub(crate) type Handle = c_void;
pub(crate) type Loop = c_void;
pub(crate) type PollCb = unsafe extern "C" fn(*mut Handle, c_int, c_int);
pub(crate) type HandleCb = unsafe extern "C" fn(*mut Handle);

// uv_handle_type values (stable across libuv 1.x).
const CHECK: c_int = 2;
const POLL: c_int = 8;
const PREPARE: c_int = 9;
const TIMER: c_int = 13;
// uv_poll_event flags.
pub(crate) const READABLE: c_int = 1;
pub(crate) const WRITABLE: c_int = 2;

struct Uv {
    poll_init_socket: unsafe extern "C" fn(*mut Loop, *mut Handle, c_int) -> c_int,
    poll_start: unsafe extern "C" fn(*mut Handle, c_int, PollCb) -> c_int,
    timer_init: unsafe extern "C" fn(*mut Loop, *mut Handle) -> c_int,
    timer_start: unsafe extern "C" fn(*mut Handle, HandleCb, u64, u64) -> c_int,
    timer_stop: unsafe extern "C" fn(*mut Handle) -> c_int,
    prepare_init: unsafe extern "C" fn(*mut Loop, *mut Handle) -> c_int,
    prepare_start: unsafe extern "C" fn(*mut Handle, HandleCb) -> c_int,
    prepare_stop: unsafe extern "C" fn(*mut Handle) -> c_int,
    check_init: unsafe extern "C" fn(*mut Loop, *mut Handle) -> c_int,
    check_start: unsafe extern "C" fn(*mut Handle, HandleCb) -> c_int,
    check_stop: unsafe extern "C" fn(*mut Handle) -> c_int,
    close: unsafe extern "C" fn(*mut Handle, Option<HandleCb>),
    unref_handle: unsafe extern "C" fn(*mut Handle),
    set_data: unsafe extern "C" fn(*mut Handle, *mut c_void),
    get_data: unsafe extern "C" fn(*const Handle) -> *mut c_void,
    /// One size fits the four handle kinds, so freeing needs no kind.
    layout: Layout,
}

/// Whether this process exports libuv (the lane can run).
pub(crate) fn available() -> bool {
    uv().is_some()
}

fn uv() -> Option<&'static Uv> {
    static UV: OnceLock<Option<Uv>> = OnceLock::new();
    UV.get_or_init(resolve).as_ref()
}

#[cfg(unix)]
// Each symbol's target type is the `Uv` field it fills, spelled out in the struct above.
#[allow(clippy::missing_transmute_annotations)]
fn resolve() -> Option<Uv> {
    fn symbol(name: &std::ffi::CStr) -> Option<*mut c_void> {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the symbol up.
        let address = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        (!address.is_null()).then_some(address)
    }
    macro_rules! function {
        ($name:literal) => {
            // SAFETY: the symbol is Node's exported libuv function of that name, whose C
            // signature (libuv 1.x, stable) is the field's type.
            unsafe { std::mem::transmute::<*mut c_void, _>(symbol($name)?) }
        };
    }
    let handle_size: unsafe extern "C" fn(c_int) -> usize = function!(c"uv_handle_size");
    let size = [POLL, TIMER, PREPARE, CHECK]
        .into_iter()
        // SAFETY: uv_handle_size only reads a table for a valid handle type.
        .map(|kind| unsafe { handle_size(kind) })
        .max()
        .unwrap_or(0);
    Some(Uv {
        poll_init_socket: function!(c"uv_poll_init_socket"),
        poll_start: function!(c"uv_poll_start"),
        timer_init: function!(c"uv_timer_init"),
        timer_start: function!(c"uv_timer_start"),
        timer_stop: function!(c"uv_timer_stop"),
        prepare_init: function!(c"uv_prepare_init"),
        prepare_start: function!(c"uv_prepare_start"),
        prepare_stop: function!(c"uv_prepare_stop"),
        check_init: function!(c"uv_check_init"),
        check_start: function!(c"uv_check_start"),
        check_stop: function!(c"uv_check_stop"),
        close: function!(c"uv_close"),
        unref_handle: function!(c"uv_unref"),
        set_data: function!(c"uv_handle_set_data"),
        get_data: function!(c"uv_handle_get_data"),
        layout: Layout::from_size_align(size.max(1), 16).ok()?,
    })
}

#[cfg(not(unix))]
fn resolve() -> Option<Uv> {
    None
}

/// An initialized libuv handle, not yet closed, on the JS thread's loop. Its memory is freed by
/// `free` in its close callback. Never ref'd: a handle of the lane does not keep Node alive (the
/// completion channel does, while calls are pending).
pub(crate) struct UvHandle {
    raw: *mut Handle,
    uv: &'static Uv,
}

impl UvHandle {
    /// Allocates and initializes a handle of one kind; `None` if libuv refuses.
    fn make(
        event_loop: *mut Loop,
        init: impl FnOnce(&'static Uv, *mut Handle) -> c_int,
    ) -> Option<Self> {
        let uv = uv()?;
        if event_loop.is_null() {
            return None;
        }
        // SAFETY: a non-zero layout (at least 1 byte); zeroed memory is what libuv expects
        // before init.
        let raw = unsafe { alloc_zeroed(uv.layout) } as *mut Handle;
        if raw.is_null() {
            return None;
        }
        if init(uv, raw) != 0 {
            // Not initialized: libuv does not know it; only the memory to free.
            // SAFETY: allocated just above with this layout, never handed to libuv.
            unsafe { dealloc(raw as *mut u8, uv.layout) };
            return None;
        }
        let handle = Self { raw, uv };
        // SAFETY: initialized just above on the JS thread's loop.
        unsafe { (uv.unref_handle)(raw) };
        Some(handle)
    }

    pub(crate) fn timer(event_loop: *mut Loop) -> Option<Self> {
        // SAFETY: `raw` is zeroed memory large enough for any handle kind; `event_loop` is live.
        Self::make(event_loop, |uv, raw| unsafe {
            (uv.timer_init)(event_loop, raw)
        })
    }

    pub(crate) fn prepare(event_loop: *mut Loop) -> Option<Self> {
        // SAFETY: as `timer`.
        Self::make(event_loop, |uv, raw| unsafe {
            (uv.prepare_init)(event_loop, raw)
        })
    }

    pub(crate) fn check(event_loop: *mut Loop) -> Option<Self> {
        // SAFETY: as `timer`.
        Self::make(event_loop, |uv, raw| unsafe {
            (uv.check_init)(event_loop, raw)
        })
    }

    /// A poll handle on an open socket, which must stay open until this handle's close callback.
    pub(crate) fn poll(event_loop: *mut Loop, fd: c_int) -> Option<Self> {
        // SAFETY: as `timer`; `fd` is an open socket its owner keeps open until closed.
        Self::make(event_loop, |uv, raw| unsafe {
            (uv.poll_init_socket)(event_loop, raw, fd)
        })
    }

    pub(crate) fn set_data(&self, data: *mut c_void) {
        // SAFETY: an initialized, open handle (the type's invariant).
        unsafe { (self.uv.set_data)(self.raw, data) };
    }

    pub(crate) fn poll_start(&self, events: c_int, cb: PollCb) -> bool {
        // SAFETY: an initialized, open poll handle.
        unsafe { (self.uv.poll_start)(self.raw, events, cb) == 0 }
    }

    pub(crate) fn timer_start(&self, cb: HandleCb, ms: u64) {
        // SAFETY: an initialized, open timer handle.
        unsafe { (self.uv.timer_start)(self.raw, cb, ms, 0) };
    }

    pub(crate) fn timer_stop(&self) {
        // SAFETY: as `timer_start`.
        unsafe { (self.uv.timer_stop)(self.raw) };
    }

    pub(crate) fn prepare_start(&self, cb: HandleCb) {
        // SAFETY: an initialized, open prepare handle.
        unsafe { (self.uv.prepare_start)(self.raw, cb) };
    }

    pub(crate) fn prepare_stop(&self) {
        // SAFETY: as `prepare_start`.
        unsafe { (self.uv.prepare_stop)(self.raw) };
    }

    pub(crate) fn check_start(&self, cb: HandleCb) {
        // SAFETY: an initialized, open check handle.
        unsafe { (self.uv.check_start)(self.raw, cb) };
    }

    pub(crate) fn check_stop(&self) {
        // SAFETY: as `check_start`.
        unsafe { (self.uv.check_stop)(self.raw) };
    }

    /// Closes the handle; `on_closed` runs later, on the loop, and must call `free` (and give
    /// back whatever its data holds).
    pub(crate) fn close(self, on_closed: HandleCb) {
        let handle = std::mem::ManuallyDrop::new(self);
        // SAFETY: an initialized handle, closed once (consumed here, and `Drop` will not run).
        unsafe { (handle.uv.close)(handle.raw, Some(on_closed)) };
    }
}

impl Drop for UvHandle {
    /// A handle dropped without `close` (a setup that failed half-way) is closed all the same,
    /// so the loop never keeps a freed handle; only its memory is freed then.
    fn drop(&mut self) {
        // SAFETY: an initialized handle not closed yet (`close` consumes it without dropping).
        unsafe { (self.uv.close)(self.raw, Some(free_only)) };
    }
}

/// Close callback of a dropped handle: its memory only.
unsafe extern "C" fn free_only(raw: *mut Handle) {
    // SAFETY: this is the handle's close callback; its data (if any) is not ours to give back.
    let _ = std::panic::catch_unwind(|| unsafe { free(raw) });
}

/// In a close callback: the handle's data pointer, then its memory is freed.
///
/// # Safety
/// `raw` is a handle made by `UvHandle` whose close callback is running now.
pub(crate) unsafe fn free(raw: *mut Handle) -> *mut c_void {
    let Some(uv) = uv() else {
        return std::ptr::null_mut();
    };
    // SAFETY: the handle is still valid memory during its close callback.
    let data = unsafe { (uv.get_data)(raw) };
    // SAFETY: allocated by `UvHandle::make` with this layout; libuv is done with it.
    unsafe { dealloc(raw as *mut u8, uv.layout) };
    data
}

/// In a handle's callback: its data pointer.
///
/// # Safety
/// `raw` is a live handle made by `UvHandle` (libuv passes it to its callbacks).
pub(crate) unsafe fn data(raw: *mut Handle) -> *mut c_void {
    match uv() {
        // SAFETY: a live handle, per the caller.
        Some(uv) => unsafe { (uv.get_data)(raw) },
        None => std::ptr::null_mut(),
    }
}

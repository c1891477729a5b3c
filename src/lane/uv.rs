//! The few libuv functions the lane needs, looked up in the running Node process (which exports
//! its libuv), so the addon does not link against any particular libuv. Unix only; elsewhere the
//! lane is off and calls take the runtime path.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

pub(crate) type Handle = c_void;
pub(crate) type Loop = c_void;
pub(crate) type PollCb = unsafe extern "C" fn(*mut Handle, c_int, c_int);
pub(crate) type HandleCb = unsafe extern "C" fn(*mut Handle);

// uv_handle_type values (stable across libuv 1.x).
pub(crate) const CHECK: c_int = 2;
pub(crate) const POLL: c_int = 8;
pub(crate) const PREPARE: c_int = 9;
pub(crate) const TIMER: c_int = 13;
// uv_poll_event flags.
pub(crate) const READABLE: c_int = 1;
pub(crate) const WRITABLE: c_int = 2;

pub(crate) struct Uv {
    pub handle_size: unsafe extern "C" fn(c_int) -> usize,
    pub poll_init_socket: unsafe extern "C" fn(*mut Loop, *mut Handle, c_int) -> c_int,
    pub poll_start: unsafe extern "C" fn(*mut Handle, c_int, PollCb) -> c_int,
    pub timer_init: unsafe extern "C" fn(*mut Loop, *mut Handle) -> c_int,
    pub timer_start: unsafe extern "C" fn(*mut Handle, HandleCb, u64, u64) -> c_int,
    pub timer_stop: unsafe extern "C" fn(*mut Handle) -> c_int,
    pub prepare_init: unsafe extern "C" fn(*mut Loop, *mut Handle) -> c_int,
    pub prepare_start: unsafe extern "C" fn(*mut Handle, HandleCb) -> c_int,
    pub prepare_stop: unsafe extern "C" fn(*mut Handle) -> c_int,
    pub check_init: unsafe extern "C" fn(*mut Loop, *mut Handle) -> c_int,
    pub check_start: unsafe extern "C" fn(*mut Handle, HandleCb) -> c_int,
    pub check_stop: unsafe extern "C" fn(*mut Handle) -> c_int,
    pub close: unsafe extern "C" fn(*mut Handle, Option<HandleCb>),
    pub ref_handle: unsafe extern "C" fn(*mut Handle),
    pub unref_handle: unsafe extern "C" fn(*mut Handle),
    pub set_data: unsafe extern "C" fn(*mut Handle, *mut c_void),
    pub get_data: unsafe extern "C" fn(*const Handle) -> *mut c_void,
}

/// libuv, if this process exports it.
pub(crate) fn uv() -> Option<&'static Uv> {
    static UV: OnceLock<Option<Uv>> = OnceLock::new();
    UV.get_or_init(resolve).as_ref()
}

#[cfg(unix)]
// Each symbol's target type is the `Uv` field it fills, spelled out in the struct above.
#[allow(clippy::missing_transmute_annotations)]
fn resolve() -> Option<Uv> {
    fn symbol(name: &std::ffi::CStr) -> Option<*mut c_void> {
        let address = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        (!address.is_null()).then_some(address)
    }
    macro_rules! function {
        ($name:literal) => {
            // A symbol of the expected libuv function, with its documented C signature.
            unsafe { std::mem::transmute::<*mut c_void, _>(symbol($name)?) }
        };
    }
    Some(Uv {
        handle_size: function!(c"uv_handle_size"),
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
        ref_handle: function!(c"uv_ref"),
        unref_handle: function!(c"uv_unref"),
        set_data: function!(c"uv_handle_set_data"),
        get_data: function!(c"uv_handle_get_data"),
    })
}

#[cfg(not(unix))]
fn resolve() -> Option<Uv> {
    None
}

impl Uv {
    /// One size fits the four handle kinds the lane uses, so freeing needs no kind.
    fn layout(&self) -> Layout {
        let size = [POLL, TIMER, PREPARE, CHECK]
            .into_iter()
            .map(|kind| unsafe { (self.handle_size)(kind) })
            .max()
            .unwrap_or(0);
        Layout::from_size_align(size.max(1), 16).unwrap_or(Layout::new::<[u128; 32]>())
    }

    /// Zeroed memory for a handle; freed by `free_handle` in its close callback.
    pub(crate) fn alloc_handle(&self) -> *mut Handle {
        unsafe { alloc_zeroed(self.layout()) as *mut Handle }
    }

    pub(crate) fn free_handle(&self, handle: *mut Handle) {
        if !handle.is_null() {
            unsafe { dealloc(handle as *mut u8, self.layout()) };
        }
    }
}

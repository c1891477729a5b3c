//! What the lane needs from its Node environment, shared by the lane, its sockets and its
//! waiters: the environment, whether it is being torn down, and the lane's own reference to
//! the facade's error classes (lane objects can outlive the Lock that made them, so they must
//! not borrow the Lock's reference).

use std::cell::Cell;
use std::ptr;

use napi::sys;

pub(crate) struct LaneEnv {
    env: sys::napi_env,
    gone: Cell<bool>,
    error_classes: sys::napi_ref,
}

impl LaneEnv {
    /// `error_classes`: the facade's `{ code: ErrorClass }`. On the JS thread.
    pub(crate) fn new(env: sys::napi_env, error_classes: sys::napi_value) -> Self {
        let mut reference = ptr::null_mut();
        unsafe { sys::napi_create_reference(env, error_classes, 1, &mut reference) };
        Self {
            env,
            gone: Cell::new(false),
            error_classes: reference,
        }
    }

    pub(crate) fn env(&self) -> sys::napi_env {
        self.env
    }

    pub(crate) fn error_classes(&self) -> sys::napi_ref {
        self.error_classes
    }

    /// The environment is being torn down: no more Node-API calls from here on.
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.get()
    }

    pub(crate) fn set_gone(&self) {
        self.gone.set(true);
    }
}

impl Drop for LaneEnv {
    fn drop(&mut self) {
        if !self.gone.get() && !self.error_classes.is_null() {
            unsafe { sys::napi_delete_reference(self.env, self.error_classes) };
        }
    }
}

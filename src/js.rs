//! The raw Node-API calls the binding makes itself (promises it settles from libuv callbacks
//! and from its completion channel, where napi-rs's wrappers do not reach), each checked.
//!
//! A `JsEnv` can only be made where the environment is live and the code runs on its JS thread
//! (see `JsEnv::new`); that is what makes its methods sound.

use std::ptr;

use napi::sys;
use napi::{Error, Result, Status};

/// A live Node-API environment, on its JS thread.
#[derive(Clone, Copy)]
pub(crate) struct JsEnv(sys::napi_env);

/// A promise's resolver, settled once.
pub(crate) struct Deferred(sys::napi_deferred);

fn check(status: sys::napi_status, what: &str) -> Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(Error::new(
            Status::GenericFailure,
            format!("a Node-API call failed ({what}, status {status})"),
        ))
    }
}

impl JsEnv {
    /// # Safety
    /// `env` must be a live environment, the caller on its JS thread, and the values made with
    /// it used only inside the handle scope that is current there.
    pub(crate) unsafe fn new(env: sys::napi_env) -> Self {
        Self(env)
    }

    pub(crate) fn raw(self) -> sys::napi_env {
        self.0
    }

    pub(crate) fn promise(self) -> Result<(Deferred, sys::napi_value)> {
        let mut deferred = ptr::null_mut();
        let mut promise = ptr::null_mut();
        // SAFETY: a live env on its JS thread (`new`); both out-pointers are valid locals.
        let status = unsafe { sys::napi_create_promise(self.0, &mut deferred, &mut promise) };
        check(status, "create a promise")?;
        Ok((Deferred(deferred), promise))
    }

    /// Settles a promise; the deferred is consumed whatever happens.
    pub(crate) fn settle(
        self,
        deferred: Deferred,
        outcome: std::result::Result<sys::napi_value, sys::napi_value>,
    ) {
        // SAFETY: a live env on its JS thread; the deferred came from `promise` and is settled
        // only here, once (it is moved in).
        let status = unsafe {
            match outcome {
                Ok(value) => sys::napi_resolve_deferred(self.0, deferred.0, value),
                Err(error) => sys::napi_reject_deferred(self.0, deferred.0, error),
            }
        };
        // Fails only while the environment shuts down, when nobody awaits the promise.
        let _ = check(status, "settle a promise");
    }

    pub(crate) fn string(self, text: &str) -> Result<sys::napi_value> {
        let mut value = ptr::null_mut();
        // SAFETY: a live env on its JS thread; `text` is valid UTF-8 of the given length.
        let status = unsafe {
            sys::napi_create_string_utf8(
                self.0,
                text.as_ptr().cast(),
                text.len() as isize,
                &mut value,
            )
        };
        check(status, "create a string")?;
        Ok(value)
    }

    pub(crate) fn null(self) -> Result<sys::napi_value> {
        let mut value = ptr::null_mut();
        // SAFETY: a live env on its JS thread; the out-pointer is a valid local.
        let status = unsafe { sys::napi_get_null(self.0, &mut value) };
        check(status, "get null")?;
        Ok(value)
    }

    pub(crate) fn boolean(self, flag: bool) -> Result<sys::napi_value> {
        let mut value = ptr::null_mut();
        // SAFETY: as `null`.
        let status = unsafe { sys::napi_get_boolean(self.0, flag, &mut value) };
        check(status, "get a boolean")?;
        Ok(value)
    }

    pub(crate) fn number(self, n: f64) -> Result<sys::napi_value> {
        let mut value = ptr::null_mut();
        // SAFETY: as `null`.
        let status = unsafe { sys::napi_create_double(self.0, n, &mut value) };
        check(status, "create a number")?;
        Ok(value)
    }

    /// `{ name: value, ... }`.
    pub(crate) fn object(
        self,
        fields: &[(&std::ffi::CStr, sys::napi_value)],
    ) -> Result<sys::napi_value> {
        let mut object = ptr::null_mut();
        // SAFETY: as `null`.
        let status = unsafe { sys::napi_create_object(self.0, &mut object) };
        check(status, "create an object")?;
        for (name, value) in fields {
            // SAFETY: a live env on its JS thread; `object` and `value` were made in the current
            // handle scope; `name` is NUL-terminated.
            let status =
                unsafe { sys::napi_set_named_property(self.0, object, name.as_ptr(), *value) };
            check(status, "set a property")?;
        }
        Ok(object)
    }

    /// A reference that keeps `value` alive (count 1), for use in later callbacks.
    pub(crate) fn reference(self, value: sys::napi_value) -> Result<sys::napi_ref> {
        let mut reference = ptr::null_mut();
        // SAFETY: a live env on its JS thread; `value` is a live value of this env.
        let status = unsafe { sys::napi_create_reference(self.0, value, 1, &mut reference) };
        check(status, "create a reference")?;
        Ok(reference)
    }

    pub(crate) fn referenced(self, reference: sys::napi_ref) -> Result<sys::napi_value> {
        let mut value = ptr::null_mut();
        // SAFETY: a live env on its JS thread; `reference` was made by `reference` on it and
        // not deleted (its owner deletes it in its own drop).
        let status = unsafe { sys::napi_get_reference_value(self.0, reference, &mut value) };
        check(status, "read a reference")?;
        if value.is_null() {
            return Err(Error::new(
                Status::GenericFailure,
                "a reference was collected",
            ));
        }
        Ok(value)
    }

    pub(crate) fn delete_reference(self, reference: sys::napi_ref) {
        // SAFETY: a live env on its JS thread; the reference is deleted once, by its owner.
        let status = unsafe { sys::napi_delete_reference(self.0, reference) };
        let _ = check(status, "delete a reference");
    }

    /// `new classes[code](message)`, or a plain Error with `code` when there is no such class.
    pub(crate) fn error(
        self,
        classes: sys::napi_ref,
        code: &str,
        message: &str,
    ) -> sys::napi_value {
        self.class_error(classes, code, message)
            .unwrap_or_else(|_| self.plain_error(code, message))
    }

    fn class_error(
        self,
        classes: sys::napi_ref,
        code: &str,
        message: &str,
    ) -> Result<sys::napi_value> {
        let classes = self.referenced(classes)?;
        let key = std::ffi::CString::new(code).map_err(|_| Error::from_reason("bad code"))?;
        let mut class = ptr::null_mut();
        // SAFETY: a live env on its JS thread; `classes` is a live object; `key` NUL-terminated.
        let status =
            unsafe { sys::napi_get_named_property(self.0, classes, key.as_ptr(), &mut class) };
        check(status, "look up an error class")?;
        let mut kind = 0;
        // SAFETY: as above; `class` is a live value.
        let status = unsafe { sys::napi_typeof(self.0, class, &mut kind) };
        check(status, "typeof")?;
        if kind != sys::ValueType::napi_function {
            return Err(Error::from_reason("no such class"));
        }
        let text = self.string(message)?;
        let mut instance = ptr::null_mut();
        // SAFETY: as above; one argument, `text`, a live string value.
        let status = unsafe { sys::napi_new_instance(self.0, class, 1, &text, &mut instance) };
        check(status, "construct an error")?;
        Ok(instance)
    }

    fn plain_error(self, code: &str, message: &str) -> sys::napi_value {
        let mut instance = ptr::null_mut();
        if let (Ok(code), Ok(text)) = (self.string(code), self.string(message)) {
            // SAFETY: a live env on its JS thread; `code` and `text` are live strings. On failure
            // `instance` stays null, which a rejection accepts as `undefined`.
            unsafe { sys::napi_create_error(self.0, code, text, &mut instance) };
        }
        instance
    }

    /// An async resource and context, for callback scopes around settlements made from libuv
    /// callbacks (their end runs the microtasks, and async hooks see a resource).
    pub(crate) fn async_context(self) -> Result<AsyncScope> {
        let mut resource = ptr::null_mut();
        // SAFETY: as `null`.
        let status = unsafe { sys::napi_create_object(self.0, &mut resource) };
        check(status, "create an object")?;
        let name = self.string("simple-distributed-lock")?;
        let mut context = ptr::null_mut();
        // SAFETY: a live env on its JS thread; `resource` and `name` are live values.
        let status = unsafe { sys::napi_async_init(self.0, resource, name, &mut context) };
        check(status, "async init")?;
        let resource = self.reference(resource)?;
        Ok(AsyncScope { resource, context })
    }

    /// Runs `body` in a handle scope, and in a callback scope of `scope` when given (its close
    /// runs the microtasks that the settlements queued).
    pub(crate) fn scoped(self, scope: Option<&AsyncScope>, body: impl FnOnce(JsEnv)) {
        let mut handles = ptr::null_mut();
        // SAFETY: a live env on its JS thread; the scope is closed below, in order.
        let status = unsafe { sys::napi_open_handle_scope(self.0, &mut handles) };
        if check(status, "open a handle scope").is_err() {
            return;
        }
        let mut callback = ptr::null_mut();
        if let Some(scope) = scope
            && let Ok(resource) = self.referenced(scope.resource)
        {
            // SAFETY: a live env on its JS thread, not inside JS (a libuv callback); `resource`
            // and `context` were made together by `async_context`.
            unsafe {
                sys::napi_open_callback_scope(self.0, resource, scope.context, &mut callback)
            };
        }
        body(self);
        if !callback.is_null() {
            // SAFETY: closes the callback scope opened above, before its handle scope.
            unsafe { sys::napi_close_callback_scope(self.0, callback) };
        }
        // SAFETY: closes the handle scope opened above.
        unsafe { sys::napi_close_handle_scope(self.0, handles) };
    }

    pub(crate) fn drop_async(self, scope: &AsyncScope) {
        // SAFETY: a live env on its JS thread; the context is destroyed once, by its owner.
        unsafe { sys::napi_async_destroy(self.0, scope.context) };
        self.delete_reference(scope.resource);
    }
}

/// An async resource for callback scopes (see `JsEnv::async_context`).
pub(crate) struct AsyncScope {
    resource: sys::napi_ref,
    context: sys::napi_async_context,
}

//! Engine errors to JS errors: the message carries the stable code in front
//! (`ERR_LOCK_CONNECTION: cannot connect ...`); the facade turns it into a `LockError` subclass.

use napi::{Error, Status};
use sdl_engine::EngineError;

pub(crate) fn to_js_error(err: EngineError) -> Error {
    Error::new(
        Status::GenericFailure,
        format!("{}: {}", err.code(), err.message()),
    )
}

/// A value the facade's validation should have stopped; kept as a second line of defence.
pub(crate) fn invalid_arg(name: &str, rule: &str) -> Error {
    Error::new(
        Status::InvalidArg,
        format!("ERR_LOCK_INVALID_ARG: {name} {rule}"),
    )
}

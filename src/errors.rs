//! Engine errors to JS errors: the message carries the stable code in front
//! (`ERR_LOCK_CONNECTION: cannot connect ...`); the facade turns it into a `LockError` subclass.

use napi::{Error, Status};
use sdl_engine::EngineError;

use crate::completions::Outcome;

/// An engine error as the outcome of a call: the facade's class for its code settles it.
pub(crate) fn failed(err: EngineError) -> Outcome {
    Outcome::Failed {
        code: err.code(),
        message: capitalized(err.message()),
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

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

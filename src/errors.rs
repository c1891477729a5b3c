//! Engine errors to JS errors: a stable code, which the facade maps to its error class, and the
//! engine's message with its first letter capitalized.

use napi::{Error, Status};
use sdl_engine::EngineError;

/// The code and the message an engine error settles a promise with.
pub(crate) fn code_and_message(err: &EngineError) -> (&'static str, String) {
    (err.code(), capitalized(err.message()))
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// For sync exports: the facade reads the code in front (`ERR_LOCK_CONFIG: ...`).
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

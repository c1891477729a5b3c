//! The Lua scripts, byte-for-byte what v1 runs, so v1 and v2 processes agree on ownership.

use std::sync::LazyLock;

use redis::Script;

/// Deletes the key only while it still holds the caller's token.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"if redis.call("get", KEYS[1]) == ARGV[1] then
  return redis.call("del", KEYS[1])
else
  return 0
end"#,
    )
});

/// Sets a new TTL only while the key still holds the caller's token; never re-creates a key.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"if redis.call("get", KEYS[1]) == ARGV[1] then
  return redis.call("pexpire", KEYS[1], ARGV[2])
else
  return 0
end"#,
    )
});

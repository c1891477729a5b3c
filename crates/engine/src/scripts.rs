//! The Lua scripts. The key layout and the compare-then-act logic are v1's, so v1 and v2
//! processes agree on who owns a lock; v2 only adds side effects in keys and channels that v1
//! never reads (the fencing counter, the release notification).

use std::sync::LazyLock;

/// `SET lock token PX ttl NX`, and on success `INCR` the fencing counter in the same atomic step.
/// KEYS: lock, fence counter. ARGV: token, ttl ms. Returns the new fence, or 0 if not acquired.
pub(crate) const ACQUIRE_FENCED_SOURCE: &str = r#"if redis.call("set", KEYS[1], ARGV[1], "PX", ARGV[2], "NX") then
  return redis.call("incr", KEYS[2])
end
return 0"#;

/// Deletes the key only while it holds the caller's token, then tells waiters it is free.
/// KEYS: lock. ARGV: token, release channel ("" when handing the lock to a waiter whose attempt
/// follows on the same connection: nobody else is told). Returns 0 if not released, else 1 +
/// the number of subscribers told (the releasing process's own included).
pub(crate) const RELEASE_SOURCE: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then
  redis.call("del", KEYS[1])
  if ARGV[2] ~= "" then
    return 1 + redis.call("publish", ARGV[2], "")
  end
  return 1
end
return 0"#;

/// Sets a new TTL only while the key holds the caller's token; never re-creates a key.
/// KEYS: lock. ARGV: token, ttl ms. Returns 1 if extended, else 0.
pub(crate) const EXTEND_SOURCE: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then
  return redis.call("pexpire", KEYS[1], ARGV[2])
end
return 0"#;

/// `EXTEND` for many locks in one round trip: the auto-extension scheduler's batch.
/// KEYS: lock 1..n. ARGV: token 1, ttl ms 1, ..., token n, ttl ms n. Returns 1/0 per lock.
pub(crate) const EXTEND_MANY_SOURCE: &str = r#"local extended = {}
for i = 1, #KEYS do
  if redis.call("get", KEYS[i]) == ARGV[2 * i - 1] then
    extended[i] = redis.call("pexpire", KEYS[i], ARGV[2 * i])
  else
    extended[i] = 0
  end
end
return extended"#;

/// One of the scripts, as a request names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Script {
    AcquireFenced,
    Release,
    Extend,
    ExtendMany,
}

static SHAS: LazyLock<[String; 4]> = LazyLock::new(|| {
    [
        ACQUIRE_FENCED_SOURCE,
        RELEASE_SOURCE,
        EXTEND_SOURCE,
        EXTEND_MANY_SOURCE,
    ]
    .map(|source| redis::Script::new(source).get_hash().to_owned())
});

impl Script {
    pub(crate) fn source(self) -> &'static str {
        match self {
            Script::AcquireFenced => ACQUIRE_FENCED_SOURCE,
            Script::Release => RELEASE_SOURCE,
            Script::Extend => EXTEND_SOURCE,
            Script::ExtendMany => EXTEND_MANY_SOURCE,
        }
    }

    /// The SHA1 that EVALSHA names it by.
    pub(crate) fn sha(self) -> &'static str {
        &SHAS[self as usize]
    }

    /// Its bit in a connection's set of scripts the server has cached.
    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

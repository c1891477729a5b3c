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

// ---- locks over several resources --------------------------------------------------------------
// Each resource keeps its v1 key (a lock over [a, b] and a plain lock on a exclude each other);
// one script takes, releases or extends every key of one Cluster slot at once.

/// Takes every key, or none. KEYS: the locks. ARGV: token, ttl ms. Returns 1 if taken, else 0.
pub(crate) const ACQUIRE_ALL_SOURCE: &str = r#"for i = 1, #KEYS do
  if redis.call("exists", KEYS[i]) == 1 then
    return 0
  end
end
for i = 1, #KEYS do
  redis.call("set", KEYS[i], ARGV[1], "PX", ARGV[2])
end
return 1"#;

/// Deletes each key that holds the token and tells its waiters. KEYS: the locks. ARGV: token,
/// release channel prefix ("" to tell nobody). Returns how many keys it deleted.
pub(crate) const RELEASE_ALL_SOURCE: &str = r#"local released = 0
for i = 1, #KEYS do
  if redis.call("get", KEYS[i]) == ARGV[1] then
    redis.call("del", KEYS[i])
    released = released + 1
    if ARGV[2] ~= "" then
      redis.call("publish", ARGV[2] .. KEYS[i], "")
    end
  end
end
return released"#;

/// Sets a new TTL on every key if every one holds the token; else touches none. KEYS: the
/// locks. ARGV: token, ttl ms. Returns 1 if extended, else 0.
pub(crate) const EXTEND_ALL_SOURCE: &str = r#"for i = 1, #KEYS do
  if redis.call("get", KEYS[i]) ~= ARGV[1] then
    return 0
  end
end
for i = 1, #KEYS do
  redis.call("pexpire", KEYS[i], ARGV[2])
end
return 1"#;

// ---- semaphores -------------------------------------------------------------------------------
// One sorted set per semaphore: member = a permit's token, score = its expiry in ms by the
// server's clock (`TIME`, never the client's). Expired permits are dropped whenever the set is
// touched; the key itself expires with its last permit, so nothing outlives the leases.

/// Takes a permit if fewer than `permits` are held. KEYS: the semaphore. ARGV: token, ttl ms,
/// permits. Returns 1 if taken, else 0.
pub(crate) const SEM_ACQUIRE_SOURCE: &str = r#"local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("zremrangebyscore", KEYS[1], "-inf", now)
if redis.call("zcard", KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call("zadd", KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call("zrange", KEYS[1], -1, -1, "WITHSCORES")
redis.call("pexpire", KEYS[1], math.max(1, tonumber(last[2]) - now))
return 1"#;

/// Gives a permit back, then tells waiters one is free. KEYS: the semaphore. ARGV: token,
/// release channel ("" when handing it to a waiter whose attempt follows). Returns 0 if the token
/// held no live permit, else 1 + the number of subscribers told.
pub(crate) const SEM_RELEASE_SOURCE: &str = r#"local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call("zscore", KEYS[1], ARGV[1])
if not score then
  return 0
end
redis.call("zrem", KEYS[1], ARGV[1])
-- The key lives as long as its longest live permit, no longer.
redis.call("zremrangebyscore", KEYS[1], "-inf", now)
local last = redis.call("zrange", KEYS[1], -1, -1, "WITHSCORES")
if last[2] then
  redis.call("pexpire", KEYS[1], math.max(1, tonumber(last[2]) - now))
end
if tonumber(score) <= now then
  return 0
end
if ARGV[2] ~= "" then
  return 1 + redis.call("publish", ARGV[2], "")
end
return 1"#;

/// Sets a live permit's expiry to now + ttl; never revives an expired one. KEYS: the semaphore.
/// ARGV: token, ttl ms. Returns 1 if extended, else 0.
pub(crate) const SEM_EXTEND_SOURCE: &str = r#"local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call("zscore", KEYS[1], ARGV[1])
if not score or tonumber(score) <= now then
  if score then redis.call("zrem", KEYS[1], ARGV[1]) end
  return 0
end
redis.call("zadd", KEYS[1], "XX", now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call("zrange", KEYS[1], -1, -1, "WITHSCORES")
redis.call("pexpire", KEYS[1], math.max(1, tonumber(last[2]) - now))
return 1"#;

/// `SEM_EXTEND` for many permits in one round trip (auto-extension). KEYS: semaphore 1..n.
/// ARGV: token 1, ttl ms 1, ..., token n, ttl ms n. Returns 1/0 per permit.
pub(crate) const SEM_EXTEND_MANY_SOURCE: &str = r#"local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local extended = {}
for i = 1, #KEYS do
  local score = redis.call("zscore", KEYS[i], ARGV[2 * i - 1])
  if score and tonumber(score) > now then
    redis.call("zadd", KEYS[i], "XX", now + tonumber(ARGV[2 * i]), ARGV[2 * i - 1])
    local last = redis.call("zrange", KEYS[i], -1, -1, "WITHSCORES")
    redis.call("pexpire", KEYS[i], math.max(1, tonumber(last[2]) - now))
    extended[i] = 1
  else
    if score then redis.call("zrem", KEYS[i], ARGV[2 * i - 1]) end
    extended[i] = 0
  end
end
return extended"#;

/// How many live permits are held. KEYS: the semaphore. Read-only.
pub(crate) const SEM_COUNT_SOURCE: &str = r#"local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call("zcount", KEYS[1], "(" .. now, "+inf")"#;

// ---- read-write locks -------------------------------------------------------------------------
// Per resource: the readers' sorted set at the resource's key (member = a reader's token, score =
// its expiry in ms by the server's clock, the key living as long as its longest reader), the
// writer's key (its token, `PX` ttl) and the waiting-writer mark (`PX` a little over the waiting
// writer's poll interval), both in the resource key's slot (see `keys::rw_writer_key`). The mark
// keeps new readers out while a writer waits for the readers inside to leave, so a steady stream
// of readers cannot starve a writer; a writer getting in removes it, and it lapses by itself
// when the writer stops waiting.

/// Takes the read (ARGV[3] "0") or write ("1") side. KEYS: readers, writer, waiting-writer mark.
/// ARGV: token, ttl ms, "1" for write, mark ms (a writer that will try again marks itself
/// waiting for this long when readers are inside; 0: no mark). Returns 1 if taken, else 0.
pub(crate) const RW_ACQUIRE_SOURCE: &str = r#"if redis.call("exists", KEYS[2]) == 1 then
  return 0
end
local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("zremrangebyscore", KEYS[1], "-inf", now)
if ARGV[3] == "1" then
  if redis.call("zcard", KEYS[1]) > 0 then
    if tonumber(ARGV[4]) > 0 then
      redis.call("set", KEYS[3], ARGV[1], "PX", ARGV[4])
    end
    return 0
  end
  redis.call("set", KEYS[2], ARGV[1], "PX", ARGV[2])
  -- The mark did its work (a writer got in); another waiting writer marks again if readers
  -- beat it to the side this writer frees.
  redis.call("del", KEYS[3])
  return 1
end
if redis.call("exists", KEYS[3]) == 1 then
  return 0
end
redis.call("zadd", KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call("zrange", KEYS[1], -1, -1, "WITHSCORES")
redis.call("pexpire", KEYS[1], math.max(1, tonumber(last[2]) - now))
return 1"#;

/// Gives back the write side or a read side, whichever the token holds; tells waiters when the
/// writer or the last reader left. KEYS: readers, writer. ARGV: token, release channel ("" to
/// tell nobody). Returns 0 if the token held nothing live, else 1 + the subscribers told.
pub(crate) const RW_RELEASE_SOURCE: &str = r#"if redis.call("get", KEYS[2]) == ARGV[1] then
  redis.call("del", KEYS[2])
  if ARGV[2] ~= "" then
    return 1 + redis.call("publish", ARGV[2], "")
  end
  return 1
end
local score = redis.call("zscore", KEYS[1], ARGV[1])
if not score then
  return 0
end
local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("zrem", KEYS[1], ARGV[1])
redis.call("zremrangebyscore", KEYS[1], "-inf", now)
local last = redis.call("zrange", KEYS[1], -1, -1, "WITHSCORES")
if last[2] then
  redis.call("pexpire", KEYS[1], math.max(1, tonumber(last[2]) - now))
end
if tonumber(score) <= now then
  return 0
end
if not last[2] and ARGV[2] ~= "" then
  return 1 + redis.call("publish", ARGV[2], "")
end
return 1"#;

/// Sets a live side's expiry to now + ttl; never revives an expired one. KEYS: readers, writer.
/// ARGV: token, ttl ms. Returns 1 if extended, else 0.
pub(crate) const RW_EXTEND_SOURCE: &str = r#"if redis.call("get", KEYS[2]) == ARGV[1] then
  return redis.call("pexpire", KEYS[2], ARGV[2])
end
local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call("zscore", KEYS[1], ARGV[1])
if not score or tonumber(score) <= now then
  if score then redis.call("zrem", KEYS[1], ARGV[1]) end
  return 0
end
redis.call("zadd", KEYS[1], "XX", now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call("zrange", KEYS[1], -1, -1, "WITHSCORES")
redis.call("pexpire", KEYS[1], math.max(1, tonumber(last[2]) - now))
return 1"#;

/// `RW_EXTEND` for many sides in one round trip (auto-extension). KEYS: readers 1, writer 1,
/// ..., readers n, writer n. ARGV: token 1, ttl ms 1, ..., token n, ttl ms n. Returns 1/0 each.
pub(crate) const RW_EXTEND_MANY_SOURCE: &str = r#"local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local extended = {}
for i = 1, #KEYS / 2 do
  local readers, writer = KEYS[2 * i - 1], KEYS[2 * i]
  local token, ttl = ARGV[2 * i - 1], ARGV[2 * i]
  if redis.call("get", writer) == token then
    extended[i] = redis.call("pexpire", writer, ttl)
  else
    local score = redis.call("zscore", readers, token)
    if score and tonumber(score) > now then
      redis.call("zadd", readers, "XX", now + tonumber(ttl), token)
      local last = redis.call("zrange", readers, -1, -1, "WITHSCORES")
      redis.call("pexpire", readers, math.max(1, tonumber(last[2]) - now))
      extended[i] = 1
    else
      if score then redis.call("zrem", readers, token) end
      extended[i] = 0
    end
  end
end
return extended"#;

/// Holders now: 1 while a writer holds it, else the live readers. KEYS: readers, writer.
/// Read-only.
pub(crate) const RW_COUNT_SOURCE: &str = r#"if redis.call("exists", KEYS[2]) == 1 then
  return 1
end
local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call("zcount", KEYS[1], "(" .. now, "+inf")"#;

/// One of the scripts, as a request names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Script {
    AcquireFenced,
    Release,
    Extend,
    ExtendMany,
    SemAcquire,
    SemRelease,
    SemExtend,
    SemExtendMany,
    SemCount,
    RwAcquire,
    RwRelease,
    RwExtend,
    RwExtendMany,
    RwCount,
    AcquireAll,
    ReleaseAll,
    ExtendAll,
}

static SHAS: LazyLock<[String; 17]> = LazyLock::new(|| {
    [
        ACQUIRE_FENCED_SOURCE,
        RELEASE_SOURCE,
        EXTEND_SOURCE,
        EXTEND_MANY_SOURCE,
        SEM_ACQUIRE_SOURCE,
        SEM_RELEASE_SOURCE,
        SEM_EXTEND_SOURCE,
        SEM_EXTEND_MANY_SOURCE,
        SEM_COUNT_SOURCE,
        RW_ACQUIRE_SOURCE,
        RW_RELEASE_SOURCE,
        RW_EXTEND_SOURCE,
        RW_EXTEND_MANY_SOURCE,
        RW_COUNT_SOURCE,
        ACQUIRE_ALL_SOURCE,
        RELEASE_ALL_SOURCE,
        EXTEND_ALL_SOURCE,
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
            Script::SemAcquire => SEM_ACQUIRE_SOURCE,
            Script::SemRelease => SEM_RELEASE_SOURCE,
            Script::SemExtend => SEM_EXTEND_SOURCE,
            Script::SemExtendMany => SEM_EXTEND_MANY_SOURCE,
            Script::SemCount => SEM_COUNT_SOURCE,
            Script::RwAcquire => RW_ACQUIRE_SOURCE,
            Script::RwRelease => RW_RELEASE_SOURCE,
            Script::RwExtend => RW_EXTEND_SOURCE,
            Script::RwExtendMany => RW_EXTEND_MANY_SOURCE,
            Script::RwCount => RW_COUNT_SOURCE,
            Script::AcquireAll => ACQUIRE_ALL_SOURCE,
            Script::ReleaseAll => RELEASE_ALL_SOURCE,
            Script::ExtendAll => EXTEND_ALL_SOURCE,
        }
    }

    /// The SHA1 that EVALSHA names it by.
    pub(crate) fn sha(self) -> &'static str {
        &SHAS[self as usize]
    }

    /// Its bit in a connection's set of scripts the server has cached.
    pub(crate) fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

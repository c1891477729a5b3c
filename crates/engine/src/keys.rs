//! Names of what v2 keeps beside a lock key: the fencing counters and the release channel.
//!
//! v1 never touches these. **Fencing counters are per Cluster slot, not per resource**: every
//! lock key in slot S (under one prefix) takes its fences from one counter, `{t}:fence:<prefix>`,
//! where `t` is a short tag chosen to hash to S. A resource always maps to the same slot, so its
//! fences strictly increase (across holders, processes, Locks, its key expiring, restarts with
//! persistence, and on a cluster, where the counter lives on the lock key's node and one script
//! updates both); unrelated resources of a slot share the counter, so their fences interleave.
//! The counters never expire and there are at most 16384 of them per prefix, however many
//! resources are locked: nothing per resource outlives its lock.

use std::sync::LazyLock;

const SLOTS: usize = 16384;

/// The fencing counter of the locks in `lock_key`'s slot; `prefix` (the Lock's key prefix)
/// keeps the counters of different prefixes apart.
pub fn fence_key(lock_key: &str, prefix: &str) -> String {
    let tag = &SLOT_TAGS[usize::from(slot(lock_key))];
    format!("{{{tag}}}:fence:{prefix}")
}

/// A read-write lock's writer key, beside its readers' set `rw_key`, in the same Cluster slot.
pub(crate) fn rw_writer_key(rw_key: &str) -> String {
    let tag = &SLOT_TAGS[usize::from(slot(rw_key))];
    format!("{{{tag}}}:rw-writer:{rw_key}")
}

/// A read-write lock's waiting-writer mark (see `scripts`), in the same Cluster slot.
pub(crate) fn rw_mark_key(rw_key: &str) -> String {
    let tag = &SLOT_TAGS[usize::from(slot(rw_key))];
    format!("{{{tag}}}:rw-waiting:{rw_key}")
}

pub(crate) const RELEASED_PREFIX: &str = "sdl:released:";

/// The channel a v2 release publishes on, so waiters retry at once instead of polling.
pub(crate) fn released_channel(lock_key: &str) -> String {
    format!("{RELEASED_PREFIX}{lock_key}")
}

/// The lock key a release channel is for.
pub(crate) fn key_of_released_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix(RELEASED_PREFIX)
}

/// The part of `key` Redis Cluster hashes: the text between the first `{` and the next `}`, if
/// that text is not empty.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')? + open + 1;
    (close > open + 1).then(|| &key[open + 1..close])
}

/// Redis Cluster's slot of a key.
pub(crate) fn slot(key: &str) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    crc16(hashed.as_bytes()) % SLOTS as u16
}

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster uses for slots.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// For each slot, a short brace-free string that hashes to it (built once, ~a few ms).
static SLOT_TAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut tags = vec![String::new(); SLOTS];
    let mut missing = SLOTS;
    let mut n: u64 = 0;
    while missing > 0 {
        let candidate = format!("{n:x}");
        let s = usize::from(crc16(candidate.as_bytes()) % SLOTS as u16);
        if tags[s].is_empty() {
            tags[s] = candidate;
            missing -= 1;
        }
        n += 1;
    }
    tags
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_redis_reference_values() {
        // From the Redis Cluster specification and CLUSTER KEYSLOT.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(slot("foo{{bar}}zap"), crc16(b"{bar") % 16384);
    }

    #[test]
    fn fence_counters_share_the_lock_key_slot_and_are_one_per_slot() {
        for key in [
            "lock:order:123",
            "lock:{user:7}:cart",
            "lock:a}b",
            "lock:x{}y",
            "lock:{",
            "}",
            "lock:{{a}}",
            "",
            "app:lock:日本",
        ] {
            let fence = fence_key(key, "lock:");
            assert_eq!(slot(&fence), slot(key), "{key} -> {fence}");
            assert_ne!(fence, key);
            for companion in [rw_writer_key(key), rw_mark_key(key)] {
                assert_eq!(slot(&companion), slot(key), "{key} -> {companion}");
                assert_ne!(companion, key);
            }
        }
        assert_eq!(fence_key("lock:a", "lock:"), fence_key("lock:a", "lock:"));
        assert_ne!(fence_key("lock:a", "lock:"), fence_key("jobs:a", "jobs:"));
        // Many resources, at most one counter per slot.
        let counters: std::collections::HashSet<String> = (0..100_000)
            .map(|i| fence_key(&format!("lock:order:{i}"), "lock:"))
            .collect();
        assert!(counters.len() <= SLOTS, "{}", counters.len());
        // Keys sharing a hash tag share one counter.
        assert_eq!(
            fence_key("lock:{u}:1", "lock:"),
            fence_key("lock:{u}:2", "lock:")
        );
    }
}

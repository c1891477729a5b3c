//! Names of what v2 keeps beside a lock key: the fencing counter and the release channel.
//!
//! v1 never touches these. A companion key must live in the lock key's Redis Cluster slot, so
//! that one script can update both atomically, whatever braces the resource name holds:
//! - a key without braces: `{<lock key>}:fence` (its hash tag is the whole lock key);
//! - a key with a hash tag `{tag}`: `{tag}:fence:<lock key>` (same tag, same slot);
//! - a key with braces but no valid tag (`a}b`, `x{}y`): the slot is the hash of the whole key, so
//!   the companion gets a short tag chosen to hash to that same slot: `{t}:fence:<lock key>`.

use std::sync::LazyLock;

const SLOTS: usize = 16384;

/// The fencing counter of the lock at `lock_key`.
pub(crate) fn fence_key(lock_key: &str) -> String {
    companion(lock_key, "fence")
}

const RELEASED_PREFIX: &str = "sdl:released:";

/// The channel a v2 release publishes on, so waiters retry at once instead of polling.
pub(crate) fn released_channel(lock_key: &str) -> String {
    format!("{RELEASED_PREFIX}{lock_key}")
}

/// The lock key a release channel is for.
pub(crate) fn key_of_released_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix(RELEASED_PREFIX)
}

fn companion(lock_key: &str, suffix: &str) -> String {
    if !lock_key.is_empty() && !lock_key.contains(['{', '}']) {
        return format!("{{{lock_key}}}:{suffix}");
    }
    match hash_tag(lock_key) {
        Some(tag) => format!("{{{tag}}}:{suffix}:{lock_key}"),
        None => {
            let tag = &SLOT_TAGS[usize::from(slot(lock_key))];
            format!("{{{tag}}}:{suffix}:{lock_key}")
        }
    }
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
    fn companions_share_the_lock_key_slot() {
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
            let fence = fence_key(key);
            assert_eq!(slot(&fence), slot(key), "{key} -> {fence}");
            assert_ne!(fence, key);
        }
        assert_eq!(fence_key("lock:order:123"), "{lock:order:123}:fence");
        assert_eq!(fence_key("lock:{u}:1"), "{u}:fence:lock:{u}:1");
    }

    #[test]
    fn distinct_keys_get_distinct_companions() {
        let keys = ["lock:a}b", "lock:a}c", "{lock:a}", "lock:a", "a}b"];
        let mut seen = std::collections::HashSet::new();
        for key in keys {
            assert!(seen.insert(fence_key(key)), "{key}");
        }
    }
}

// @ts-check
'use strict';
// Where the engine keeps a lock's fencing counter, for `status`. This mirrors
// crates/engine/src/keys.rs (`fence_key`), the one place to change with that layout:
// one counter per Cluster slot and key prefix, `{t}:fence:<prefix>`, where `t` is a short tag
// chosen to hash to the lock key's slot (the first of 0, 1, 2, ... in hex that does). The
// counter is shared by the resources of a slot: the holder's fence is at most its value.

const SLOTS = 16384;

/**
 * The fencing counter's key for the lock at `lockKey` (`prefix` + resource).
 * @param {string} lockKey
 * @param {string} prefix
 * @returns {string}
 */
function fenceKey(lockKey, prefix) {
  return `{${slotTags()[slot(lockKey)]}}:fence:${prefix}`;
}

/** The text between the first `{` and the next `}`, if not empty. @param {string} key */
function hashTag(key) {
  const open = key.indexOf('{');
  if (open < 0) return null;
  const close = key.indexOf('}', open + 1);
  return close > open + 1 ? key.slice(open + 1, close) : null;
}

/** Redis Cluster's slot of a key. @param {string} key */
function slot(key) {
  return crc16(Buffer.from(hashTag(key) ?? key, 'utf8')) % SLOTS;
}

/** CRC16-CCITT (XMODEM), as Redis Cluster computes it. @param {Uint8Array} bytes */
function crc16(bytes) {
  let crc = 0;
  for (const byte of bytes) {
    crc ^= byte << 8;
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc;
}

/** @type {string[] | undefined} */
let tags;
/** For each slot, the first hex number (as text) that hashes to it; built on first use. */
function slotTags() {
  if (tags) return tags;
  const table = new Array(SLOTS).fill('');
  for (let n = 0, missing = SLOTS; missing > 0; n++) {
    const candidate = n.toString(16);
    const s = crc16(Buffer.from(candidate, 'latin1')) % SLOTS;
    if (table[s] === '') {
      table[s] = candidate;
      missing--;
    }
  }
  tags = table;
  return table;
}

module.exports = { fenceKey, slot };

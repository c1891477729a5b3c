// @ts-check
// Where the engine keeps fencing counters (one per Cluster slot and key prefix), from the one JS
// copy of that rule (lib/cli/keys.js, which mirrors crates/engine/src/keys.rs).

import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
/** @type {{ fenceKey: (lockKey: string, prefix: string) => string, slot: (key: string) => number }} */
const keys = require('../../lib/cli/keys.js');

/** The fencing counter of the lock at `lockKey`. @param {string} lockKey @param {string} [prefix] */
export function fenceKey(lockKey, prefix = 'lock:') {
  return keys.fenceKey(lockKey, prefix);
}

export const { slot } = keys;

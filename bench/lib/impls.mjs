// @ts-check
// The implementations under test, behind one small interface:
//   acquire(resource, ttl) -> handle | null      one attempt, no retries, no auto-extension
//   release(resource, handle) -> boolean
//   withLock(resource, fn)                       scenario 3: the library's own idiomatic
//                                                "acquire with retries" call, default settings;
//                                                throws GaveUpError when the library gives up
//   hold(resource, ttl) -> Held                  scenario 4: auto-extension the library's own way
// A member is null where the library cannot do it (shown as "n/a").

// Each library is imported only by the process that measures it (so its code and heap are not
// in the other libraries' numbers).

import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { Redis } from 'ioredis';
import { loadScript, userClient } from './transports.mjs';

/** @typedef {import('./transports.mjs').Target} Target */

const require = createRequire(import.meta.url);

/** The library gave up waiting (its default retry budget ran out). */
export class GaveUpError extends Error {}

/**
 * @typedef {object} Held
 * @property {() => Promise<void>} release
 * @property {() => boolean} lost whether the library reported the lock lost (false if it cannot tell)
 */

/**
 * @typedef {object} Impl
 * @property {string} name
 * @property {(resource: string) => string} redisKey the Redis key the library locks for `resource`
 * @property {(resource: string, ttl: number) => Promise<unknown>} acquire a handle, or null if held
 * @property {(resource: string, handle: any) => Promise<boolean>} release
 * @property {((resource: string, fn: () => Promise<void>) => Promise<void>) | null} withLock
 * @property {string} withLockHow
 * @property {((resource: string, ttl: number) => Promise<Held>) | null} hold
 * @property {string} holdHow
 * @property {() => number | null} lostCount losses the library reported (null: it cannot report them)
 * @property {() => Promise<void>} close
 */

/** What `--impls` accepts for scenarios 1-4, in report order. */
export const SINGLE_IMPLS = ['ioredis', 'v1', 'v2', 'redlock', 'redis-semaphore'];
/**
 * Also accepted (not run by default): v2 without fencing counters; `v2-traced`: v2 with a
 * subscriber (doing nothing) on every tracing channel, as an APM would have; and `v2-before`: another
 * build of this package (a checkout of an earlier commit, built), from the directory in
 * `SDL_BENCH_BEFORE`, to compare a change with what it replaces in one run.
 */
export const EXTRA_IMPLS = ['v2-nofence', 'v2-before', 'v2-traced', 'v2-semaphore', 'redis-semaphore-semaphore', 'v2-rwlock', 'v2-multi'];

/** Permits of the semaphore rows (`--impls v2-semaphore,redis-semaphore-semaphore`): 1, so that the bench's checks (a second acquire of a held resource fails) hold. */
const SEMAPHORE_PERMITS = 1;

export const LABELS = /** @type {Record<string, string>} */ ({
  ioredis: 'ioredis (SET NX PX + EVALSHA)',
  v1: 'v1 (simple-distributed-lock 1.x on ioredis)',
  v2: 'v2 (this package, Rust engine)',
  'v2-nofence': 'v2, fencing: false',
  'v2-traced': 'v2, every tracing channel subscribed',
  'v2-semaphore': `v2 Semaphore (${SEMAPHORE_PERMITS} permits)`,
  'v2-rwlock': 'v2 ReadWriteLock (write side)',
  'v2-multi': 'v2 Lock over 2 resources',
  'redis-semaphore-semaphore': `redis-semaphore 5 Semaphore (${SEMAPHORE_PERMITS} permits)`,
  'v2-before': `v2 as built in ${process.env.SDL_BENCH_BEFORE ?? '$SDL_BENCH_BEFORE'}`,
  redlock: 'redlock 5.0.0-beta.2',
  'redis-semaphore': 'redis-semaphore 5 (Mutex)',
});

const RELEASE_SCRIPT = 'if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end';

/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** @param {number} port @param {boolean} [lazy] */
export function ioredisClient(port, lazy = false) {
  return new Redis({ host: '127.0.0.1', port, lazyConnect: lazy, maxRetriesPerRequest: 3 });
}

/**
 * The implementations that run on every transport (the others: plain TCP only).
 */
export const ANY_TRANSPORT_IMPLS = ['ioredis', 'v2', 'v2-nofence', 'v2-before', 'v2-traced'];

/** The resource of scenario 3 (its Redis key is `lock:contended` for ioredis and v2). */
export const CONTENDED = 'contended';

/**
 * @param {string} name one of SINGLE_IMPLS / EXTRA_IMPLS
 * @param {Target} target where the servers are: on tcp one server, or (v2, redlock) the masters
 *   of a Redlock group; tls, cluster and sentinel: ioredis and v2 only
 * @returns {Promise<Impl>}
 */
export async function createImpl(name, target) {
  if (target.transport !== 'tcp') {
    if (!ANY_TRANSPORT_IMPLS.includes(name)) throw new Error(`${name} runs over plain TCP only, not ${target.transport}`);
    return name === 'ioredis' ? plainIoredis(target) : v2(target, /** @type {'v2' | 'v2-nofence' | 'v2-before' | 'v2-traced'} */ (name));
  }
  const ports = target.ports;
  if (ports.length > 1 && !name.startsWith('v2') && name !== 'redlock') throw new Error(`${name} cannot run over ${ports.length} masters`);
  switch (name) {
    case 'ioredis':
      return plainIoredis(target);
    case 'v1':
      return v1(ports[0]);
    case 'v2':
    case 'v2-nofence':
    case 'v2-before':
    case 'v2-traced':
      return v2(target, name);
    case 'redlock':
      return redlock(ports);
    case 'redis-semaphore':
      return semaphore(ports[0]);
    case 'v2-semaphore':
      return v2Semaphore(ports[0]);
    case 'redis-semaphore-semaphore':
      return semaphoreSemaphore(ports[0]);
    case 'v2-rwlock':
      return v2ReadWriteLock(ports[0]);
    case 'v2-multi':
      return v2Multi(ports[0]);
    default:
      throw new Error(`unknown implementation "${name}"`);
  }
}

/**
 * The floor for any JS client: SET NX PX, and a compare-and-delete script loaded once (on every
 * master of a cluster), by EVALSHA; the client a user would build for the transport.
 * @param {Target} target @returns {Promise<Impl>}
 */
async function plainIoredis(target) {
  const redis = userClient(target);
  const sha = await loadScript(redis, RELEASE_SCRIPT);
  const key = (/** @type {string} */ resource) => `lock:${resource}`;
  /** @param {string} resource @param {number} ttl */
  const acquire = async (resource, ttl) => {
    const token = randomBytes(16).toString('hex');
    return (await redis.set(key(resource), token, 'PX', ttl, 'NX')) === 'OK' ? token : null;
  };
  /** @param {string} resource @param {string} token */
  const release = async (resource, token) => (await redis.evalsha(sha, 1, key(resource), token)) === 1;
  return {
    name: 'ioredis',
    redisKey: key,
    acquire,
    release,
    // Not a library: a plain polling loop (SET NX every 50 ms), shown for reference only.
    withLock: async (resource, fn) => {
      let token;
      while (!(token = await acquire(resource, 10000))) await sleep(50);
      try {
        await fn();
      } finally {
        await release(resource, token);
      }
    },
    withLockHow: 'a plain loop: SET NX PX 10000, retry every 50 ms (reference only; the floor is the formula)',
    hold: null,
    holdHow: 'n/a: no auto-extension in a bare client',
    lostCount: () => null,
    close: async () => void redis.disconnect(),
  };
}

/** @param {number} port @returns {Promise<Impl>} */
async function v1(port) {
  /** @type {typeof import('../../__test__/fixtures/v1-lock.cjs')} */
  const { V1Lock } = require('../../__test__/fixtures/v1-lock.cjs');
  const redis = ioredisClient(port);
  await redis.ping();
  const lock = new V1Lock(redis);
  return {
    name: 'v1',
    redisKey: (resource) => `lock:${resource}`,
    acquire: (resource, ttl) => lock.acquire(resource, { ttl }),
    release: (resource, token) => lock.release(resource, token),
    withLock: (resource, fn) => lock.using(resource, fn, { retryCount: Infinity }),
    withLockHow: 'lock.using(r, fn, { retryCount: Infinity }): default retryDelay 200 ms (the default retryCount 0 would not wait at all)',
    hold: async (resource, ttl) => {
      const token = await lock.acquire(resource, { ttl, autoExtend: true });
      if (!token) throw new Error(`v1: could not acquire ${resource}`);
      return { release: async () => void (await lock.release(resource, token)), lost: () => false };
    },
    holdHow: 'lock.acquire(r, { ttl, autoExtend: true }): a setInterval per lock every floor(ttl/2)',
    lostCount: () => null,
    close: async () => void redis.disconnect(),
  };
}

/** @param {Target} target @param {'v2' | 'v2-nofence' | 'v2-before' | 'v2-traced'} name @returns {Promise<Impl>} */
async function v2(target, name) {
  const fencing = name !== 'v2-nofence';
  const before = process.env.SDL_BENCH_BEFORE;
  if (name === 'v2-before' && !before) throw new Error('v2-before needs SDL_BENCH_BEFORE: the directory of another build');
  /** @type {typeof import('simple-distributed-lock')} */
  const { Lock } = await import(name === 'v2-before' ? pathToFileURL(`${before}/index.js`).href : 'simple-distributed-lock');
  let lost = 0;
  const onLockLost = () => void lost++;
  if (name === 'v2-traced') {
    const { tracingChannel } = await import('node:diagnostics_channel');
    const nothing = () => {};
    for (const op of ['acquire', 'release', 'extend', 'isLocked', 'using']) {
      tracingChannel(`simple-distributed-lock:${op}`).subscribe({ start: nothing, end: nothing, asyncStart: nothing, asyncEnd: nothing, error: nothing });
    }
  }
  // As a v1 caller would: an ioredis instance (lazy, so it never opens a socket; the engine only
  // reads its options): Redis (with tls, or sentinels), or Cluster. A Redlock group is given as URLs.
  const lock =
    target.transport === 'tcp' && target.ports.length > 1
      ? new Lock(target.ports.map((p) => `redis://127.0.0.1:${p}`), { onLockLost, fencing })
      : new Lock(userClient(target, { lazy: true }), { onLockLost, fencing });
  await lock.isLocked('bench:warm-connection');
  return {
    name,
    redisKey: (resource) => `lock:${resource}`,
    acquire: (resource, ttl) => lock.acquire(resource, { ttl }),
    release: (resource, token) => lock.release(resource, token),
    withLock: (resource, fn) => lock.using(resource, () => fn(), { retryCount: Infinity }),
    withLockHow: 'lock.using(r, fn, { retryCount: Infinity }): default retryDelay 200 ms, plus its release notifications',
    hold: async (resource, ttl) => {
      const token = await lock.acquire(resource, { ttl, autoExtend: true });
      if (!token) throw new Error(`v2: could not acquire ${resource}`);
      return { release: async () => void (await lock.release(resource, token)), lost: () => false };
    },
    holdHow: 'lock.acquire(r, { ttl, autoExtend: true }): one engine scheduler for all leases',
    lostCount: () => lost,
    close: () => lock.close(),
  };
}

/**
 * v2's Semaphore: acquire takes one permit (one attempt), release gives it back.
 * @param {number} port @returns {Promise<Impl>}
 */
async function v2Semaphore(port) {
  /** @type {typeof import('simple-distributed-lock')} */
  const { Semaphore } = await import('simple-distributed-lock');
  const sem = new Semaphore(`redis://127.0.0.1:${port}`, { permits: SEMAPHORE_PERMITS });
  await sem.isLocked('bench:warm-connection');
  return {
    name: 'v2-semaphore',
    redisKey: (resource) => `semaphore:${resource}`,
    acquire: (resource, ttl) => sem.acquire(resource, { ttl }),
    release: (resource, token) => sem.release(resource, token),
    withLock: null,
    withLockHow: 'n/a',
    hold: null,
    holdHow: 'n/a',
    lostCount: () => null,
    close: () => sem.close(),
  };
}

/**
 * v2's lock over several resources: each acquire takes `<resource>` and `<resource>:pair` in one
 * script (all or none), each release gives both back.
 * @param {number} port @returns {Promise<Impl>}
 */
async function v2Multi(port) {
  /** @type {typeof import('simple-distributed-lock')} */
  const { Lock } = await import('simple-distributed-lock');
  const lock = new Lock(`redis://127.0.0.1:${port}`);
  await lock.isLocked('bench:warm-connection');
  return {
    name: 'v2-multi',
    redisKey: (resource) => `lock:${resource}`,
    acquire: (resource, ttl) => lock.acquire([resource, `${resource}:pair`], { ttl }),
    release: (resource, token) => lock.release([resource, `${resource}:pair`], token),
    withLock: null,
    withLockHow: 'n/a',
    hold: null,
    holdHow: 'n/a',
    lostCount: () => null,
    close: () => lock.close(),
  };
}

/** CRC16-XMODEM, Redis Cluster's slot hash. @param {string} text */
function crc16(text) {
  let crc = 0;
  for (const byte of Buffer.from(text)) {
    crc ^= byte << 8;
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc;
}

/** @type {string[] | null} for each slot, the engine's tag that hashes to it (keys.rs SLOT_TAGS) */
let slotTags = null;

/** The engine's writer key of a read-write lock key (crates/engine/src/keys.rs). @param {string} key */
function rwWriterKey(key) {
  if (!slotTags) {
    const tags = /** @type {string[]} */ (new Array(16384).fill(''));
    for (let n = 0, missing = 16384; missing > 0; n++) {
      const tag = n.toString(16);
      const slot = crc16(tag) % 16384;
      if (tags[slot] === '') {
        tags[slot] = tag;
        missing--;
      }
    }
    slotTags = tags;
  }
  const open = key.indexOf('{');
  const close = open < 0 ? -1 : key.indexOf('}', open + 1);
  const hashed = close > open + 1 ? key.slice(open + 1, close) : key;
  return `{${slotTags[crc16(hashed) % 16384]}}:rw-writer:${key}`;
}

/**
 * v2's ReadWriteLock, write side (the bench's checks need an exclusive hold): acquire takes it
 * (one attempt), release gives it back. Each pair runs the read-write scripts (server TIME, the
 * readers' set and the waiting mark checked), so it prices them against a plain lock.
 * @param {number} port @returns {Promise<Impl>}
 */
async function v2ReadWriteLock(port) {
  /** @type {typeof import('simple-distributed-lock')} */
  const { ReadWriteLock } = await import('simple-distributed-lock');
  const rw = new ReadWriteLock(`redis://127.0.0.1:${port}`);
  await rw.isLocked('bench:warm-connection');
  return {
    name: 'v2-rwlock',
    redisKey: (resource) => rwWriterKey(`rwlock:${resource}`),
    acquire: (resource, ttl) => rw.acquire(resource, { ttl }),
    release: (resource, token) => rw.release(resource, token),
    withLock: null,
    withLockHow: 'n/a',
    hold: null,
    holdHow: 'n/a',
    lostCount: () => null,
    close: () => rw.close(),
  };
}

/**
 * redis-semaphore's Semaphore: tryAcquire (one attempt, no refresh timer), release.
 * @param {number} port @returns {Promise<Impl>}
 */
async function semaphoreSemaphore(port) {
  const { Semaphore } = await import('redis-semaphore');
  const redis = ioredisClient(port);
  await redis.ping();
  return {
    name: 'redis-semaphore-semaphore',
    redisKey: (resource) => `semaphore:${resource}`,
    acquire: async (resource, ttl) => {
      const sem = new Semaphore(redis, resource, SEMAPHORE_PERMITS, { lockTimeout: ttl, acquireAttemptsLimit: 1, refreshInterval: 0 });
      return (await sem.tryAcquire()) ? sem : null;
    },
    release: async (_resource, sem) => {
      await sem.release();
      return true;
    },
    withLock: null,
    withLockHow: 'n/a',
    hold: null,
    holdHow: 'n/a',
    lostCount: () => null,
    close: async () => void redis.disconnect(),
  };
}

/** @param {number[]} ports @returns {Promise<Impl>} */
async function redlock(ports) {
  const { default: Redlock, ExecutionError } = await import('redlock');
  const clients = ports.map((p) => ioredisClient(p));
  await Promise.all(clients.map((c) => c.ping()));
  const rl = new Redlock(clients);
  // Redlock emits every failed attempt (ResourceLockedError) as 'error'; its README says to listen.
  rl.on('error', () => {});
  const key = (/** @type {string} */ resource) => `lock:${resource}`;
  return {
    name: 'redlock',
    redisKey: key,
    acquire: async (resource, ttl) => {
      try {
        return await rl.acquire([key(resource)], ttl, { retryCount: 0 });
      } catch (err) {
        if (err instanceof ExecutionError) return null;
        throw err;
      }
    },
    release: async (_resource, lock) => {
      try {
        await lock.release();
        return true;
      } catch (err) {
        if (err instanceof ExecutionError) return false;
        throw err;
      }
    },
    withLock: async (resource, fn) => {
      try {
        await rl.using([key(resource)], 10000, () => fn());
      } catch (err) {
        // Thrown by the acquire after retryCount attempts (the routine itself never throws it).
        if (err instanceof ExecutionError) throw new GaveUpError(err.message);
        throw err;
      }
    },
    withLockHow: 'redlock.using([key], 10000, fn): defaults retryCount 10, retryDelay 200 ms, retryJitter 100 ms',
    hold: async (resource, ttl) => {
      /** @type {() => void} */
      let letGo = () => {};
      const gate = new Promise((/** @type {(v?: unknown) => void} */ resolve) => (letGo = resolve));
      /** @type {import('redlock').RedlockAbortSignal | undefined} */
      let signal;
      /** @type {() => void} */
      let onAcquired = () => {};
      const acquired = new Promise((/** @type {(v?: unknown) => void} */ resolve) => (onAcquired = resolve));
      const done = rl.using([key(resource)], ttl, async (s) => {
        signal = s;
        onAcquired();
        await gate;
      });
      await Promise.race([acquired, done]);
      if (!signal) throw new Error(`redlock: could not acquire ${resource}`);
      const held = /** @type {import('redlock').RedlockAbortSignal} */ (signal);
      return {
        release: async () => {
          letGo();
          await done;
        },
        lost: () => held.aborted,
      };
    },
    holdHow: 'redlock.using([key], ttl, routine): extends when 500 ms are left (automaticExtensionThreshold)',
    lostCount: () => null,
    close: async () => clients.forEach((c) => c.disconnect()),
  };
}

/** @param {number} port @returns {Promise<Impl>} */
async function semaphore(port) {
  const { Mutex, TimeoutError: SemaphoreTimeoutError } = await import('redis-semaphore');
  const redis = ioredisClient(port);
  await redis.ping();
  let lost = 0;
  const onLockLost = () => void lost++;
  return {
    name: 'redis-semaphore',
    redisKey: (resource) => `mutex:${resource}`,
    acquire: async (resource, ttl) => {
      // One attempt and no refresh timer: the same operation as the others' plain acquire.
      const mutex = new Mutex(redis, resource, { lockTimeout: ttl, acquireAttemptsLimit: 1, refreshInterval: 0, onLockLost });
      return (await mutex.tryAcquire()) ? mutex : null;
    },
    release: async (_resource, mutex) => {
      await mutex.release();
      return true; // Mutex.release() does not say whether it still owned the lock
    },
    withLock: async (resource, fn) => {
      const mutex = new Mutex(redis, resource, { onLockLost });
      try {
        await mutex.acquire();
      } catch (err) {
        if (err instanceof SemaphoreTimeoutError) throw new GaveUpError(err.message);
        throw err;
      }
      try {
        await fn();
      } finally {
        await mutex.release();
      }
    },
    withLockHow: 'new Mutex(redis, r).acquire(): defaults retryInterval 10 ms, acquireTimeout 10 s, lockTimeout 10 s',
    hold: async (resource, ttl) => {
      let wasLost = false;
      const mutex = new Mutex(redis, resource, {
        lockTimeout: ttl,
        onLockLost: () => {
          wasLost = true;
          lost++;
        },
      });
      await mutex.acquire();
      return { release: () => mutex.release(), lost: () => wasLost };
    },
    holdHow: 'new Mutex(redis, r, { lockTimeout: ttl }).acquire(): refresh every 0.8 × ttl (its default)',
    lostCount: () => lost,
    close: async () => void redis.disconnect(),
  };
}

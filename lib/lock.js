'use strict';
// The v1 `Lock` API on the native engine, plus v2's leases. This layer validates, converts and
// wraps; the engine does the work (tokens, SET NX PX, fences, scripts, waiting, auto-extension,
// deadlines).

const { performance } = require('node:perf_hooks');
const { NativeLocker } = require('./native');
const { BY_CODE, fromNative, LockAcquireError, LockLostError } = require('./errors');
const { resolveConnection } = require('./connection');
const { Lease } = require('./lease');
const validate = require('./validate');

const DEFAULT_TTL_MS = 10000;
const DEFAULT_PREFIX = 'lock:';
const DEFAULT_RETRY_DELAY_MS = 200;

const asyncDispose = Symbol.asyncDispose ?? Symbol.for('nodejs.asyncDispose');
const onLost = Symbol('onLost');
const onExtended = Symbol('onExtended');

/**
 * Lost-lease notifications come from the engine with the Lock's id, not with the Lock itself:
 * the native side holds its callback strongly, and a callback that held the Lock would keep
 * every Lock alive forever.
 * @type {Map<number, WeakRef<Lock>>}
 */
const locksById = new Map();
const forgetLock = new FinalizationRegistry((/** @type {number} */ id) => locksById.delete(id));
let nextLockId = 1;

/**
 * @typedef {object} AcquireSettings
 * @property {number} ttl
 * @property {boolean} autoExtend
 * @property {import('./native/native').WaitSettings | null} wait null: v1's single attempt
 * @property {AbortSignal | undefined} signal
 * @property {number | undefined} maxHold ms
 */

class Lock {
  /** @type {import('./native/native').NativeLocker} */
  #native;
  /** ioredis keyPrefix + Lock prefix: v1's keys went through ioredis, which prepended its own. */
  #keyPrefix;
  #ttl;
  /** @type {Function | undefined} */
  #onLockLost;
  /** Leases handed out by acquireLease/using, by token, until released or lost. @type {Map<string, import('./lease').LeaseState>} */
  #leases = new Map();
  #driftFactor;
  #nextCancelId = 1;
  #closed = false;

  /**
   * @param {unknown} redis an ioredis instance, a redis:// or rediss:// URL, or an options object
   * @param {unknown} [options]
   */
  constructor(redis, options) {
    const opts = validate.optionsBag('options', options);
    this.#ttl = validate.milliseconds('ttl', opts.ttl, DEFAULT_TTL_MS);
    const prefix = validate.text('prefix', opts.prefix, DEFAULT_PREFIX);
    this.#onLockLost = validate.optionalCallback('onLockLost', opts.onLockLost);
    const fencing = validate.flag('fencing', opts.fencing, true);
    const driftFactor = validate.fraction('driftFactor', opts.driftFactor, 0.01);
    this.#driftFactor = driftFactor;
    const { topology, keyPrefix } = resolveConnection(redis, opts);
    this.#keyPrefix = keyPrefix + prefix;
    const id = nextLockId++;
    try {
      this.#native = new NativeLocker(
        topology,
        { fencing, driftFactor, keyPrefix: this.#keyPrefix, clockOriginMs: performance.now() },
        BY_CODE,
        (lost) => dispatchLost(id, ...lost),
        (extended) => dispatchExtended(id, extended),
      );
    } catch (err) {
      throw fromNative(err);
    }
    locksById.set(id, new WeakRef(this));
    forgetLock.register(this, id);
  }

  // The hot paths below are plain methods that hand back the engine's own promise: no async
  // wrapper, no extra promise per call. Bad arguments still reject (as v1's async methods did).
  // The engine settles failures as instances of the error classes (see NativeLocker's BY_CODE).

  /**
   * @param {unknown} resource
   * @param {unknown} [opts]
   * @returns {Promise<string | null>}
   */
  acquire(resource, opts) {
    try {
      const key = this.#keyPrefix + validate.resourceName(resource);
      const o = this.#acquireSettings(opts);
      if (o.signal) {
        return this.#withSignal(key, o.signal, (cancelId) => this.#native.acquire(key, o.ttl, o.autoExtend, o.wait, cancelId, o.maxHold));
      }
      return this.#native.acquire(key, o.ttl, o.autoExtend, o.wait, 0, o.maxHold);
    } catch (err) {
      return Promise.reject(fromNative(err));
    }
  }

  /**
   * v2: acquire, and get the lock as a Lease (token, fence, expiresAt, signal, extend, release).
   * @param {unknown} resource
   * @param {unknown} [opts]
   * @returns {Promise<Lease | null>}
   */
  async acquireLease(resource, opts) {
    const name = validate.resourceName(resource);
    const key = this.#keyPrefix + name;
    const o = this.#acquireSettings(opts);
    const grant = await this.#withSignal(key, o.signal, (cancelId) =>
      this.#native.acquireLease(key, o.ttl, o.autoExtend, o.wait, cancelId, o.maxHold),
    );
    if (grant === null) return null;
    /** @type {import('./lease').LeaseState} */
    const state = { resource: name, controller: new AbortController(), deadline: grant.deadline, lastSentAt: -Infinity, released: false };
    this.#leases.set(grant.token, state);
    const expiresAt = Date.now() + Math.floor(grant.validForMs);
    return new Lease(this.#leaseOwner, state, grant.token, grant.fence ?? null, expiresAt);
  }

  /**
   * @param {unknown} resource
   * @param {unknown} token
   * @returns {Promise<boolean>}
   */
  release(resource, token) {
    try {
      const key = this.#keyPrefix + validate.resourceName(resource);
      const owner = validate.ownerToken(token);
      if (this.#leases.size > 0) {
        const lease = this.#leases.get(owner);
        if (lease) lease.released = true;
        this.#leases.delete(owner);
      }
      return this.#native.release(key, owner);
    } catch (err) {
      return Promise.reject(fromNative(err));
    }
  }

  /**
   * @param {unknown} resource
   * @param {unknown} token
   * @param {unknown} [ttl] defaults to the Lock's ttl (not the one given to acquire), as in v1
   * @returns {Promise<boolean>}
   */
  extend(resource, token, ttl) {
    try {
      const key = this.#keyPrefix + validate.resourceName(resource);
      const owner = validate.ownerToken(token);
      const ms = validate.milliseconds('ttl', ttl, this.#ttl);
      const lease = this.#leases.size > 0 ? this.#leases.get(owner) : undefined;
      if (!lease) return this.#native.extend(key, owner, ms);
      // A lease's deadline counts from the send time, as the engine's does.
      const sentAt = performance.now();
      return this.#native.extend(key, owner, ms).then((extended) => {
        if (extended && sentAt >= lease.lastSentAt) {
          // PEXPIRE set the TTL: the deadline moves to this extend's, earlier too.
          lease.lastSentAt = sentAt;
          lease.deadline = sentAt + ms - Math.min(ms, ms * this.#driftFactor + 2);
        }
        return extended;
      });
    } catch (err) {
      return Promise.reject(fromNative(err));
    }
  }

  /**
   * @param {unknown} resource
   * @returns {Promise<boolean>}
   */
  isLocked(resource) {
    try {
      return this.#native.isLocked(this.#keyPrefix + validate.resourceName(resource));
    } catch (err) {
      return Promise.reject(fromNative(err));
    }
  }

  /**
   * Acquire, run `fn(signal, lease)`, release (also when `fn` throws).
   * @template T
   * @param {unknown} resource
   * @param {(signal: AbortSignal, lease: Lease) => T | PromiseLike<T>} fn
   * @param {unknown} [opts]
   * @returns {Promise<T>}
   */
  async using(resource, fn, opts) {
    const name = validate.resourceName(resource);
    validate.callback('fn', fn);
    const lease = await this.acquireLease(name, opts);
    if (lease === null) throw new LockAcquireError(name);
    let result;
    try {
      result = await fn(lease.signal, lease);
    } catch (err) {
      // fn's error is the one the caller needs; a failed release leaves the lock to its ttl.
      await lease.release().catch(() => {});
      throw err;
    }
    await lease.release();
    return result;
  }

  /**
   * Stops auto-extension, pending waits and lease tracking, and closes the engine's
   * connections. Held leases' signals abort (kind 'closed'); their locks expire at their ttl.
   * Later calls reject with `LockClosedError`. Idempotent.
   * @returns {Promise<void>}
   */
  async close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#native.close();
    for (const [token, lease] of this.#leases) {
      lease.controller.abort(new LockLostError(lease.resource, token, 'closed', 'the Lock was closed'));
    }
    this.#leases.clear();
  }

  /** @returns {Promise<void>} */
  [asyncDispose]() {
    return this.close();
  }

  /**
   * Called (through dispatchLost) when the engine gives a tracked lease up.
   * @param {string} key @param {string} token @param {string} kind @param {string} detail
   * @param {boolean} autoExtended
   */
  [onLost](key, token, kind, detail, autoExtended) {
    const lease = this.#leases.get(token);
    this.#leases.delete(token);
    const resource = lease ? lease.resource : key.slice(this.#keyPrefix.length);
    const error = new LockLostError(resource, token, /** @type {LockLostError['kind']} */ (kind), detail);
    if (lease) lease.controller.abort(error);
    if (autoExtended && this.#onLockLost) callSafely(this.#onLockLost, { resource, token, reason: error });
  }

  /**
   * Called (through dispatchExtended) when auto-extension moved the deadlines of leases.
   * @param {Array<[string, number, number]>} extended [token, send time, deadline], on
   *   performance.now()'s clock
   */
  [onExtended](extended) {
    for (const [token, sentAt, deadline] of extended) {
      const lease = this.#leases.get(token);
      if (lease && sentAt >= lease.lastSentAt) {
        lease.lastSentAt = sentAt;
        lease.deadline = deadline;
      }
    }
  }

  /** What a Lease may do with its Lock. */
  #leaseOwner = {
    extend: (/** @type {string} */ resource, /** @type {string} */ token, /** @type {number | undefined} */ ttl) =>
      this.extend(resource, token, ttl),
    release: (/** @type {string} */ resource, /** @type {string} */ token) => this.release(resource, token),
    timeLeftMs: (/** @type {string} */ token) => (this.#leases.has(token) ? this.#native.timeLeftMs(token) : null),
  };

  /**
   * @param {unknown} opts
   * @returns {AcquireSettings}
   */
  #acquireSettings(opts) {
    const o = validate.optionsBag('opts', opts);
    const ttl = validate.milliseconds('ttl', o.ttl, this.#ttl);
    const autoExtend = validate.flag('autoExtend', o.autoExtend, false);
    const waitTimeout = o.waitTimeout == null ? undefined : validate.delay('waitTimeout', o.waitTimeout, 0);
    // A wait timeout without a retry count means: retry until the timeout.
    const retryCount = o.retryCount == null && waitTimeout !== undefined ? Infinity : validate.retryCount(o.retryCount);
    const retryDelay = validate.delay('retryDelay', o.retryDelay, DEFAULT_RETRY_DELAY_MS);
    const retryJitter = validate.delay('retryJitter', o.retryJitter, 0);
    const replicas = replicaAck(o.replicas);
    const signal = validate.abortSignal('signal', o.signal);
    const maxHold = o.maxHoldTime == null ? undefined : validate.milliseconds('maxHoldTime', o.maxHoldTime, 0);
    const single = retryCount === 0 && waitTimeout === undefined && replicas === undefined;
    return {
      ttl,
      autoExtend,
      wait: single
        ? null
        : {
            retryCount,
            retryDelayMs: retryDelay,
            retryJitterMs: retryJitter,
            waitTimeoutMs: waitTimeout,
            replicas: replicas?.count,
            replicasTimeoutMs: replicas?.timeout,
          },
      signal,
      maxHold,
    };
  }

  /**
   * Runs a native acquire, wired to `signal`: rejects with `signal.reason` once it aborts, and
   * releases a lock that was granted just as the signal aborted.
   * @template {string | { token: string } | null} R
   * @param {string} key
   * @param {AbortSignal | undefined} signal
   * @param {(cancelId: number) => Promise<R>} start
   * @returns {Promise<R>}
   */
  async #withSignal(key, signal, start) {
    if (!signal) return start(0);
    if (signal.aborted) throw signal.reason;
    const cancelId = this.#nextCancelId++;
    const onAbort = () => this.#native.cancel(cancelId);
    signal.addEventListener('abort', onAbort, { once: true });
    let granted;
    try {
      granted = await start(cancelId);
    } catch (err) {
      if (signal.aborted) throw signal.reason;
      throw err;
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
    if (granted !== null && signal.aborted) {
      const token = typeof granted === 'string' ? granted : granted.token;
      await this.#native.release(key, token).catch(() => {});
      throw signal.reason;
    }
    return granted;
  }
}

/**
 * `replicas: { count, timeout }`: how many replicas must acknowledge the lock, within how long.
 * @param {unknown} value
 * @returns {{ count: number, timeout: number } | undefined}
 */
function replicaAck(value) {
  if (value == null) return undefined;
  const o = validate.optionsBag('replicas', value);
  const count = validate.retryCount(o.count, 'replicas.count');
  if (count === Infinity || count < 1) throw validate.rangeError('replicas.count', 'a positive integer', o.count);
  return { count, timeout: validate.milliseconds('replicas.timeout', o.timeout, 1000) };
}

/** @param {number} lockId @param {Array<[string, number, number]>} extended */
function dispatchExtended(lockId, extended) {
  try {
    locksById.get(lockId)?.deref()?.[onExtended](extended);
  } catch (err) {
    warn('recording an extended lease failed', err);
  }
}

/**
 * @param {number} lockId @param {string} key @param {string} token @param {string} kind
 * @param {string} detail @param {boolean} autoExtended
 */
function dispatchLost(lockId, key, token, kind, detail, autoExtended) {
  try {
    locksById.get(lockId)?.deref()?.[onLost](key, token, kind, detail, autoExtended);
  } catch (err) {
    // Nothing in this path should throw; if it does, it must not escape into the event loop.
    warn('reporting a lost lock failed', err);
  }
}

/** Calls the user's onLockLost so that nothing it does becomes an unhandled rejection. @param {Function} callback @param {object} info */
function callSafely(callback, info) {
  try {
    const result = callback(info);
    if (result && typeof result.then === 'function') {
      result.then(undefined, (/** @type {unknown} */ err) => warn('onLockLost rejected', err));
    }
  } catch (err) {
    warn('onLockLost threw', err);
  }
}

/** @param {string} what @param {unknown} err */
function warn(what, err) {
  process.emitWarning(`simple-distributed-lock: ${what}: ${err instanceof Error ? err.message : String(err)}`, {
    code: 'SDL_LOCK_LOST_CALLBACK',
  });
}

module.exports = { Lock };

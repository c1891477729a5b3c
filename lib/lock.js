'use strict';
// The v1 `Lock` API on the native engine, plus v2's leases. This layer validates, converts and
// wraps; the engine does the work (tokens, SET NX PX, fences, scripts, waiting, auto-extension,
// deadlines).

const { performance } = require('node:perf_hooks');
const { NativeLocker } = require('./native');
const { BY_CODE, fromNative, LockAcquireError, LockLostError, LockUnsupportedError } = require('./errors');
const { resolveConnection } = require('./connection');
const { Lease } = require('./lease');
const { channels, trace, traced, debug, debugEnabled } = require('./observe');
const validate = require('./validate');

const DEFAULT_TTL_MS = 10000;
const DEFAULT_PREFIX = 'lock:';
const DEFAULT_RETRY_DELAY_MS = 200;

const asyncDispose = Symbol.asyncDispose ?? Symbol.for('nodejs.asyncDispose');
const onLost = Symbol('onLost');
const onExtended = Symbol('onExtended');
const onNotice = Symbol('onNotice');
/** `Semaphore#count` reaches the engine through this (not part of the public API). */
const countPermits = Symbol('countPermits');
/** `ReadWriteLock`'s acquires of one side reach the engine through these. */
const acquireSide = Symbol('acquireSide');
const usingSide = Symbol('usingSide');
/**
 * What makes a Lock a Semaphore or a ReadWriteLock: objects made by `semaphoreKind` or
 * `readWriteKind`, known by identity only.
 * @typedef {{ permits?: number, readWrite?: true }} Kind
 */
const kinds = new WeakSet();
const DEFAULT_SEMAPHORE_PREFIX = 'semaphore:';
const DEFAULT_READ_WRITE_PREFIX = 'rwlock:';

/**
 * For `Semaphore`'s constructor: the engine keeps `permits` permits per resource.
 * @param {number} permits
 * @returns {Kind}
 */
function semaphoreKind(permits) {
  const kind = { permits };
  kinds.add(kind);
  return kind;
}

/**
 * For `ReadWriteLock`'s constructor: many readers or one writer per resource.
 * @returns {Kind}
 */
function readWriteKind() {
  /** @type {Kind} */
  const kind = { readWrite: true };
  kinds.add(kind);
  return kind;
}

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
 * What the engine says of an acquire that reports itself.
 * @typedef {{ token: string, fence: number | null, validForMs: number, deadline: number, attempts: number } | { token: null, attempts: number, fence?: undefined }} Detailed
 */

/**
 * @typedef {object} AcquireSettings
 * @property {number} ttl
 * @property {boolean} autoExtend
 * @property {import('./native/native').WaitSettings | null} wait null: v1's single attempt
 * @property {AbortSignal | undefined} signal
 * @property {number | undefined} maxHold ms
 * @property {boolean} write a ReadWriteLock's write side (its plain acquires take that one)
 * @property {string[] | undefined} also a lock over several resources: the keys besides the first
 */

/**
 * A lock over several resources, resolved: the name reported (theirs joined by ", "), the
 * names sorted, their keys, and the first key and the others apart (as the engine takes them).
 * @typedef {{ name: string, names: string[], keys: string[], key: string, also: string[] }} Many
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
  /** The Lock's own prefix (without ioredis's keyPrefix), for the tracing contexts. */
  #prefix;
  /** The engine's target (`host:port`, never credentials), for contexts and log lines. */
  #server;
  /** Tracked leases lost, by kind (the rest of `metrics()` is counted where calls settle). */
  #lost = { 'not-owner': 0, unreachable: 0, expired: 0, 'max-hold-time': 0, closed: 0 };
  /** Auto-extensions that failed (each lease in an engine `extend-failed` notice). */
  #autoExtendFailed = 0;
  /** Redlock: whether the engine reports every acquire's votes (someone listens on `:quorum`). */
  #votesWanted = false;
  #redlock = false;
  /** A ReadWriteLock: acquires say which side they take (plain ones the write side). */
  #readWrite = false;
  /** 'Semaphore' or 'ReadWriteLock' for those, else null (a Lock). @type {string | null} */
  #kindName = null;

  /**
   * @param {unknown} redis an ioredis instance, a redis:// or rediss:// URL, or an options object
   * @param {unknown} [options]
   * @param {Kind} [kind] from `semaphoreKind` or `readWriteKind` (the subclasses' constructors) only
   */
  constructor(redis, options, kind = undefined) {
    const opts = validate.optionsBag('options', options);
    const known = kind !== undefined && kinds.has(kind) ? kind : null;
    const permits = known?.permits;
    const readWrite = known?.readWrite === true;
    this.#readWrite = readWrite;
    this.#kindName = permits !== undefined ? 'Semaphore' : readWrite ? 'ReadWriteLock' : null;
    this.#ttl = validate.milliseconds('ttl', opts.ttl, DEFAULT_TTL_MS);
    const defaultPrefix = permits !== undefined ? DEFAULT_SEMAPHORE_PREFIX : readWrite ? DEFAULT_READ_WRITE_PREFIX : DEFAULT_PREFIX;
    const prefix = validate.text('prefix', opts.prefix, defaultPrefix);
    this.#prefix = prefix;
    this.#onLockLost = validate.optionalCallback('onLockLost', opts.onLockLost);
    // A semaphore's permits and a read-write lock's sides carry no fence (lease.fence is null).
    const fencing = known ? false : validate.flag('fencing', opts.fencing, true);
    const driftFactor = validate.fraction('driftFactor', opts.driftFactor, 0.01);
    this.#driftFactor = driftFactor;
    const { topology, keyPrefix } = resolveConnection(redis, opts);
    this.#keyPrefix = keyPrefix + prefix;
    const id = nextLockId++;
    try {
      this.#native = new NativeLocker(
        topology,
        { fencing, driftFactor, keyPrefix: this.#keyPrefix, clockOriginMs: performance.now(), permits, readWrite },
        BY_CODE,
        (lost) => dispatchLost(id, ...lost),
        (extended) => dispatchExtended(id, extended),
        (notice) => dispatchNotice(id, notice),
      );
    } catch (err) {
      throw fromNative(err);
    }
    this.#server = this.#native.target;
    this.#redlock = topology.kind === 'redlock';
    locksById.set(id, new WeakRef(this));
    forgetLock.register(this, id);
    if (debugEnabled && this.#native.transport !== 'event-loop') {
      debug('%s: the event-loop transport is not available here; calls go through the runtime', this.#server);
    }
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
      const many = Array.isArray(resource) ? this.#many(resource) : null;
      const name = many ? many.name : validate.resourceName(resource);
      const key = many ? many.key : this.#keyPrefix + name;
      const o = this.#acquireSettings(opts);
      if (many) o.also = many.also;
      if (this.#redlock) this.#askForVotes();
      if (traced(channels.acquire)) {
        return this.#take(name, key, o, performance.now(), false).then((grant) => grant.token);
      }
      if (o.signal) {
        return this.#withSignal(key, o, (cancelId) => this.#native.acquire(key, o.ttl, o.autoExtend, o.wait, cancelId, o.maxHold, o.write, o.also));
      }
      return this.#native.acquire(key, o.ttl, o.autoExtend, o.wait, 0, o.maxHold, o.write, o.also);
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
  acquireLease(resource, opts) {
    return this[acquireSide](resource, opts, this.#readWrite);
  }

  /**
   * `acquireLease` of one side of a ReadWriteLock (`write`; other Locks have one side).
   * @param {unknown} resource @param {unknown} opts @param {boolean} write
   * @returns {Promise<Lease | null>}
   */
  async [acquireSide](resource, opts, write) {
    const start = performance.now();
    const many = Array.isArray(resource) ? this.#many(resource) : null;
    const name = many ? many.name : validate.resourceName(resource);
    const o = this.#acquireSettings(opts);
    o.write = write;
    if (many) o.also = many.also;
    if (this.#redlock) this.#askForVotes();
    const grant = await this.#take(name, many ? many.key : this.#keyPrefix + name, o, start, true);
    return grant.token === null ? null : this.#leaseOf(name, grant, many ? many.names : null);
  }

  /**
   * A lock over several resources: `resource` is an array of names.
   * @param {unknown[]} resource
   * @returns {Many}
   */
  #many(resource) {
    if (this.#kindName !== null) {
      throw new LockUnsupportedError(`locks over several resources are for a Lock, not a ${this.#kindName}`);
    }
    const names = validate.resourceNames(resource);
    const keys = names.map((n) => this.#keyPrefix + n);
    return { name: names.join(', '), names, keys, key: keys[0], also: keys.slice(1) };
  }

  /**
   * @param {string} name
   * @param {{ token: string, fence: number | null, validForMs: number, deadline: number }} grant
   * @param {string[] | null} [names] a lock over several resources: theirs
   */
  #leaseOf(name, grant, names = null) {
    /** @type {import('./lease').LeaseState} */
    const state = { resource: name, resources: names ?? [name], controller: new AbortController(), deadline: grant.deadline, lastSentAt: -Infinity, released: false };
    this.#leases.set(grant.token, state);
    const expiresAt = Date.now() + Math.floor(grant.validForMs);
    return new Lease(this.#leaseOwner, state, grant.token, grant.fence ?? null, expiresAt);
  }

  /**
   * An acquire that reports what it did (attempts, fence): for acquireLease (`watch`), using,
   * and acquire while its tracing channel has subscribers. Counted and traced here.
   * @param {string} name @param {string} key @param {AcquireSettings} o @param {number} start
   * @param {boolean} watch
   * @returns {Promise<Detailed>}
   */
  #take(name, key, o, start, watch) {
    const run = () =>
      this.#withSignal(key, o, (cancelId) =>
        watch
          ? this.#native.acquireLease(key, o.ttl, o.autoExtend, o.wait, cancelId, o.maxHold, o.write, o.also)
          : this.#native.acquireDetailed(key, o.ttl, o.autoExtend, o.wait, cancelId, o.maxHold, o.write, o.also),
      );
    if (!traced(channels.acquire)) return run();
    const ctx = this.#context(name, o);
    if (this.#readWrite) ctx.side = o.write ? 'write' : 'read';
    return trace(channels.acquire, ctx, run, (c, grant) => {
      c.outcome = grant.token === null ? 'refused' : 'granted';
      c.attempts = grant.attempts;
      c.waitedMs = performance.now() - start;
      c.fence = grant.token === null ? null : grant.fence;
      c.result = { granted: grant.token !== null, fence: c.fence };
    });
  }

  /**
   * What every traced operation's context starts with.
   * @param {string} resource @param {AcquireSettings} [o]
   * @returns {Record<string, unknown>}
   */
  #context(resource, o) {
    return o
      ? { resource, prefix: this.#prefix, server: this.#server, ttl: o.ttl, autoExtend: o.autoExtend }
      : { resource, prefix: this.#prefix, server: this.#server };
  }

  /** Redlock: every acquire's votes are reported while someone listens on `:quorum`. */
  #askForVotes() {
    const wanted = channels.quorum.hasSubscribers;
    if (wanted !== this.#votesWanted) {
      this.#votesWanted = wanted;
      this.#native.setVotesWanted(wanted);
    }
  }

  /**
   * @param {unknown} resource
   * @param {unknown} token
   * @returns {Promise<boolean>}
   */
  release(resource, token) {
    try {
      const many = Array.isArray(resource) ? this.#many(resource) : null;
      const name = many ? many.name : validate.resourceName(resource);
      const key = many ? many.key : this.#keyPrefix + name;
      const owner = validate.ownerToken(token);
      if (this.#leases.size > 0) {
        const lease = this.#leases.get(owner);
        if (lease) lease.released = true;
        this.#leases.delete(owner);
      }
      const run = many ? () => this.#native.releaseAll(many.keys, owner) : () => this.#native.release(key, owner);
      if (!traced(channels.release)) return run();
      return trace(channels.release, this.#context(name), run, (c, released) => {
        c.outcome = released ? 'released' : 'not-owner';
        c.result = released;
      });
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
      const many = Array.isArray(resource) ? this.#many(resource) : null;
      const name = many ? many.name : validate.resourceName(resource);
      const key = many ? many.key : this.#keyPrefix + name;
      const owner = validate.ownerToken(token);
      const ms = validate.milliseconds('ttl', ttl, this.#ttl);
      const lease = this.#leases.size > 0 ? this.#leases.get(owner) : undefined;
      const send = many ? () => this.#native.extendAll(many.keys, owner, ms) : () => this.#native.extend(key, owner, ms);
      if (!lease && !traced(channels.extend)) return send();
      const run = () => {
        if (!lease) return send();
        // A lease's deadline counts from the send time, as the engine's does.
        const sentAt = performance.now();
        return send().then((extended) => {
          if (extended && sentAt >= lease.lastSentAt) {
            // PEXPIRE set the TTL: the deadline moves to this extend's, earlier too.
            lease.lastSentAt = sentAt;
            lease.deadline = sentAt + ms - Math.min(ms, ms * this.#driftFactor + 2);
          }
          return extended;
        });
      };
      if (!traced(channels.extend)) return run();
      return trace(channels.extend, { ...this.#context(name), ttl: ms }, run, (c, extended) => {
        c.outcome = extended ? 'extended' : 'not-owner';
        c.result = extended;
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
      const name = validate.resourceName(resource);
      const key = this.#keyPrefix + name;
      if (!traced(channels.isLocked)) return this.#native.isLocked(key);
      return trace(channels.isLocked, this.#context(name), () => this.#native.isLocked(key), (c, held) => {
        c.outcome = held ? 'held' : 'free';
        c.result = held;
      });
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
  using(resource, fn, opts) {
    return this[usingSide](resource, fn, opts, this.#readWrite);
  }

  /**
   * `using` on one side of a ReadWriteLock (`write`; other Locks have one side).
   * @template T
   * @param {unknown} resource
   * @param {(signal: AbortSignal, lease: Lease) => T | PromiseLike<T>} fn
   * @param {unknown} opts @param {boolean} write
   * @returns {Promise<T>}
   */
  async [usingSide](resource, fn, opts, write) {
    const start = performance.now();
    const many = Array.isArray(resource) ? this.#many(resource) : null;
    const name = many ? many.name : validate.resourceName(resource);
    validate.callback('fn', fn);
    const o = this.#acquireSettings(opts);
    o.write = write;
    if (many) o.also = many.also;
    if (this.#redlock) this.#askForVotes();
    if (!traced(channels.using)) return this.#using(name, many, fn, o, start, null);
    /** @type {Record<string, unknown>} */
    const ctx = this.#context(name, o);
    if (this.#readWrite) ctx.side = write ? 'write' : 'read';
    return trace(
      channels.using,
      ctx,
      () => this.#using(name, many, fn, o, start, ctx),
      (c) => {
        c.outcome = 'completed';
        c.result = undefined;
      },
    );
  }

  /**
   * @template T
   * @param {string} name @param {Many | null} many a lock over several resources
   * @param {(signal: AbortSignal, lease: Lease) => T | PromiseLike<T>} fn
   * @param {AcquireSettings} o @param {number} start @param {Record<string, unknown> | null} ctx
   * @returns {Promise<T>}
   */
  async #using(name, many, fn, o, start, ctx) {
    const grant = await this.#take(name, many ? many.key : this.#keyPrefix + name, o, start, true);
    const waitedMs = performance.now() - start;
    if (ctx) {
      ctx.attempts = grant.attempts;
      ctx.waitedMs = waitedMs;
      ctx.fence = grant.token === null ? null : grant.fence;
    }
    if (grant.token === null) {
      if (ctx) ctx.outcome = 'refused';
      throw new LockAcquireError(name, { attempts: grant.attempts, waitedMs });
    }
    const lease = this.#leaseOf(name, grant, many ? many.names : null);
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
   * For `Semaphore#count`: permits held now on `resource`.
   * @param {unknown} resource
   * @returns {Promise<number>}
   */
  [countPermits](resource) {
    try {
      return this.#native.count(this.#keyPrefix + validate.resourceName(resource));
    } catch (err) {
      return Promise.reject(fromNative(err));
    }
  }

  /**
   * v2: what this Lock did, as counters and summaries (see the README's Observability section).
   * Cheap: counting is always on.
   * @returns {import('..').LockMetrics}
   */
  metrics() {
    const m = this.#native.metrics();
    return {
      acquired: m.acquired,
      refused: m.refused,
      errors: m.errors,
      released: m.released,
      releasedNotOwner: m.releasedNotOwner,
      extended: m.extended,
      extendFailed: m.extendFailed + this.#autoExtendFailed,
      lost: { ...this.#lost },
      held: m.held,
      waiting: m.waiting,
      waitTime: m.waitTime,
      holdTime: m.holdTime,
      windowMs: m.windowMs,
    };
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
      this.#lost.closed++;
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
    // The holder first: nothing below may keep its signal from aborting.
    if (lease) lease.controller.abort(error);
    if (autoExtended && this.#onLockLost) callSafely(this.#onLockLost, { resource, token, reason: error });
    if (kind in this.#lost) this.#lost[/** @type {'not-owner' | 'unreachable' | 'expired' | 'max-hold-time'} */ (kind)]++;
    try {
      this.#native.leaseLost(token);
    } catch (err) {
      warn('counting a lost lock failed', err);
    }
    debug('lock on "%s" (%s) lost, %s: %s', resource, this.#server, kind, detail);
    if (channels.lost.hasSubscribers) channels.lost.publish({ resource, prefix: this.#prefix, server: this.#server, kind, message: error.message });
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

  /**
   * Called (through dispatchNotice) with what the engine tells: to the channels, the debug log
   * and the counters.
   * @param {import('./native/native').EngineNotice} notice
   */
  [onNotice](notice) {
    const via = notice.background ? ' (auto-extension connection)' : '';
    switch (notice.kind) {
      case 'quorum': {
        const votes = notice.votes ?? [];
        // A failed master, or silence that left the acquire undecided: a minority (or worse) down.
        if (votes.some((v) => v.vote === 'failed' || (v.vote === 'no-answer' && !notice.granted))) debug('%s', notice.message);
        if (channels.quorum.hasSubscribers) {
          const key = notice.keys?.[0] ?? '';
          channels.quorum.publish({
            resource: this.#resourceOf(key),
            prefix: this.#prefix,
            granted: notice.granted === true,
            votes: votes.map((v) => (v.error == null ? { server: v.server, vote: v.vote } : { server: v.server, vote: v.vote, error: v.error })),
          });
        }
        return;
      }
      case 'extend-failed': {
        const keys = notice.keys ?? [];
        this.#autoExtendFailed += keys.length;
        debug('%s', notice.message);
        if (channels.extendFailed.hasSubscribers) {
          for (const key of keys) {
            channels.extendFailed.publish({
              resource: this.#resourceOf(key),
              prefix: this.#prefix,
              server: this.#server,
              error: notice.error ?? '',
              retryInMs: notice.retryInMs ?? 0,
            });
          }
        }
        return;
      }
      default: {
        debug('%s%s', notice.message, via);
        if (channels.connection.hasSubscribers) {
          /** @type {Record<string, unknown>} */
          const event = { event: notice.kind, server: notice.server ?? this.#server, background: notice.background, message: notice.message };
          if (notice.error != null) event.error = notice.error;
          if (notice.retryInMs != null) event.retryInMs = notice.retryInMs;
          if (notice.to != null) Object.assign(event, { to: notice.to, slot: notice.slot, ask: notice.ask });
          channels.connection.publish(event);
        }
      }
    }
  }

  /** @param {string} key a lock key of this Lock */
  #resourceOf(key) {
    return key.startsWith(this.#keyPrefix) ? key.slice(this.#keyPrefix.length) : key;
  }

  /** What a Lease may do with its Lock. */
  #leaseOwner = {
    extend: (/** @type {string | string[]} */ resource, /** @type {string} */ token, /** @type {number | undefined} */ ttl) =>
      this.extend(resource, token, ttl),
    release: (/** @type {string | string[]} */ resource, /** @type {string} */ token) => this.release(resource, token),
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
      write: this.#readWrite,
      also: undefined,
    };
  }

  /**
   * Runs a native acquire, wired to `signal`: rejects with `signal.reason` once it aborts, and
   * releases a lock that was granted just as the signal aborted.
   * @template {string | { token: string | null } | null} R
   * @param {string} key
   * @param {AcquireSettings} o its signal, and a lock over several resources' other keys
   * @param {(cancelId: number) => Promise<R>} start
   * @returns {Promise<R>}
   */
  async #withSignal(key, o, start) {
    const signal = o.signal;
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
    /** @type {string | null} */
    const token = granted === null ? null : typeof granted === 'string' ? granted : granted.token;
    if (token !== null && signal.aborted) {
      const released = o.also ? this.#native.releaseAll([key, ...o.also], token) : this.#native.release(key, token);
      await released.catch(() => {});
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

/** @param {number} lockId @param {import('./native/native').EngineNotice} notice */
function dispatchNotice(lockId, notice) {
  try {
    locksById.get(lockId)?.deref()?.[onNotice](notice);
  } catch (err) {
    warn('reporting an engine notice failed', err);
  }
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
  let text;
  try {
    text = err instanceof Error ? err.message : String(err);
  } catch {
    text = 'an unprintable value';
  }
  process.emitWarning(`simple-distributed-lock: ${what}: ${text}`, { code: 'SDL_LOCK_LOST_CALLBACK' });
}

module.exports = { Lock, semaphoreKind, readWriteKind, countPermits, acquireSide, usingSide };

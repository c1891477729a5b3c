'use strict';
// The v1 `Lock` API on the native engine. This layer validates, converts and wraps; the engine
// does the work (tokens, SET NX PX, scripts, retries, auto-extension).

const { NativeLocker } = require('./native');
const { fromNative, LockAcquireError } = require('./errors');
const { resolveConnection } = require('./connection');
const validate = require('./validate');

const DEFAULT_TTL_MS = 10000;
const DEFAULT_PREFIX = 'lock:';
const DEFAULT_RETRY_DELAY_MS = 200;

const asyncDispose = Symbol.asyncDispose ?? Symbol.for('nodejs.asyncDispose');

class Lock {
  /** @type {import('./native/native').NativeLocker} */
  #native;
  /** ioredis keyPrefix + Lock prefix: v1's keys went through ioredis, which prepended its own. */
  #keyPrefix;
  #ttl;

  /**
   * @param {unknown} redis an ioredis instance, a redis:// or rediss:// URL, or an options object
   * @param {unknown} [options]
   */
  constructor(redis, options) {
    const opts = validate.optionsBag('options', options);
    this.#ttl = validate.milliseconds('ttl', opts.ttl, DEFAULT_TTL_MS);
    const prefix = validate.text('prefix', opts.prefix, DEFAULT_PREFIX);
    const { settings, keyPrefix } = resolveConnection(redis, opts);
    this.#keyPrefix = keyPrefix + prefix;
    try {
      this.#native = new NativeLocker(settings);
    } catch (err) {
      throw fromNative(err);
    }
  }

  /**
   * @param {unknown} resource
   * @param {unknown} [opts]
   * @returns {Promise<string | null>}
   */
  async acquire(resource, opts) {
    const key = this.#keyPrefix + validate.resourceName(resource);
    const o = validate.optionsBag('opts', opts);
    const ttl = validate.milliseconds('ttl', o.ttl, this.#ttl);
    const autoExtend = validate.flag('autoExtend', o.autoExtend, false);
    const retryCount = validate.retryCount(o.retryCount);
    const retryDelay = validate.delay('retryDelay', o.retryDelay, DEFAULT_RETRY_DELAY_MS);
    try {
      return await this.#native.acquire(key, ttl, retryCount, retryDelay, autoExtend);
    } catch (err) {
      throw fromNative(err);
    }
  }

  /**
   * @param {unknown} resource
   * @param {unknown} token
   * @returns {Promise<boolean>}
   */
  async release(resource, token) {
    const key = this.#keyPrefix + validate.resourceName(resource);
    const owner = validate.ownerToken(token);
    try {
      return await this.#native.release(key, owner);
    } catch (err) {
      throw fromNative(err);
    }
  }

  /**
   * @param {unknown} resource
   * @param {unknown} token
   * @param {unknown} [ttl] defaults to the Lock's ttl (not the one given to acquire), as in v1
   * @returns {Promise<boolean>}
   */
  async extend(resource, token, ttl) {
    const key = this.#keyPrefix + validate.resourceName(resource);
    const owner = validate.ownerToken(token);
    const ms = validate.milliseconds('ttl', ttl, this.#ttl);
    try {
      return await this.#native.extend(key, owner, ms);
    } catch (err) {
      throw fromNative(err);
    }
  }

  /**
   * @param {unknown} resource
   * @returns {Promise<boolean>}
   */
  async isLocked(resource) {
    const key = this.#keyPrefix + validate.resourceName(resource);
    try {
      return await this.#native.isLocked(key);
    } catch (err) {
      throw fromNative(err);
    }
  }

  /**
   * Acquire, run `fn`, release (also when `fn` throws).
   * @template T
   * @param {unknown} resource
   * @param {() => T | PromiseLike<T>} fn
   * @param {unknown} [opts]
   * @returns {Promise<T>}
   */
  async using(resource, fn, opts) {
    const name = validate.resourceName(resource);
    validate.callback('fn', fn);
    const token = await this.acquire(name, opts);
    if (token === null) throw new LockAcquireError(name);
    let result;
    try {
      result = await fn();
    } catch (err) {
      // fn's error is the one the caller needs; a failed release leaves the lock to its ttl.
      await this.release(name, token).catch(() => {});
      throw err;
    }
    await this.release(name, token);
    return result;
  }

  /**
   * Stops auto-extension and pending retries and closes the engine's connection. Locks still
   * held expire at their ttl. Later calls reject with `LockClosedError`. Idempotent.
   * @returns {Promise<void>}
   */
  async close() {
    this.#native.close();
  }

  /** @returns {Promise<void>} */
  [asyncDispose]() {
    return this.close();
  }
}

module.exports = { Lock };

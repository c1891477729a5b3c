'use strict';
// A counting semaphore with a lease per permit: at most `permits` holders of a resource at once.
// The same engine, waiting, auto-extension, signals and errors as `Lock`; only the Redis side
// differs (src: crates/engine/src/scripts.rs): one sorted set per resource, a member per permit
// with its expiry by the server's clock, so a crashed holder's permit runs out with its ttl.

const { Lock, semaphoreKind, countPermits } = require('./lock');
const validate = require('./validate');

class Semaphore extends Lock {
  /**
   * @param {unknown} redis as for `Lock`
   * @param {unknown} options `{ permits, ttl, prefix, ... }`: `permits` is required, the same for
   *   every instance on a resource
   */
  constructor(redis, options) {
    const opts = validate.optionsBag('options', options);
    const permits = validate.count('permits', opts.permits);
    super(redis, opts, semaphoreKind(permits));
    /** Permits per resource. @type {number} */
    this.permits = permits;
  }

  /**
   * Permits held on `resource` now (expired ones not counted).
   * @param {unknown} resource
   * @returns {Promise<number>}
   */
  count(resource) {
    return this[countPermits](resource);
  }
}

module.exports = { Semaphore };

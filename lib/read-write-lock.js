'use strict';
// A read-write lock: many readers or one writer per resource, each holder with its own lease.
// The same engine, waiting, auto-extension, signals and errors as `Lock`; only the Redis side
// differs (src: crates/engine/src/scripts.rs): the readers' sorted set at the resource's key
// (each reader's expiry by the server's clock), the writer's key, and a mark a waiting writer
// leaves so that new readers queue behind it (no writer starvation).

const { Lock, readWriteKind, countPermits, acquireSide, usingSide } = require('./lock');

class ReadWriteLock extends Lock {
  /**
   * @param {unknown} redis as for `Lock`
   * @param {unknown} [options] the Lock's options; `prefix` defaults to `rwlock:`
   */
  constructor(redis, options) {
    super(redis, options, readWriteKind());
  }

  /**
   * Takes the read side: shared with other readers, not with a writer, and not taken while a
   * writer waits for the readers inside to leave.
   * @param {unknown} resource @param {unknown} [opts] as for `acquireLease`
   * @returns {Promise<import('./lease').Lease | null>}
   */
  acquireRead(resource, opts) {
    return this[acquireSide](resource, opts, false);
  }

  /**
   * Takes the write side: alone, no reader and no other writer. `acquire`, `acquireLease` and
   * `using` take this side too.
   * @param {unknown} resource @param {unknown} [opts] as for `acquireLease`
   * @returns {Promise<import('./lease').Lease | null>}
   */
  acquireWrite(resource, opts) {
    return this[acquireSide](resource, opts, true);
  }

  /**
   * `using` on the read side.
   * @template T
   * @param {unknown} resource
   * @param {(signal: AbortSignal, lease: import('./lease').Lease) => T | PromiseLike<T>} fn
   * @param {unknown} [opts]
   * @returns {Promise<T>}
   */
  usingRead(resource, fn, opts) {
    return this[usingSide](resource, fn, opts, false);
  }

  /**
   * `using` on the write side.
   * @template T
   * @param {unknown} resource
   * @param {(signal: AbortSignal, lease: import('./lease').Lease) => T | PromiseLike<T>} fn
   * @param {unknown} [opts]
   * @returns {Promise<T>}
   */
  usingWrite(resource, fn, opts) {
    return this[usingSide](resource, fn, opts, true);
  }

  /**
   * Holders of `resource` now: 1 while a writer holds it, else the live readers.
   * @param {unknown} resource
   * @returns {Promise<number>}
   */
  count(resource) {
    return this[countPermits](resource);
  }
}

module.exports = { ReadWriteLock };

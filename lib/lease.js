'use strict';
// A held lock as an object: what `acquireLease` returns and what `using` hands to its callback.

const { performance } = require('node:perf_hooks');
const { LockLostError } = require('./errors');

const asyncDispose = Symbol.asyncDispose ?? Symbol.for('nodejs.asyncDispose');

/**
 * @typedef {object} LeaseOwner what a Lease needs from the Lock that granted it
 * @property {(resource: string | string[], token: string, ttl?: number) => Promise<boolean>} extend
 * @property {(resource: string | string[], token: string) => Promise<boolean>} release
 * @property {(token: string) => number | null} timeLeftMs
 */

/**
 * What the Lock and the Lease share about a held lease.
 * @typedef {object} LeaseState
 * @property {string} resource the name given, or for a lock over several, theirs joined by ", "
 * @property {string[]} resources every resource it holds
 * @property {AbortController} controller
 * @property {number} deadline `performance.now()` ms until which the lock is known to be held;
 *   moves with each extend known to have succeeded (the engine tells of auto-extensions)
 * @property {number} lastSentAt `performance.now()` send time of the extend that set `deadline`:
 *   a later extend decides the TTL (shorter too), an earlier one answering late does not
 * @property {boolean} released
 */

class Lease {
  #owner;
  #expiresAt;
  /** @type {LeaseState} */
  #state;

  /**
   * @param {LeaseOwner} owner
   * @param {LeaseState} state
   * @param {string} token
   * @param {number | null} fence
   * @param {number} expiresAt
   */
  constructor(owner, state, token, fence, expiresAt) {
    this.#owner = owner;
    this.#state = state;
    this.#expiresAt = expiresAt;
    /** The resource name given to acquire (a lock over several: their names joined by ", "). */
    this.resource = state.resource;
    /** Every resource it holds, sorted (one for a lock on one resource). */
    this.resources = Object.freeze([...state.resources]);
    /** The owner token (32 hex characters). */
    this.token = token;
    /** The fencing token: strictly increasing per resource across all clients; null if fencing is off. */
    this.fence = fence;
    /** Aborts with a LockLostError when the lock is lost. */
    this.signal = state.controller.signal;
    Object.freeze(this);
  }

  /**
   * Epoch ms (this process's clock) until which the lock is known to be held: the send time of
   * the last successful SET or extend, plus the ttl, minus the safety margin. Moves with
   * extends; stays put once the lease is released or lost.
   * @returns {number}
   */
  get expiresAt() {
    const left = this.#owner.timeLeftMs(this.token);
    if (left !== null) this.#expiresAt = Date.now() + Math.floor(left);
    return this.#expiresAt;
  }

  /**
   * Ms left before the deadline, on the monotonic clock, without a call into the engine: 0 once
   * it passed, the lock is known lost, or it was released.
   * @returns {number}
   */
  get remainingMs() {
    const state = this.#state;
    if (state.released || state.controller.signal.aborted) return 0;
    return Math.max(0, state.deadline - performance.now());
  }

  /** Throws the LockLostError that `signal.reason` holds or will hold once `remainingMs` is 0. */
  throwIfLost() {
    if (this.remainingMs > 0) return;
    const { controller } = this.#state;
    if (controller.signal.aborted) throw controller.signal.reason;
    if (this.#state.released) throw new LockLostError(this.resource, this.token, 'released', 'it was released');
    // The deadline passed before any extend was known to succeed: nobody can trust it any more.
    const error = new LockLostError(this.resource, this.token, 'expired', 'its deadline passed');
    controller.abort(error);
    throw error;
  }

  /** @param {number} [ttl] ms; defaults to the Lock's ttl @returns {Promise<boolean>} */
  extend(ttl) {
    return this.#owner.extend(this.#target(), this.token, ttl);
  }

  /** @returns {Promise<boolean>} */
  release() {
    return this.#owner.release(this.#target(), this.token);
  }

  /** What release and extend name: the resource, or every one of them. */
  #target() {
    return this.resources.length === 1 ? this.resources[0] : [...this.resources];
  }

  /** `await using lease = await lock.acquireLease(...)` releases it at the end of the scope. */
  async [asyncDispose]() {
    await this.release();
  }
}

module.exports = { Lease };

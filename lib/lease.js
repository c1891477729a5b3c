'use strict';
// A held lock as an object: what `acquireLease` returns and what `using` hands to its callback.

const asyncDispose = Symbol.asyncDispose ?? Symbol.for('nodejs.asyncDispose');

/**
 * @typedef {object} LeaseOwner what a Lease needs from the Lock that granted it
 * @property {(resource: string, token: string, ttl?: number) => Promise<boolean>} extend
 * @property {(resource: string, token: string) => Promise<boolean>} release
 * @property {(token: string) => number | null} timeLeftMs
 */

class Lease {
  #owner;
  #expiresAt;

  /**
   * @param {LeaseOwner} owner
   * @param {string} resource
   * @param {string} token
   * @param {number | null} fence
   * @param {number} expiresAt
   * @param {AbortSignal} signal
   */
  constructor(owner, resource, token, fence, expiresAt, signal) {
    this.#owner = owner;
    this.#expiresAt = expiresAt;
    /** The resource name given to acquire. */
    this.resource = resource;
    /** The owner token (32 hex characters). */
    this.token = token;
    /** The fencing token: strictly increasing per resource across all clients; null if fencing is off. */
    this.fence = fence;
    /** Aborts with a LockLostError when the lock is lost. */
    this.signal = signal;
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

  /** @param {number} [ttl] ms; defaults to the Lock's ttl @returns {Promise<boolean>} */
  extend(ttl) {
    return this.#owner.extend(this.resource, this.token, ttl);
  }

  /** @returns {Promise<boolean>} */
  release() {
    return this.#owner.release(this.resource, this.token);
  }

  /** `await using lease = await lock.acquireLease(...)` releases it at the end of the scope. */
  async [asyncDispose]() {
    await this.release();
  }
}

module.exports = { Lease };

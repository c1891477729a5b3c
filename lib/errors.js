'use strict';
// The error classes users catch. Each has a stable `code`; `name` is the class name.

class LockError extends Error {
  /**
   * @param {string} message
   * @param {ErrorOptions} [options]
   */
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
    /** @type {string} */
    this.code = 'ERR_LOCK';
  }
}

/** Redis could not be reached, or the connection broke. */
class LockConnectionError extends LockError {
  /** @param {string} message @param {ErrorOptions} [options] */
  constructor(message, options) {
    super(message, options);
    this.code = 'ERR_LOCK_CONNECTION';
  }
}

/** Redis did not answer in time (a kind of connection error). */
class LockTimeoutError extends LockConnectionError {
  /** @param {string} message @param {ErrorOptions} [options] */
  constructor(message, options) {
    super(message, options);
    this.code = 'ERR_LOCK_TIMEOUT';
  }
}

/** Redis refused the credentials. The message never contains them. */
class LockAuthError extends LockError {
  /** @param {string} message @param {ErrorOptions} [options] */
  constructor(message, options) {
    super(message, options);
    this.code = 'ERR_LOCK_AUTH';
  }
}

/** Redis answered with an error reply (READONLY, OOM, ...). */
class LockRedisError extends LockError {
  /** @param {string} message @param {ErrorOptions} [options] */
  constructor(message, options) {
    super(message, options);
    this.code = 'ERR_LOCK_REDIS';
  }
}

/** The Lock was closed. */
class LockClosedError extends LockError {
  /** @param {string} [message] @param {ErrorOptions} [options] */
  constructor(message = 'The Lock was closed.', options) {
    super(message, options);
    this.code = 'ERR_LOCK_CLOSED';
  }
}

/** The connection settings cannot work (bad TLS material, unusable address). */
class LockConfigError extends LockError {
  /** @param {string} message @param {ErrorOptions} [options] */
  constructor(message, options) {
    super(message, options);
    this.code = 'ERR_LOCK_CONFIG';
  }
}

/** Something the deployment cannot do (e.g. replica acknowledgement on a cluster). */
class LockUnsupportedError extends LockError {
  /** @param {string} message @param {ErrorOptions} [options] */
  constructor(message, options) {
    super(message, options);
    this.code = 'ERR_LOCK_UNSUPPORTED';
  }
}

/** Redlock: too many masters failed for a majority either way. The message names them. */
class LockQuorumError extends LockError {
  /** @param {string} message @param {ErrorOptions} [options] */
  constructor(message, options) {
    super(message, options);
    this.code = 'ERR_LOCK_QUORUM';
  }
}

/** Too few replicas acknowledged the lock in time (`replicas` option); it was released. */
class LockReplicationError extends LockError {
  /** @param {string} message @param {ErrorOptions} [options] */
  constructor(message, options) {
    super(message, options);
    this.code = 'ERR_LOCK_REPLICATION';
  }
}

/**
 * `using()` could not acquire the lock. The message is v1's, word for word; v2 adds how many
 * attempts were sent and how long it waited.
 */
class LockAcquireError extends LockError {
  /** @param {string} resource @param {{ attempts?: number, waitedMs?: number }} [details] */
  constructor(resource, details = {}) {
    super(`Failed to acquire lock on resource "${resource}".`);
    this.code = 'ERR_LOCK_NOT_ACQUIRED';
    /** @type {string} */
    this.resource = resource;
    /** Attempts sent to Redis (0 when the wait ended before this caller's turn came). @type {number} */
    this.attempts = details.attempts ?? 0;
    /** Ms from the call to giving up. @type {number} */
    this.waitedMs = details.waitedMs ?? 0;
  }
}

/**
 * A held lock was lost: `signal.reason` of a lease, and `info.reason` of `onLockLost`.
 * `kind`: 'not-owner' (an extend found another owner or no key), 'unreachable' (no extend
 * succeeded before the deadline), 'expired' (the deadline passed: a lease without autoExtend, or
 * seen by `lease.throwIfLost()` before any extend was known to succeed), 'max-hold-time'
 * (auto-extension stopped after maxHoldTime and the deadline passed), 'released' (from
 * `lease.throwIfLost()` after the lease was released), 'closed' (the Lock was closed while the
 * lease was held).
 */
class LockLostError extends LockError {
  /**
   * @param {string} resource
   * @param {string} token
   * @param {'not-owner' | 'unreachable' | 'expired' | 'max-hold-time' | 'released' | 'closed'} kind
   * @param {string} detail
   */
  constructor(resource, token, kind, detail) {
    super(`The lock on resource "${resource}" was lost: ${detail}.`);
    this.code = 'ERR_LOCK_LOST';
    /** @type {string} */
    this.resource = resource;
    /** @type {string} */
    this.token = token;
    /** @type {'not-owner' | 'unreachable' | 'expired' | 'max-hold-time' | 'released' | 'closed'} */
    this.kind = kind;
  }
}

/** The class for each code the engine reports; the engine builds its errors from this map. */
const BY_CODE = {
  ERR_LOCK: LockError,
  ERR_LOCK_CONNECTION: LockConnectionError,
  ERR_LOCK_TIMEOUT: LockTimeoutError,
  ERR_LOCK_AUTH: LockAuthError,
  ERR_LOCK_REDIS: LockRedisError,
  ERR_LOCK_CLOSED: LockClosedError,
  ERR_LOCK_CONFIG: LockConfigError,
  ERR_LOCK_UNSUPPORTED: LockUnsupportedError,
  ERR_LOCK_QUORUM: LockQuorumError,
  ERR_LOCK_REPLICATION: LockReplicationError,
};

const NATIVE_MESSAGE = /^(ERR_LOCK_[A-Z_]+): ([\s\S]*)$/;

/**
 * Turns an error thrown by the native engine into the matching class.
 * @param {unknown} err
 * @returns {Error}
 */
function fromNative(err) {
  if (!(err instanceof Error)) return new LockError(String(err));
  const match = NATIVE_MESSAGE.exec(err.message);
  if (!match) return err;
  const [, code, message] = match;
  if (code === 'ERR_LOCK_INVALID_ARG') {
    const rangeError = new RangeError(message);
    /** @type {any} */ (rangeError).code = 'ERR_OUT_OF_RANGE';
    return rangeError;
  }
  const ErrorClass = BY_CODE[/** @type {keyof typeof BY_CODE} */ (code)] || LockError;
  return new ErrorClass(capitalize(message));
}

/** @param {string} text */
function capitalize(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

module.exports = {
  LockError,
  LockConnectionError,
  LockTimeoutError,
  LockAuthError,
  LockRedisError,
  LockClosedError,
  LockConfigError,
  LockUnsupportedError,
  LockQuorumError,
  LockReplicationError,
  LockAcquireError,
  LockLostError,
  BY_CODE,
  fromNative,
};

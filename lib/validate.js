'use strict';
// Argument checks, run before anything reaches the engine or Redis.
// `undefined` and `null` mean "use the default" everywhere an option has one.

const MAX_MS = 2 ** 31 - 1;

/** @param {unknown} value */
function describe(value) {
  if (value === null) return 'null';
  if (typeof value === 'string') return `string ${JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value)}`;
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') {
    return `${typeof value} ${String(value)}`;
  }
  if (typeof value === 'function') return 'a function';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : typeof value;
}

/** @param {string} name @param {string} expected @param {unknown} value */
function typeError(name, expected, value) {
  const err = new TypeError(`${name} must be ${expected}, got ${describe(value)}`);
  /** @type {any} */ (err).code = 'ERR_INVALID_ARG_TYPE';
  return err;
}

/** @param {string} name @param {string} expected @param {unknown} value */
function rangeError(name, expected, value) {
  const err = new RangeError(`${name} must be ${expected}, got ${describe(value)}`);
  /** @type {any} */ (err).code = 'ERR_OUT_OF_RANGE';
  return err;
}

/** @param {unknown} resource @returns {string} */
function resourceName(resource) {
  if (typeof resource !== 'string') throw typeError('resource', 'a non-empty string', resource);
  if (resource.length === 0) {
    const err = new TypeError('resource must be a non-empty string, got an empty string');
    /** @type {any} */ (err).code = 'ERR_INVALID_ARG_VALUE';
    throw err;
  }
  return resource;
}

/** Most resources one lock may cover. */
const MAX_RESOURCES = 1000;

/**
 * A resource, or several (a lock over all of them): their names, sorted, without repeats.
 * @param {unknown} resource
 * @returns {string[]}
 */
function resourceNames(resource) {
  if (!Array.isArray(resource)) return [resourceName(resource)];
  if (resource.length === 0) throw rangeError('resource', 'a non-empty array of resource names', resource);
  if (resource.length > MAX_RESOURCES) throw rangeError('resource', `an array of at most ${MAX_RESOURCES} resource names`, resource);
  /** @type {string[]} */
  const names = [];
  // By index: a sparse array's holes are undefined here, not skipped.
  for (let i = 0; i < resource.length; i++) {
    const name = resource[i];
    if (typeof name !== 'string' || name.length === 0) throw typeError(`resource[${i}]`, 'a non-empty string', name);
    names.push(name);
  }
  return [...new Set(names)].sort();
}

/** @param {unknown} token @returns {string} */
function ownerToken(token) {
  if (typeof token !== 'string') throw typeError('token', 'a string', token);
  return token;
}

/** @param {string} name @param {unknown} value @param {number} fallback @returns {number} */
function milliseconds(name, value, fallback) {
  if (value == null) return fallback;
  if (typeof value !== 'number') throw typeError(name, `a positive integer of ms`, value);
  if (!Number.isInteger(value) || value < 1 || value > MAX_MS) {
    throw rangeError(name, `a positive integer of ms, at most ${MAX_MS}`, value);
  }
  return value;
}

/**
 * A required positive integer up to 2^31-1 (a count, e.g. a semaphore's permits).
 * @param {string} name @param {unknown} value @returns {number}
 */
function count(name, value) {
  if (typeof value !== 'number') throw typeError(name, 'a positive integer', value);
  if (!Number.isInteger(value) || value < 1 || value > MAX_MS) throw rangeError(name, `a positive integer, at most ${MAX_MS}`, value);
  return value;
}

/** @param {unknown} value @param {string} [name] @returns {number} */
function retryCount(value, name = 'retryCount') {
  if (value == null) return 0;
  if (typeof value !== 'number') throw typeError(name, 'a non-negative integer or Infinity', value);
  if (value !== Infinity && (!Number.isInteger(value) || value < 0)) {
    throw rangeError(name, 'a non-negative integer or Infinity', value);
  }
  return value;
}

/** A share, from 0 up to (not including) 0.5. @param {string} name @param {unknown} value @param {number} fallback */
function fraction(name, value, fallback) {
  if (value == null) return fallback;
  if (typeof value !== 'number') throw typeError(name, 'a number from 0 to below 0.5', value);
  if (!(value >= 0 && value < 0.5)) throw rangeError(name, 'a number from 0 to below 0.5', value);
  return value;
}

/** @param {string} name @param {unknown} value @param {number} fallback @returns {number} */
function delay(name, value, fallback) {
  if (value == null) return fallback;
  if (typeof value !== 'number') throw typeError(name, 'a non-negative finite number of ms', value);
  if (!Number.isFinite(value) || value < 0 || value > MAX_MS) {
    throw rangeError(name, `a non-negative finite number of ms, at most ${MAX_MS}`, value);
  }
  return value;
}

/** @param {string} name @param {unknown} value @param {boolean} fallback @returns {boolean} */
function flag(name, value, fallback) {
  if (value == null) return fallback;
  if (typeof value !== 'boolean') throw typeError(name, 'a boolean', value);
  return value;
}

/** @param {string} name @param {unknown} value @param {string} fallback @returns {string} */
function text(name, value, fallback) {
  if (value == null) return fallback;
  if (typeof value !== 'string') throw typeError(name, 'a string', value);
  return value;
}

/**
 * An options bag: `undefined`/`null` become `{}`; anything but a plain object is refused.
 * @param {string} name @param {unknown} value @returns {Record<string, unknown>}
 */
function optionsBag(name, value) {
  if (value == null) return {};
  if (typeof value !== 'object' || Array.isArray(value)) throw typeError(name, 'an object', value);
  return /** @type {Record<string, unknown>} */ (value);
}

/**
 * An AbortSignal (or anything shaped like one, e.g. from another realm).
 * @param {string} name @param {unknown} value @returns {AbortSignal | undefined}
 */
function abortSignal(name, value) {
  if (value == null) return undefined;
  const candidate = /** @type {any} */ (value);
  if (typeof candidate !== 'object' || typeof candidate.aborted !== 'boolean' || typeof candidate.addEventListener !== 'function') {
    throw typeError(name, 'an AbortSignal', value);
  }
  return /** @type {AbortSignal} */ (value);
}

/** @param {string} name @param {unknown} value @returns {Function} */
function callback(name, value) {
  if (typeof value !== 'function') throw typeError(name, 'a function', value);
  return value;
}

/** @param {string} name @param {unknown} value @returns {Function | undefined} */
function optionalCallback(name, value) {
  return value == null ? undefined : callback(name, value);
}

module.exports = {
  count,
  MAX_MS,
  typeError,
  rangeError,
  resourceName,
  resourceNames,
  ownerToken,
  milliseconds,
  retryCount,
  fraction,
  delay,
  flag,
  text,
  optionsBag,
  callback,
  optionalCallback,
  abortSignal,
};

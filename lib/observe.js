'use strict';
// What operators see of their locks: diagnostics channels (tracing channels per operation,
// plain channels for background events) and the NODE_DEBUG=simple-distributed-lock log.
// (`lock.metrics()` is counted in the engine's binding, where calls settle: src/metrics.rs.)
//
// Nothing published or logged carries an owner token or a password: contexts are built from
// the resource, the Lock's settings and the engine's `host:port` target, and results are
// rebuilt without the token.

const dc = require('node:diagnostics_channel');
const { debuglog } = require('node:util');
const { LockLostError } = require('./errors');

const NAME = 'simple-distributed-lock';

/**
 * Node 18.0-18.18 have no `tracingChannel` (18.19 and 19.9 added it): there the operations are
 * not traced, and a stand-in that never has subscribers keeps the package loading.
 * @param {string} op
 * @returns {import('node:diagnostics_channel').TracingChannel<any, any>}
 */
const tracing = (op) =>
  typeof dc.tracingChannel === 'function'
    ? dc.tracingChannel(`${NAME}:${op}`)
    : /** @type {any} */ ({ hasSubscribers: false });

const channels = {
  acquire: tracing('acquire'),
  release: tracing('release'),
  extend: tracing('extend'),
  isLocked: tracing('isLocked'),
  using: tracing('using'),
  lost: dc.channel(`${NAME}:lost`),
  extendFailed: dc.channel(`${NAME}:extend-failed`),
  connection: dc.channel(`${NAME}:connection`),
  quorum: dc.channel(`${NAME}:quorum`),
};

const log = debuglog(NAME);
/** Whether NODE_DEBUG names this package (Node reads it once, at startup). */
const debugEnabled = log.enabled === true;

/**
 * One line of the debug log: `SIMPLE-DISTRIBUTED-LOCK <pid>: ...` on stderr.
 * @param {string} format
 * @param {...unknown} args
 */
function debug(format, ...args) {
  if (debugEnabled) log(format, ...args);
}

/**
 * Whether anybody listens on a tracing channel. `TracingChannel#hasSubscribers` is missing
 * before Node 20.13; then each of its channels is asked.
 * @param {import('node:diagnostics_channel').TracingChannel<any, any>} tc
 */
function traced(tc) {
  const all = /** @type {{ hasSubscribers?: boolean }} */ (tc).hasSubscribers;
  if (all !== undefined) return all;
  return (
    tc.start.hasSubscribers || tc.end.hasSubscribers || tc.asyncStart.hasSubscribers || tc.asyncEnd.hasSubscribers || tc.error.hasSubscribers
  );
}

/** How deep `scrubError` looks through `cause` and `AggregateError.errors`. */
const SCRUB_DEPTH = 8;

/**
 * Whether a `LockLostError` (which holds its owner token) is in `err`, its causes or the errors
 * it aggregates.
 * @param {unknown} err @param {number} depth @returns {boolean}
 */
function holdsLost(err, depth) {
  if (depth > SCRUB_DEPTH || !(err instanceof Error)) return false;
  if (err instanceof LockLostError) return true;
  if (holdsLost(/** @type {{ cause?: unknown }} */ (err).cause, depth + 1)) return true;
  return err instanceof AggregateError && err.errors.some((e) => holdsLost(e, depth + 1));
}

/**
 * A copy of `err` fit to publish: every `LockLostError` in it (itself, its causes, the errors it
 * aggregates) replaced by one without the token. An error holding none is returned as it is.
 * @param {unknown} err @param {number} [depth] @returns {unknown}
 */
function scrubError(err, depth = 0) {
  if (!holdsLost(err, depth)) return err;
  const source = /** @type {Error & { code?: unknown, cause?: unknown }} */ (err);
  /** @type {Error & { code?: unknown }} */
  let copy;
  if (source instanceof LockLostError) {
    copy = new LockLostError(source.resource, '', source.kind, '');
  } else if (source instanceof AggregateError) {
    copy = new AggregateError(source.errors.map((e) => scrubError(e, depth + 1)), source.message);
  } else {
    copy = new Error(source.message);
  }
  copy.name = source.name;
  copy.message = source.message;
  copy.stack = source.stack;
  const code = /** @type {{ code?: unknown }} */ (err).code;
  if (code !== undefined) copy.code = code;
  if ('cause' in source) Object.defineProperty(copy, 'cause', { value: scrubError(source.cause, depth + 1), writable: true, configurable: true });
  return copy;
}

/**
 * Runs `run()` (which returns a promise) as one traced operation, as `tracePromise` would, except
 * that `settle(ctx, value)` decides what goes into the context (never the raw value, which may
 * hold a token) and the error published is `scrubError`'s copy (never a token either).
 * @template T
 * @param {import('node:diagnostics_channel').TracingChannel<any, any>} tc
 * @param {Record<string, unknown>} ctx
 * @param {() => Promise<T>} run
 * @param {(ctx: Record<string, unknown>, value: T) => void} settle
 * @returns {Promise<T>}
 */
function trace(tc, ctx, run, settle) {
  const failed = (/** @type {unknown} */ err) => {
    ctx.outcome = 'error';
    ctx.error = scrubError(err);
    tc.error.publish(ctx);
  };
  return tc.start.runStores(ctx, () => {
    let promise;
    try {
      promise = run();
    } catch (err) {
      failed(err);
      tc.end.publish(ctx);
      throw err;
    }
    tc.end.publish(ctx);
    return promise.then(
      (value) => {
        settle(ctx, value);
        tc.asyncStart.publish(ctx);
        tc.asyncEnd.publish(ctx);
        return value;
      },
      (err) => {
        failed(err);
        tc.asyncStart.publish(ctx);
        tc.asyncEnd.publish(ctx);
        throw err;
      },
    );
  });
}

module.exports = { channels, trace, traced, debug, debugEnabled, scrubError };

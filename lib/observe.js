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

const NAME = 'simple-distributed-lock';

/** @param {string} op */
const tracing = (op) => dc.tracingChannel(`${NAME}:${op}`);

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

/**
 * Runs `run()` (which returns a promise) as one traced operation, as `tracePromise` would, except
 * that `settle(ctx, value)` decides what goes into the context (never the raw value, which may
 * hold a token) and `scrub(err)` what error is published.
 * @template T
 * @param {import('node:diagnostics_channel').TracingChannel<any, any>} tc
 * @param {Record<string, unknown>} ctx
 * @param {() => Promise<T>} run
 * @param {(ctx: Record<string, unknown>, value: T) => void} settle
 * @param {(err: unknown) => unknown} [scrub]
 * @returns {Promise<T>}
 */
function trace(tc, ctx, run, settle, scrub = (e) => e) {
  const failed = (/** @type {unknown} */ err) => {
    ctx.outcome = 'error';
    ctx.error = scrub(err);
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

module.exports = { channels, trace, traced, debug, debugEnabled };

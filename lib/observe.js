'use strict';
// What operators see of their locks: diagnostics channels (tracing channels per operation,
// plain channels for background events), the NODE_DEBUG=simple-distributed-lock log, and the
// counters and summaries behind `lock.metrics()`.
//
// Nothing published or logged carries an owner token or a password: contexts are built from
// the resource, the Lock's settings and the engine's `host:port` target, and results are
// rebuilt without the token.

const dc = require('node:diagnostics_channel');
const { debuglog } = require('node:util');
const { performance } = require('node:perf_hooks');

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

/** How long the summaries look back, and how many samples of each they keep at most. */
const WINDOW_MS = 60000;
const WINDOW_SAMPLES = 1024;

/** The last `WINDOW_SAMPLES` durations with their times: a sliding window. */
class Window {
  #values = new Float64Array(WINDOW_SAMPLES);
  #times = new Float64Array(WINDOW_SAMPLES);
  #next = 0;
  #size = 0;

  /** @param {number} value ms @param {number} now performance.now() */
  add(value, now) {
    this.#values[this.#next] = value;
    this.#times[this.#next] = now;
    this.#next = (this.#next + 1) % WINDOW_SAMPLES;
    if (this.#size < WINDOW_SAMPLES) this.#size++;
  }

  /** @param {number} now @returns {import('..').DurationSummary} */
  summary(now) {
    /** @type {number[]} */
    const recent = [];
    for (let i = 0; i < this.#size; i++) {
      if (now - this.#times[i] <= WINDOW_MS) recent.push(this.#values[i]);
    }
    recent.sort((a, b) => a - b);
    const n = recent.length;
    /** @param {number} q nearest rank */
    const at = (q) => (n === 0 ? 0 : round(recent[Math.min(n - 1, Math.ceil(q * n) - 1)]));
    return { count: n, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: n === 0 ? 0 : round(recent[n - 1]) };
  }
}

/** @param {number} ms */
const round = (ms) => Math.round(ms * 1000) / 1000;

/**
 * A Lock's counters and summaries. Locks held are known by token: `until` is when a lock that
 * nobody tracks (no autoExtend, not a lease) runs out on its own; tracked ones leave at release
 * or loss.
 */
class Metrics {
  acquired = 0;
  refused = 0;
  errors = 0;
  released = 0;
  releasedNotOwner = 0;
  extended = 0;
  extendFailed = 0;
  waiting = 0;
  lost = { 'not-owner': 0, unreachable: 0, expired: 0, 'max-hold-time': 0, closed: 0 };
  /** @type {Map<string, { at: number, until: number }>} */
  held = new Map();
  #pruneAt = 1024;
  wait = new Window();
  hold = new Window();

  /** @param {string} token @param {number} at @param {number} until */
  granted(token, at, until) {
    this.acquired++;
    this.held.set(token, { at, until });
    if (this.held.size >= this.#pruneAt) {
      // Locks that ran out without a release: amortized, so `held` stays bounded by the locks
      // really held.
      this.#prune(performance.now());
      this.#pruneAt = Math.max(1024, this.held.size * 2);
    }
  }

  /** @param {string} token @param {boolean} ok @param {number} now */
  releasedBy(token, ok, now) {
    const entry = this.held.get(token);
    if (ok) {
      this.released++;
      if (entry) this.hold.add(now - entry.at, now);
    } else {
      this.releasedNotOwner++;
    }
    this.held.delete(token);
  }

  /** @param {number} now */
  #prune(now) {
    for (const [token, entry] of this.held) if (entry.until <= now) this.held.delete(token);
  }

  /** @returns {import('..').LockMetrics} */
  snapshot() {
    const now = performance.now();
    this.#prune(now);
    return {
      acquired: this.acquired,
      refused: this.refused,
      errors: this.errors,
      released: this.released,
      releasedNotOwner: this.releasedNotOwner,
      extended: this.extended,
      extendFailed: this.extendFailed,
      lost: { ...this.lost },
      held: this.held.size,
      waiting: this.waiting,
      waitTime: this.wait.summary(now),
      holdTime: this.hold.summary(now),
      windowMs: WINDOW_MS,
    };
  }
}

module.exports = { channels, trace, traced, debug, debugEnabled, Metrics, WINDOW_MS, WINDOW_SAMPLES };

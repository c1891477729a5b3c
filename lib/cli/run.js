// @ts-check
'use strict';
// `run`: acquire the lock (auto-extended), run the command with it held, release it when the
// command exits, and exit as the command did. A lost lock, or --max-hold passing, stops the
// command: SIGTERM, then SIGKILL after --kill-after ms.

const { spawn } = require('node:child_process');
const { constants } = require('node:os');
const { duration } = require('./output');
const { lockDetails } = require('./probe');

/** Signals passed on to the command (and that stop a wait for the lock). */
const FORWARDED = /** @type {const} */ (['SIGINT', 'SIGTERM', 'SIGHUP']);

const EXIT_LOST = 75; // EX_TEMPFAIL
const EXIT_UNAVAILABLE = 69; // EX_UNAVAILABLE
const EXIT_CANNOT_RUN = 126;
const EXIT_NOT_FOUND = 127;

/** As shells report a death by signal: 128 + its number. @param {NodeJS.Signals} signal */
function signalExitCode(signal) {
  return 128 + (constants.signals[signal] ?? 0);
}

/**
 * @param {import('./args').RunArgs} a
 * @param {import('../lock').Lock} lock
 * @param {import('./output').Reporter} report on stderr
 * @returns {Promise<number>} the exit code
 */
async function run(a, lock, report) {
  const { resource } = a;
  const waiting = new AbortController();
  /** @type {NodeJS.Signals | null} */
  let interrupted = null;
  /** @type {import('node:child_process').ChildProcess | null} */
  let child = null;
  let childRunning = false;
  const onSignal = (/** @type {NodeJS.Signals} */ signal) => {
    if (childRunning) {
      /** @type {import('node:child_process').ChildProcess} */ (child).kill(signal);
    } else if (!child && !interrupted) {
      interrupted = signal;
      waiting.abort(new Error(`stopped by ${signal}`));
    }
  };
  for (const signal of FORWARDED) process.on(signal, onSignal);
  try {
    const started = Date.now();
    /** @type {import('../lease').Lease | null} */
    let lease;
    try {
      // --max-hold: the library stops extending then (so the lock ends even if this process
      // hangs), and the timer below stops the command at that moment.
      const maxHold = a.maxHold === undefined ? {} : { maxHoldTime: a.maxHold };
      lease = await lock.acquireLease(resource, { ttl: a.ttl, autoExtend: true, ...maxHold, ...waitOptions(a), signal: waiting.signal });
    } catch (err) {
      if (interrupted) return stoppedWaiting(a, report, interrupted);
      report.error(err, { resource });
      return EXIT_UNAVAILABLE;
    }
    const waitedMs = Date.now() - started;
    if (lease === null) {
      await conflict(a, report, waitedMs);
      return a.conflictExitCode;
    }
    if (interrupted) {
      await lease.release().catch(() => {});
      return stoppedWaiting(a, report, interrupted);
    }
    report.event('acquired', { resource, token: lease.token, fence: lease.fence, ttl: a.ttl, waitedMs }, null);

    const held = lease;
    const env = { ...process.env, LOCK_RESOURCE: resource, LOCK_TOKEN: held.token, LOCK_FENCE: held.fence === null ? '' : String(held.fence) };
    const spawned = spawn(a.argv[0], a.argv.slice(1), { stdio: 'inherit', env });
    child = spawned;
    childRunning = true;

    /** @type {string | null} why the command is being stopped: a LockLostError kind, or 'max-hold' */
    let stopping = null;
    /** @type {NodeJS.Timeout | undefined} */
    let killTimer;
    const stop = (/** @type {string} */ reason, /** @type {string} */ message) => {
      if (stopping !== null || !childRunning) return;
      stopping = reason;
      const plan = a.killAfter > 0 ? `SIGTERM now, SIGKILL in ${duration(a.killAfter)}` : 'SIGKILL';
      report.event('lost', { resource, reason, message, killAfter: a.killAfter }, `${message}; stopping the command: ${plan}`, { always: true });
      if (a.killAfter > 0) {
        spawned.kill('SIGTERM');
        killTimer = setTimeout(() => childRunning && spawned.kill('SIGKILL'), a.killAfter);
      } else {
        spawned.kill('SIGKILL');
      }
    };
    const onLost = () => {
      const reason = /** @type {import('../errors').LockLostError} */ (held.signal.reason);
      stop(reason.kind ?? 'lost', String(reason.message).replace(/\.$/, '') + (reason.kind ? ` (${reason.kind})` : ''));
    };
    held.signal.addEventListener('abort', onLost, { once: true });
    if (held.signal.aborted) onLost();
    // The command stops when --max-hold passes (the lease's own end comes later, at its deadline).
    const holdTimer =
      a.maxHold === undefined ? undefined : setTimeout(() => stop('max-hold', `held the lock on "${resource}" for --max-hold ${duration(/** @type {number} */ (a.maxHold))}`), a.maxHold);

    /** @type {{ code: number | null, signal: NodeJS.Signals | null } | { error: NodeJS.ErrnoException }} */
    const outcome = await new Promise((resolve) => {
      spawned.once('exit', (code, signal) => resolve({ code, signal }));
      // After a successful start, 'error' only reports a failed kill(); the exit still comes.
      spawned.on('error', (error) => spawned.pid === undefined && resolve({ error }));
    });
    childRunning = false;
    clearTimeout(killTimer);
    clearTimeout(holdTimer);
    held.signal.removeEventListener('abort', onLost);

    let exitCode;
    if ('error' in outcome) {
      const notFound = outcome.error.code === 'ENOENT';
      report.error(new Error(`cannot run ${JSON.stringify(a.argv[0])}: ${notFound ? 'command not found' : outcome.error.code === 'EACCES' ? 'permission denied' : outcome.error.code ?? outcome.error.message}`), { resource });
      exitCode = notFound ? EXIT_NOT_FOUND : EXIT_CANNOT_RUN;
    } else {
      exitCode = outcome.code ?? signalExitCode(/** @type {NodeJS.Signals} */ (outcome.signal));
      report.event('child-exit', { resource, code: outcome.code, signal: outcome.signal, exitCode }, null);
    }

    /** @type {boolean | null} null: the release failed */
    let released = null;
    try {
      released = await held.release();
    } catch (err) {
      report.error(err, { resource });
      report.event('released', { resource, released: false }, `could not release the lock on "${resource}"; it expires within ${duration(a.ttl)}`, { always: true });
    }
    if (released !== null) report.event('released', { resource, released }, null);
    if (stopping !== null) return EXIT_LOST;
    if (released === false && !('error' in outcome)) {
      // The key was gone or someone else's before the command ended, and no extend had noticed yet.
      const message = `the lock on "${resource}" was no longer held when the command ended`;
      report.event('lost', { resource, reason: 'not-owner', message }, message, { always: true });
      return EXIT_LOST;
    }
    return exitCode;
  } finally {
    for (const signal of FORWARDED) process.off(signal, onSignal);
  }
}

/** @param {import('./args').RunArgs} a */
function waitOptions(a) {
  const retry = a.retryDelay === undefined ? {} : { retryDelay: a.retryDelay };
  if (a.wait === undefined) return {};
  if (a.wait === 'forever') return { retryCount: Infinity, ...retry };
  return { waitTimeout: a.wait, ...retry };
}

/**
 * @param {import('./args').RunArgs} a @param {import('./output').Reporter} report @param {NodeJS.Signals} signal
 */
function stoppedWaiting(a, report, signal) {
  const message = `stopped by ${signal} while waiting for the lock on "${a.resource}"`;
  report.event('error', { resource: a.resource, message, signal }, message);
  return signalExitCode(signal);
}

/**
 * The conflict line: who holds the lock and for how much longer, where one server can tell.
 * @param {import('./args').RunArgs} a @param {import('./output').Reporter} report @param {number} waitedMs
 */
async function conflict(a, report, waitedMs) {
  const { resource } = a;
  /** @type {import('./probe').Details | null} */
  let details = null;
  if (a.target.kind === 'single') {
    details = await lockDetails(/** @type {string} */ (a.target.spec), a.prefix, resource).catch(() => null);
  }
  const about = details ? holder(details) : '';
  const what = a.wait === undefined ? `the lock on "${resource}" is held by another owner` : `the lock on "${resource}" is still held after waiting ${duration(waitedMs)}`;
  report.event(
    'conflict',
    { resource, waitedMs, holder: details?.token ?? null, ttlMs: details?.ttlMs ?? null, fence: details?.fence ?? null },
    `${what}${about ? ` (${about})` : ''}; not running the command`,
  );
}

/** "token …, 12.3 s left, fence 7" @param {import('./probe').Details} d */
function holder(d) {
  if (d.token === null) return 'released just now';
  return [`token ${d.token}`, d.ttlMs === null ? 'no expiry' : `${duration(d.ttlMs)} left`, d.fence === null ? null : `fence ${d.fence}`]
    .filter(Boolean)
    .join(', ');
}

module.exports = { run, holder };

// @ts-check
// A server that looks like Redis and then answers with hostile bytes: the process survives, every
// call settles with a LockError within its command timeout (plus a margin) — or, where a reply
// nobody asked for came besides the right one, with the right answer — and once the server
// forwards to a real Redis the same Lock works again (it dropped the bad socket). Each case runs in its own child process
// (fixtures/hostile-client.mjs), with the event-loop lane on and off, so an abort of the addon
// fails one test with the child's signal instead of killing the test runner.

import './helpers/tripwire.mjs';
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { RedisServer } from './helpers/redis-server.mjs';
import { HOSTILE_KINDS } from './helpers/hostile-server.mjs';
import { runChild } from './helpers/child.mjs';

const FIXTURE = fileURLToPath(new URL('./fixtures/hostile-client.mjs', import.meta.url));
const COMMAND_TIMEOUT = 500;
/** Every call settles within its command timeout plus this (2 shared cores, child processes). */
const MARGIN = 3000;
/** A child still running after this long is killed and reported as hung. */
const CHILD_LIMIT_MS = 90000;
/**
 * Cases where a call may also resolve, with the genuine answer: a reply nobody asked for came
 * besides the right one (after it, or before anything was sent), and a client that tells them
 * apart may answer from the right one. What it must not do is answer from the wrong one (the
 * prepared answers make that visible) or keep the socket (the recovery check sees that).
 * Everywhere else the only right outcome is a LockError.
 */
const GENUINE_ALLOWED = new Set(['extra-reply', 'unsolicited-on-connect']);
/**
 * The rounds of each case, each with a fresh server and a fresh Lock: cold (hostile from the Lock's
 * first call, while its sockets are still being opened) and warm (after one friendly call and a
 * pause: the hostile replies meet the sockets the Lock settled on, the lane's included). Whether a
 * client reads the `+OK` sent on connect before or after it writes its first command is a race; a
 * correct client passes either way, a confused one only sometimes shows it, so that case has five
 * cold rounds (a warm socket never sees the on-connect `+OK`, only its replacements do).
 * @param {string} kind
 */
function roundsOf(kind) {
  if (kind === 'unsolicited-on-connect') return Array.from({ length: 5 }, () => ({ warm: false }));
  return [{ warm: false }, { warm: true }];
}

/** @type {RedisServer} */
let redis;
before(async () => {
  redis = await RedisServer.start();
});
after(async () => {
  await redis.stop();
});

/** @typedef {import('./helpers/child.mjs').ChildResult} ChildResult */

/** @param {string} kind @param {'on' | 'off'} lane @returns {Promise<ChildResult>} */
function runHostile(kind, lane) {
  const config = { kind, redisPort: redis.port, id: `${kind}-${lane}`, rounds: roundsOf(kind) };
  return runChild(FIXTURE, config, lane, CHILD_LIMIT_MS);
}

/** @param {string} text @param {number} n */
function tail(text, n = 1500) {
  return text.length > n ? `...${text.slice(-n)}` : text;
}

/**
 * What went wrong in one round of a child's run.
 * @param {string} kind @param {any} round
 */
function roundProblems(kind, round) {
  /** @type {string[]} */
  const problems = [];
  if (round.warmUp && round.warmUp.value !== false) problems.push(`the friendly warm-up isLocked gave ${JSON.stringify(round.warmUp)}`);
  for (const call of round.calls) {
    const what = `${call.call}:`;
    if (call.outcome === 'hang') {
      problems.push(`${what} never settled (still pending after ${call.ms} ms)`);
      continue;
    }
    if (call.ms > COMMAND_TIMEOUT + MARGIN) problems.push(`${what} took ${call.ms} ms (limit ${COMMAND_TIMEOUT + MARGIN})`);
    if (call.outcome === 'rejected') {
      if (!call.lockError || !String(call.code).startsWith('ERR_LOCK_')) {
        problems.push(`${what} rejected with a non-LockError ${call.name} (code ${call.code}): ${call.message}`);
      }
      continue;
    }
    const genuine =
      call.genuine === 'a token' ? typeof call.value === 'string' && /^[0-9a-f]{32}$/.test(call.value) : call.value === call.genuine;
    if (!GENUINE_ALLOWED.has(kind)) problems.push(`${what} resolved with ${JSON.stringify(call.value)} instead of rejecting with a LockError`);
    else if (!genuine) problems.push(`${what} resolved with ${JSON.stringify(call.value)}, not the genuine answer (${JSON.stringify(call.genuine)}): it took a reply meant for another command`);
  }
  const r = round.recovery;
  if (!r.ok) {
    if (!r.token) problems.push(`recovery: no acquire succeeded within 3 s on the real Redis (${r.tries} tries: ${r.errors.slice(-3).join(' | ')})`);
    else if (r.onRedis !== r.token) problems.push(`recovery: acquire resolved ${r.token} but the real Redis holds ${JSON.stringify(r.onRedis)}: the Lock still talks to the hostile socket`);
    else problems.push(`recovery: release gave ${JSON.stringify(r.released)}, key left on Redis: ${r.keyAfterRelease}`);
  }
  if (round.close === 'hang') problems.push('close() never settled');
  return problems;
}

/**
 * Everything wrong with one child's run, as readable lines (empty: the case passed).
 * @param {string} kind @param {ChildResult} result
 */
function problemsOf(kind, result) {
  if (result.killed) return [`child hung: killed after ${CHILD_LIMIT_MS} ms; stdout: ${tail(result.stdout)}; stderr: ${tail(result.stderr)}`];
  if (result.signal || result.code !== 0) {
    return [`child died: ${result.signal ? `signal ${result.signal}` : `exit code ${result.code}`}; stderr: ${tail(result.stderr)}`];
  }
  const line = result.stdout.trim().split('\n').pop() ?? '';
  /** @type {any} */
  let report;
  try {
    report = JSON.parse(line);
  } catch {
    return [`no JSON report; stdout: ${tail(result.stdout)}; stderr: ${tail(result.stderr)}`];
  }
  /** @type {string[]} */
  const problems = [];
  for (const [index, round] of report.rounds.entries()) {
    const at = `round ${index + 1} (${round.warm ? 'warm' : 'cold'}) `;
    problems.push(...roundProblems(kind, round).map((p) => at + p));
  }
  for (const reason of report.unhandled) problems.push(`unhandled rejection in the child: ${reason}`);
  return problems;
}

for (const lane of /** @type {const} */ (['on', 'off'])) {
  describe(`hostile replies, event-loop lane ${lane}`, { concurrency: 4 }, () => {
    for (const kind of HOSTILE_KINDS) {
      const calls = GENUINE_ALLOWED.has(kind) ? 'rejects with a LockError or gives the genuine answer' : 'rejects with a LockError';
      it(`${kind} (lane ${lane}): the process survives, every call ${calls} in time, the Lock recovers`, async (t) => {
        const result = await runHostile(kind, lane);
        const problems = problemsOf(kind, result);
        const line = result.stdout.trim().split('\n').pop() ?? '';
        t.diagnostic(line.length > 2000 ? `${line.slice(0, 2000)}...` : line);
        assert.equal(problems.length, 0, `${kind}, lane ${lane}:\n  ${problems.join('\n  ')}`);
      });
    }
  });
}

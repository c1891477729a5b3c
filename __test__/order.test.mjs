// @ts-check
// Calls from one Lock take effect in Redis in the order they were made, from the Lock's first
// call (its connection still opening) on: `Promise.all([lock.release(r, t), lock.acquire(r)])`
// gives [true, a token], and `using` right behind a release never fails to acquire. The checks
// run in a child process (fixtures/order-checks.mjs), once with the event-loop lane on and once
// with it off, and every failure is counted.

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { RedisServer } from './helpers/redis-server.mjs';
import { runChild } from './helpers/child.mjs';

const FIXTURE = fileURLToPath(new URL('./fixtures/order-checks.mjs', import.meta.url));
const CHILD_LIMIT_MS = 60000;

/** @type {RedisServer} */
let server;
before(async () => {
  server = await RedisServer.start();
});
after(async () => {
  await server.stop();
});

/** @param {'on' | 'off'} lane */
function runChecks(lane) {
  return runChild(FIXTURE, { url: server.url, fresh: 50, repeat: 200, id: lane }, lane, CHILD_LIMIT_MS);
}

for (const lane of /** @type {const} */ (['on', 'off'])) {
  test(`calls of one Lock take effect in call order: 50 fresh Locks and one Lock x 200 (lane ${lane})`, async (t) => {
    const result = await runChecks(lane);
    assert.ok(!result.killed, `the checks hung: killed after ${CHILD_LIMIT_MS} ms; ${result.stdout.slice(-1000)} ${result.stderr.slice(-1000)}`);
    assert.ok(
      result.code === 0 && result.signal === null,
      `the child died (${result.signal ? `signal ${result.signal}` : `exit code ${result.code}`}): ${result.stderr.slice(-2000)}`,
    );
    /** @type {{ checks: Record<string, { runs: number, failures: number, samples: string[] }> }} */
    const report = JSON.parse(result.stdout.trim().split('\n').pop() ?? '');
    /** @type {string[]} */
    const failed = [];
    for (const [name, { runs, failures, samples }] of Object.entries(report.checks)) {
      t.diagnostic(`${name}: ${failures} of ${runs} failed`);
      if (failures > 0) failed.push(`${name}: ${failures} of ${runs} failed, e.g. ${samples.join(' | ')}`);
    }
    assert.equal(Object.keys(report.checks).length, 4, 'every check ran');
    assert.equal(failed.length, 0, `lane ${lane}:\n  ${failed.join('\n  ')}`);
  });
}

// @ts-check
// Mutual exclusion across processes, and wire compatibility with v1: a fleet that upgrades one
// service at a time runs v1 and v2 side by side on the same Redis.

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { setTimeout as sleep } from 'node:timers/promises';
import { Lock } from 'simple-distributed-lock';
import { RedisServer, eachKey } from './helpers/redis-server.mjs';
import { runWorkers } from './helpers/workers.mjs';

const require = createRequire(import.meta.url);
/** @type {{ V1Lock: typeof import('./fixtures/v1-lock.cjs').V1Lock }} */
const { V1Lock } = require('./fixtures/v1-lock.cjs');

/** @type {RedisServer} */
let server;
/** @type {import('ioredis').Redis} */
let raw;

before(async () => {
  server = await RedisServer.start();
  raw = server.client();
});
after(async () => {
  await server.stop();
});

/**
 * @param {string} prefix ioredis keyPrefix the workers use
 * @param {Array<'v1' | 'v2'>} impls one worker each
 * @param {number} iterations
 */
async function contend(prefix, impls, iterations) {
  await runWorkers(
    'counter-worker.mjs',
    impls.map((impl) => ({ impl, url: server.url, resource: 'counter-lock', iterations, prefix })),
  );
  const counter = Number(await raw.get(`${prefix}counter`));
  const violations = Number((await raw.get(`${prefix}violations`)) ?? 0);
  const holders = await raw.lrange(`${prefix}holders`, 0, -1);
  return { counter, violations, holders };
}

test('4 v2 processes x 40 critical sections: the shared counter is exact', async () => {
  const { counter, violations, holders } = await contend('v2only:', ['v2', 'v2', 'v2', 'v2'], 40);
  assert.equal(violations, 0, 'no two holders at once');
  assert.equal(counter, 160);
  assert.equal(new Set(holders).size, 4, 'every worker got the lock');
});

test('v1 and v2 processes on the same Redis exclude each other (2 + 2 processes)', async () => {
  const { counter, violations, holders } = await contend('mixed:', ['v1', 'v2', 'v1', 'v2'], 30);
  assert.equal(violations, 0);
  assert.equal(counter, 120);
  assert.ok(holders.some((h) => h.startsWith('v1:')) && holders.some((h) => h.startsWith('v2:')));
});

test('v1 holds: v2 cannot acquire, extend or release it; v1 releases it normally', async () => {
  const v1 = new V1Lock(server.client());
  const v2 = new Lock(server.client());
  const v1Token = await v1.acquire('wire-a', { ttl: 5000 });
  assert.ok(v1Token);
  assert.equal(await v2.acquire('wire-a'), null);
  assert.equal(await v2.isLocked('wire-a'), true);
  const v2Token = await v2.acquire('wire-other');
  assert.ok(v2Token);
  assert.equal(await v2.release('wire-a', v2Token), false, "v2's token does not release v1's lock");
  assert.equal(await v2.extend('wire-a', v2Token, 60000), false);
  assert.equal(await raw.get('lock:wire-a'), v1Token);
  const pttl = await raw.pttl('lock:wire-a');
  assert.ok(pttl <= 5000, `ttl untouched: ${pttl}`);
  assert.equal(await v1.release('wire-a', v1Token), true);
  assert.ok(await v2.acquire('wire-a'), 'free again for v2');
});

test('v2 holds with autoExtend: v1 cannot take or release it, then takes it after release', async () => {
  const v1 = new V1Lock(server.client());
  const v2 = new Lock(server.client());
  const v2Token = await v2.acquire('wire-b', { ttl: 300, autoExtend: true });
  assert.ok(v2Token);
  await sleep(700);
  assert.equal(await v1.acquire('wire-b'), null, 'still held past its ttl, by auto-extension');
  assert.equal(await v1.isLocked('wire-b'), true);
  const v1Token = await v1.acquire('wire-b-other');
  assert.ok(v1Token);
  assert.equal(await v1.release('wire-b', v1Token), false);
  assert.equal(await v1.extend('wire-b', v1Token, 60000), false);
  assert.equal(await raw.get('lock:wire-b'), v2Token);
  assert.equal(await v2.release('wire-b', v2Token), true);
  const taken = await v1.acquire('wire-b', { retryCount: 5, retryDelay: 20 });
  assert.ok(taken);
  assert.equal(await raw.get('lock:wire-b'), taken);
});

test('both versions read the same key through ioredis db and keyPrefix', async () => {
  // A cluster has only database 0: there the two share the keyPrefix alone.
  const db = server.cluster ? {} : { db: 2 };
  const shared = server.client({ ...db, keyPrefix: 'svc:' });
  const v1 = new V1Lock(shared);
  const v2 = new Lock(shared);
  const v1Token = await v1.acquire('wire-c');
  assert.ok(v1Token);
  assert.equal(await server.client(db).get('svc:lock:wire-c'), v1Token);
  assert.equal(await v2.acquire('wire-c'), null, 'v2 sees the key v1 wrote (same db, prefix svc:)');
  assert.equal(await v2.release('wire-c', v1Token), true, 'the owner token works across versions');
  const v2Token = await v2.acquire('wire-c');
  assert.ok(v2Token);
  assert.equal(await server.client(db).get('svc:lock:wire-c'), v2Token);
  assert.equal(await v1.acquire('wire-c'), null);
  assert.equal(await v1.extend('wire-c', v2Token, 8000), true, 'same scripts, same layout');
});

test('tokens have the v1 shape', async () => {
  const v2 = new Lock(server.client());
  const v1 = new V1Lock(server.client());
  const a = await v2.acquire('shape-a');
  const b = await v1.acquire('shape-b');
  assert.match(String(a), /^[0-9a-f]{32}$/);
  assert.match(String(b), /^[0-9a-f]{32}$/);
});

test('fairness: processes with steady demand for one lock take turns, none keeps it to itself', async () => {
  // 3 processes x 2 loops, each loop re-queues as soon as it releases: every process always has
  // a waiter. A process hands the lock to its own next waiter in one round trip, but only a few
  // times in a row; then the others get their turn. Without that, the first process would keep
  // the lock for all 30 of its sections while the others wait.
  // The race starts from a lock every process already waits for: the test holds it until each
  // worker's subscriber listens on its release channel, so a process that is slow to start (a
  // loaded machine) is not counted as starved while it was not yet asking.
  await eachKey.del(raw, 'fair:ready', 'fair:holders');
  const workers = 3;
  const sections = 15;
  const starter = new Lock(server.url);
  const held = await starter.acquire('fair', { ttl: 60000 });
  assert.ok(held);
  const finished = runWorkers(
    'fair-worker.mjs',
    Array.from({ length: workers }, (_, id) => ({ url: server.url, resource: 'fair', id, workers, loops: 2, sections })),
  );
  finished.catch(() => {});
  // Summed over every master: a cluster counts each subscriber on the node it is connected to.
  const listening = async () =>
    (await server.everyMaster('PUBSUB', 'NUMSUB', 'sdl:released:lock:fair')).reduce((/** @type {number} */ n, reply) => n + Number(/** @type {unknown[]} */ (reply)[1]), 0);
  for (let waited = 0; (await listening()) < workers; waited += 10) {
    assert.ok(waited < 30000, `only ${await listening()} of ${workers} workers listen for the release`);
    await sleep(10);
  }
  assert.equal(await starter.release('fair', held), true);
  await finished;
  await starter.close();
  const holders = await raw.lrange('fair:holders', 0, -1);
  assert.equal(holders.length, workers * 2 * sections);
  // Runs are counted until the first process is done: after that, fewer processes contend and
  // the last one rightly keeps the lock for the rest of its sections.
  const done = new Map();
  let contended = holders.length;
  holders.forEach((id, i) => {
    done.set(id, (done.get(id) ?? 0) + 1);
    if (done.get(id) === 2 * sections) contended = Math.min(contended, i + 1);
  });
  let switches = 0;
  let run = 1;
  let longest = 1;
  for (let i = 1; i < contended; i++) {
    run = holders[i] === holders[i - 1] ? run + 1 : 1;
    if (run === 1) switches++;
    longest = Math.max(longest, run);
  }
  const seen = holders.join('');
  assert.ok(switches >= 6, `the lock changed process ${switches} times in the first ${contended} sections: ${seen}`);
  assert.ok(longest <= 20, `one process held it ${longest} times in a row while others waited: ${seen}`);
});

test('in one process, waiters take a lock released by v2 in the order they asked for it', async () => {
  // (retryDelay is long so that no timed poll, which is first come first served by chance,
  // plays a part: the lock goes from waiter to waiter by notification and hand-over.)
  const lock = new Lock(server.url);
  const other = new Lock(server.url);
  // A new Lock's first calls take the runtime path while its event-loop socket opens.
  await lock.isLocked('fifo');
  await sleep(200);
  const held = await other.acquire('fifo', { ttl: 10000 });
  assert.ok(held);
  /** @type {number[]} */
  const order = [];
  const waiters = [0, 1, 2, 3].map(async (n) => {
    const token = await lock.acquire('fifo', { retryCount: Infinity, retryDelay: 5000 });
    assert.ok(token);
    order.push(n);
    await sleep(5);
    assert.equal(await lock.release('fifo', token), true);
  });
  await sleep(50);
  assert.equal(await other.release('fifo', held), true);
  await Promise.all(waiters);
  assert.deepEqual(order, [0, 1, 2, 3]);
  await lock.close();
  await other.close();
});

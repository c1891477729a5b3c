// @ts-check
// Locks over several resources: all or none under one token, each resource on its v1 key (so a
// lock over [a, b], a plain lock on a, and v1 on b exclude each other).

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { setTimeout as sleep } from 'node:timers/promises';
import { Lock, ReadWriteLock, Semaphore, LockAcquireError, LockLostError, LockUnsupportedError } from 'simple-distributed-lock';
import { RedisServer, eachKey } from './helpers/redis-server.mjs';
import { until } from './helpers/until.mjs';
import { runWorkers } from './helpers/workers.mjs';
import { startIndependentMasters, stopAll } from './helpers/topology.mjs';

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

test('all or none: one key held keeps the others untouched; then every key, one token, one ttl', async () => {
  const lock = new Lock(server.url, { ttl: 3000 });
  const other = new Lock(server.url);
  const b = await other.acquire('aon:b');
  assert.ok(b);
  assert.equal(await lock.acquire(['aon:a', 'aon:b', 'aon:c']), null, 'b is held');
  assert.equal(await eachKey.exists(raw, 'lock:aon:a', 'lock:aon:c'), 0, 'nothing taken of the rest');
  assert.equal(await other.release('aon:b', b), true);
  const token = await lock.acquire(['aon:c', 'aon:a', 'aon:b', 'aon:a']);
  assert.ok(token);
  assert.deepEqual(await eachKey.mget(raw, 'lock:aon:a', 'lock:aon:b', 'lock:aon:c'), [token, token, token], 'each resource on its v1 key');
  for (const key of ['lock:aon:a', 'lock:aon:b', 'lock:aon:c']) {
    const pttl = await raw.pttl(key);
    assert.ok(pttl > 2000 && pttl <= 3000, `${key}: ${pttl}`);
  }
  assert.equal(await other.acquire('aon:a'), null, 'a plain lock on one of them is excluded');
  assert.equal(await lock.extend(['aon:a', 'aon:b', 'aon:c'], token, 8000), true);
  assert.ok((await raw.pttl('lock:aon:b')) > 7000);
  assert.equal(await lock.extend(['aon:a', 'aon:b', 'aon:d'], token, 9000), false, 'not every key is the token\'s');
  assert.ok((await raw.pttl('lock:aon:a')) <= 8000, 'then none is extended');
  assert.equal(await lock.release(['aon:a', 'aon:b', 'aon:c'], token), true);
  assert.equal(await eachKey.exists(raw, 'lock:aon:a', 'lock:aon:b', 'lock:aon:c'), 0);
  assert.equal(await lock.release(['aon:a', 'aon:b'], token), false, 'released once');
  await Promise.all([lock.close(), other.close()]);
});

test('v1 and v2 exclude each other: v1 holding one resource keeps a v2 lock over it and others out', async () => {
  const v1 = new V1Lock(raw);
  const lock = new Lock(server.url);
  const held = await v1.acquire('v1:b');
  assert.ok(held);
  assert.equal(await lock.acquire(['v1:a', 'v1:b']), null);
  await v1.release('v1:b', held);
  const token = await lock.acquire(['v1:a', 'v1:b']);
  assert.ok(token);
  assert.equal(await v1.acquire('v1:a'), null, 'v1 sees the key taken');
  assert.equal(await v1.release('v1:a', token), true, 'and it is v1\'s layout: v1 could release it with the token');
  await lock.release(['v1:a', 'v1:b'], token);
  await lock.close();
});

test('[a, b] and [b, a] in a loop from two processes, beside a plain lock on b: no deadlock, never overlapping', async () => {
  await eachKey.del(raw, 'multi:inside:a', 'multi:inside:b', '{multi}:breaches', '{multi}:sections');
  await runWorkers('multi-worker.mjs', [
    { url: server.url, resources: ['a', 'b'], sections: 40 },
    { url: server.url, resources: ['b', 'a'], sections: 40 },
    { url: server.url, resources: 'b', sections: 20 },
  ]);
  assert.equal(Number(await raw.get('{multi}:sections')), 100, 'every section ran');
  assert.equal(Number(await raw.get('{multi}:breaches')), 0, 'no two sections shared a resource');
  assert.equal(await eachKey.exists(raw, 'lock:a', 'lock:b'), 0);
});

test('a lease over several resources: auto-extended, lost when one key is taken away, woken by a release of any', async () => {
  const lock = new Lock(server.url, { ttl: 400 });
  const other = new Lock(server.url);
  const held = await other.acquire('ls:z', { ttl: 10000 });
  assert.ok(held);
  const waiting = lock.acquireLease(['ls:a', 'ls:z'], { retryCount: Infinity, retryDelay: 5000, autoExtend: true });
  await sleep(300); // its first attempt found z held; it listens for a, z
  const releasedAt = Date.now();
  await other.release('ls:z', held);
  const lease = await waiting;
  assert.ok(lease);
  assert.ok(Date.now() - releasedAt < 2000, 'woken by the release of its second resource, not its 5 s poll');
  assert.equal(lease.resource, 'ls:a, ls:z');
  assert.deepEqual(lease.resources, ['ls:a', 'ls:z']);
  assert.equal(lease.fence, null, 'no fence for a lock over several resources');
  await sleep(1000);
  assert.equal(lease.signal.aborted, false, 'auto-extension keeps every key');
  assert.ok((await raw.pttl('lock:ls:a')) > 0 && (await raw.pttl('lock:ls:z')) > 0);
  await raw.del('lock:ls:z');
  await until('the loss to be noticed', 3000, () => lease.signal.aborted);
  assert.ok(lease.signal.reason instanceof LockLostError);
  assert.equal(lease.signal.reason.kind, 'not-owner');
  await sleep(500);
  assert.equal(await raw.exists('lock:ls:a'), 0, 'the other key runs out with its ttl');
  // using: released at the end, also when fn throws.
  const err = await lock.using(['u:1', 'u:2'], async () => {
    assert.equal(await eachKey.exists(raw, 'lock:u:1', 'lock:u:2'), 2);
    throw new Error('boom');
  }).catch((e) => e);
  assert.equal(err.message, 'boom');
  assert.equal(await eachKey.exists(raw, 'lock:u:1', 'lock:u:2'), 0);
  const blocker = await other.acquire('u:2');
  const refused = await lock.using(['u:1', 'u:2'], async () => 'never').catch((e) => e);
  assert.ok(refused instanceof LockAcquireError);
  assert.equal(refused.message, 'Failed to acquire lock on resource "u:1, u:2".');
  await other.release('u:2', /** @type {string} */ (blocker));
  await Promise.all([lock.close(), other.close()]);
});

test('a signal that aborts a waiting lock over several resources leaves nothing behind', async () => {
  const lock = new Lock(server.url);
  const other = new Lock(server.url);
  const held = await other.acquire('ab:b');
  const controller = new AbortController();
  const waiting = lock.acquire(['ab:a', 'ab:b'], { retryCount: Infinity, retryDelay: 50, signal: controller.signal });
  await sleep(200);
  controller.abort(new Error('stop'));
  await assert.rejects(waiting, /stop/);
  await other.release('ab:b', /** @type {string} */ (held));
  await sleep(200);
  assert.equal(await eachKey.exists(raw, 'lock:ab:a', 'lock:ab:b'), 0);
  await Promise.all([lock.close(), other.close()]);
});

test('bad input is refused before Redis; a Semaphore, a ReadWriteLock and Redlock refuse several resources', async () => {
  const lock = new Lock(server.url);
  await assert.rejects(lock.acquire([]), RangeError);
  await assert.rejects(lock.acquire(['a', /** @type {any} */ (1)]), (e) => e instanceof TypeError && /resource\[1\]/.test(e.message));
  await assert.rejects(lock.acquire(['a', '']), TypeError);
  // eslint-disable-next-line no-sparse-arrays
  await assert.rejects(lock.acquire(/** @type {any} */ (['a', , 'b'])), (e) => e instanceof TypeError && /resource\[1\]/.test(e.message));
  await assert.rejects(lock.acquire(new Array(2)), TypeError);
  await assert.rejects(lock.release(Array.from({ length: 1001 }, (_, i) => `r${i}`), 'f'.repeat(32)), RangeError);
  await assert.rejects(lock.isLocked(/** @type {any} */ (['a'])), TypeError);
  assert.equal(await eachKey.exists(raw, 'lock:a', 'lock:undefined'), 0, 'Redis unchanged');
  const sem = new Semaphore(server.url, { permits: 2 });
  await assert.rejects(sem.acquire(/** @type {any} */ (['a', 'b'])), LockUnsupportedError);
  const rw = new ReadWriteLock(server.url);
  await assert.rejects(rw.acquireRead(/** @type {any} */ (['a', 'b'])), LockUnsupportedError);
  await assert.rejects(rw.acquire(/** @type {any} */ (['a'])), LockUnsupportedError, 'an array, even of one, is for a Lock');
  await assert.rejects(sem.release(/** @type {any} */ (['a']), 'f'.repeat(32)), LockUnsupportedError);
  await Promise.all([lock.close(), sem.close(), rw.close()]);
  const masters = await startIndependentMasters(3);
  const redlock = new Lock(masters.map((m) => m.url));
  try {
    await assert.rejects(redlock.acquire(['a', 'b']), LockUnsupportedError);
    await assert.rejects(redlock.release(['a', 'b'], 'f'.repeat(32)), LockUnsupportedError);
  } finally {
    await redlock.close();
    await stopAll(masters);
  }
});

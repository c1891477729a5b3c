// @ts-check
// Semaphore: at most `permits` holders at once, each permit its own lease on the server's clock.

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { Lock, Semaphore, LockAcquireError, LockLostError, LockUnsupportedError } from 'simple-distributed-lock';
import { RedisServer } from './helpers/redis-server.mjs';
import { until } from './helpers/until.mjs';
import { runWorkers } from './helpers/workers.mjs';
import { startIndependentMasters, stopAll } from './helpers/topology.mjs';

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

test('3 permits, 6 processes x 30 sections: never more than 3 inside at once, every section ran', async () => {
  await raw.del('{sem}:inside', '{sem}:max', '{sem}:sections');
  await runWorkers(
    'semaphore-worker.mjs',
    Array.from({ length: 6 }, () => ({ url: server.url, resource: 'pool', permits: 3, sections: 30 })),
  );
  assert.equal(Number(await raw.get('{sem}:sections')), 180);
  const max = Number(await raw.get('{sem}:max'));
  assert.ok(max <= 3, `${max} sections inside at once`);
  assert.ok(max >= 2, `the permits were shared (at most ${max} inside at once)`);
  assert.equal(await raw.exists('semaphore:pool'), 0, 'nothing left once every permit is given back');
});

test('permits: taken up to the limit, counted, given back; the key expires with its last permit', async () => {
  const sem = new Semaphore(server.url, { permits: 2, ttl: 400 });
  const a = await sem.acquire('s1');
  const b = await sem.acquire('s1');
  assert.ok(a && b && a !== b);
  assert.equal(await sem.acquire('s1'), null, 'both permits are held');
  assert.equal(await sem.count('s1'), 2);
  assert.equal(await sem.isLocked('s1'), true);
  assert.equal(await sem.release('s1', a), true);
  assert.equal(await sem.release('s1', a), false, 'a permit is given back once');
  assert.equal(await sem.count('s1'), 1);
  const c = await sem.acquire('s1');
  assert.ok(c);
  assert.equal(await sem.extend('s1', c, 2000), true);
  assert.equal(await sem.extend('s1', 'f'.repeat(32), 2000), false, 'a token without a permit extends nothing');
  const pttl = await raw.pttl('semaphore:s1');
  assert.ok(pttl > 400 && pttl <= 2000, `the key lives as long as its longest permit (${pttl} ms)`);
  await sleep(600);
  assert.equal(await sem.count('s1'), 1, 'b ran out with its ttl, c was extended');
  assert.equal(await sem.release('s1', b), false, 'an expired permit is not released');
  assert.ok(await sem.acquire('s1', { ttl: 300 }), 'b\'s permit is free again');
  await sleep(2100);
  assert.equal(await raw.exists('semaphore:s1'), 0, 'the key is gone with its last permit');
  assert.equal(await sem.count('s1'), 0);
  assert.equal(await sem.isLocked('s1'), false);
  await sem.close();
});

test('a holder SIGKILLed frees its permit after its ttl', async () => {
  const holder = spawn(
    process.execPath,
    [fileURLToPath(new URL('./fixtures/semaphore-holder.mjs', import.meta.url)), JSON.stringify({ url: server.url, resource: 'crash', permits: 1, ttl: 800 })],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let out = '';
  holder.stdout.on('data', (d) => (out += d));
  try {
    await until('the holder to take its permit', 10000, () => out.includes('held'));
    const sem = new Semaphore(server.url, { permits: 1 });
    assert.equal(await sem.acquire('crash'), null);
    await sleep(1000); // auto-extended: still held after more than its ttl
    assert.equal(await sem.acquire('crash'), null, 'the live holder keeps its permit');
    holder.kill('SIGKILL');
    const killedAt = Date.now();
    const token = await sem.acquire('crash', { waitTimeout: 5000, retryDelay: 50 });
    const waited = Date.now() - killedAt;
    assert.ok(token, 'the permit came free');
    assert.ok(waited <= 800 + 1000, `within its ttl and a margin (${waited} ms)`);
    await sem.close();
  } finally {
    holder.kill('SIGKILL');
  }
});

test('a release wakes a waiter at once, not at its next poll (retryDelay 2000)', async () => {
  const holderSem = new Semaphore(server.url, { permits: 1 });
  const waiterSem = new Semaphore(server.url, { permits: 1 });
  await waiterSem.isLocked('wake'); // connections open
  const held = await holderSem.acquire('wake', { ttl: 10000 });
  assert.ok(held);
  let grantedAt = 0;
  const waiting = waiterSem.acquire('wake', { retryCount: Infinity, retryDelay: 2000 }).then((t) => {
    grantedAt = Date.now();
    return t;
  });
  await sleep(300); // the waiter's first attempt found it taken; it listens now
  const releasedAt = Date.now();
  assert.equal(await holderSem.release('wake', held), true);
  assert.ok(await waiting);
  console.log(`waiter woke ${grantedAt - releasedAt} ms after the release`);
  assert.ok(grantedAt - releasedAt < 1000, `woken by the release, not by its 2 s poll (${grantedAt - releasedAt} ms)`);
  await Promise.all([holderSem.close(), waiterSem.close()]);
});

test('each permit is its own lease: auto-extended, and its signal aborts when the permit is taken away', async () => {
  const sem = new Semaphore(server.url, { permits: 2, ttl: 300 });
  const lease = await sem.acquireLease('lease', { autoExtend: true });
  assert.ok(lease);
  assert.equal(lease.fence, null, 'permits carry no fence');
  await sleep(700);
  assert.equal(lease.signal.aborted, false, 'kept past its ttl by auto-extension');
  assert.equal(await sem.count('lease'), 1);
  await raw.zrem('semaphore:lease', lease.token);
  await until('the loss to be noticed', 3000, () => lease.signal.aborted);
  assert.ok(lease.signal.reason instanceof LockLostError);
  assert.equal(lease.signal.reason.kind, 'not-owner');
  await sem.close();
});

test('using: the callback runs with a permit; when none is free it throws LockAcquireError', async () => {
  const sem = new Semaphore(server.url, { permits: 1 });
  const inner = await sem.using('one', async (signal, lease) => {
    assert.equal(signal.aborted, false);
    assert.equal(await sem.count('one'), 1);
    const err = await sem.using('one', async () => 'never').catch((e) => e);
    assert.ok(err instanceof LockAcquireError);
    assert.equal(err.message, 'Failed to acquire lock on resource "one".');
    return lease.resource;
  });
  assert.equal(inner, 'one');
  assert.equal(await sem.count('one'), 0);
  await sem.close();
});

test('a semaphore and a lock on the same resource name do not collide (their keys differ)', async () => {
  const sem = new Semaphore(server.url, { permits: 1 });
  const lock = new Lock(server.url);
  const p = await sem.acquire('shared-name');
  const l = await lock.acquire('shared-name');
  assert.ok(p && l);
  assert.equal(await raw.type('semaphore:shared-name'), 'zset');
  assert.equal(await raw.type('lock:shared-name'), 'string');
  await Promise.all([sem.close(), lock.close()]);
});

test('bad options: permits is required, a positive integer; Redlock is refused', async () => {
  for (const permits of [undefined, '3', null]) {
    assert.throws(() => new Semaphore(server.url, /** @type {any} */ ({ permits })), (e) => e instanceof TypeError && /permits/.test(e.message));
  }
  for (const permits of [0, -1, 1.5, Infinity, 2 ** 31]) {
    assert.throws(() => new Semaphore(server.url, { permits }), (e) => e instanceof RangeError && /permits/.test(e.message));
  }
  assert.throws(() => new Semaphore(server.url, /** @type {any} */ (undefined)), TypeError);
  const masters = await startIndependentMasters(3);
  try {
    assert.throws(() => new Semaphore(masters.map((m) => m.url), { permits: 2 }), LockUnsupportedError);
  } finally {
    await stopAll(masters);
  }
});

// @ts-check
// Redlock over independent masters through the public API: exclusion across processes with 3
// and 5 masters, a master down, a majority down, a stopped master.

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { Lock, LockError } from 'simple-distributed-lock';
import { RedisServer } from './helpers/redis-server.mjs';
import { runWorkers } from './helpers/workers.mjs';

/** @type {RedisServer[]} */
let masters = [];
/** Holds the shared counter of the exclusion test. @type {RedisServer} */
let counterServer;

before(async () => {
  masters = await Promise.all(Array.from({ length: 5 }, () => RedisServer.start()));
  counterServer = await RedisServer.start();
});
after(async () => {
  await Promise.all([...masters, counterServer].map((s) => s.stop()));
});

/** @param {number} n */
const urls = (n) => masters.slice(0, n).map((m) => m.url);

for (const n of [3, 5]) {
  test(`${n} masters: 4 processes x 25 critical sections keep the shared counter exact`, async () => {
    const raw = counterServer.client();
    const prefix = `redlock${n}:`;
    await runWorkers(
      'counter-worker.mjs',
      Array.from({ length: 4 }, () => ({
        impl: 'v2',
        port: counterServer.port,
        resource: `counter-${n}`,
        iterations: 25,
        prefix,
        lockWith: urls(n),
      })),
    );
    assert.equal(Number(await raw.get(`${prefix}violations`) ?? 0), 0);
    assert.equal(Number(await raw.get(`${prefix}counter`)), 100);
  });
}

test('the lock is on every master, with ioredis instances, URLs and options mixed', async () => {
  const lock = new Lock([new Redis(masters[0].url, { lazyConnect: true }), masters[1].url, { port: masters[2].port }]);
  const lease = await lock.acquireLease('mixed');
  assert.ok(lease);
  for (const master of masters.slice(0, 3)) assert.equal(await master.client().get('lock:mixed'), lease.token);
  assert.equal(await new Lock(urls(3)).acquire('mixed'), null);
  assert.equal(await lease.release(), true);
  for (const master of masters.slice(0, 3)) assert.equal(await master.client().exists('lock:mixed'), 0);
});

test('one master down still acquires; a majority down fails with a quorum error naming them', async () => {
  const group = await Promise.all(Array.from({ length: 3 }, () => RedisServer.start()));
  try {
    const lock = new Lock(group.map((m) => m.url));
    await group[0].kill();
    const token = await lock.acquire('degraded');
    assert.ok(token, 'two of three masters suffice');
    assert.equal(await lock.release('degraded', token), true);

    await group[1].kill();
    const err = await lock.acquire('degraded').then(() => null, (e) => e);
    assert.ok(err instanceof LockError, String(err));
    assert.equal(err.name, 'LockQuorumError');
    assert.equal(err.code, 'ERR_LOCK_QUORUM');
    assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${group[0].port}`));
    assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${group[1].port}`));
    assert.equal(await group[2].client().exists('lock:degraded'), 0, 'the lone grant was released');
  } finally {
    await Promise.all(group.map((m) => m.stop()));
  }
});

test('a stopped master (SIGSTOP) does not hold an acquire up', async () => {
  const group = await Promise.all(Array.from({ length: 3 }, () => RedisServer.start()));
  try {
    // A long reply timeout: waiting for the stopped master would take at least 3 s.
    const lock = new Lock(group.map((m) => m.url), { commandTimeout: 3000 });
    assert.equal(await lock.isLocked('warm-up'), false);
    const pid = /** @type {number} */ (group[0].child?.pid);
    process.kill(pid, 'SIGSTOP');
    const started = Date.now();
    const token = await lock.acquire('slow-master', { ttl: 10000 }).finally(() => process.kill(pid, 'SIGCONT'));
    const elapsed = Date.now() - started;
    assert.ok(token);
    assert.ok(elapsed < 1500, `took ${elapsed} ms`);
  } finally {
    await Promise.all(group.map((m) => m.stop()));
  }
});

test('driftFactor shortens the validity time', async () => {
  const lock = new Lock(urls(3), { driftFactor: 0.2 });
  const lease = await lock.acquireLease('drift', { ttl: 1000 });
  assert.ok(lease);
  const left = lease.expiresAt - Date.now();
  assert.ok(left <= 1000 - 200 && left > 600, `${left} ms left`);
  await lease.release();
});

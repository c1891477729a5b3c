// @ts-check
// ReadWriteLock: many readers or one writer, each holder its own lease on the server's clock; a
// waiting writer keeps new readers out, so readers cannot starve it.

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { Lock, ReadWriteLock, LockAcquireError, LockLostError, LockUnsupportedError } from 'simple-distributed-lock';
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

/** Every key the read-write locks of `resource` left, with its ttl in ms (-1: none). */
async function keysOf(/** @type {string} */ resource) {
  const keys = await server.keys(`*rwlock:${resource}`);
  return Promise.all(keys.map(async (key) => /** @type {[string, number]} */ ([key, await raw.pttl(key)])));
}

test('4 processes x 40 sections, a quarter of them writes: readers overlap, a writer is always alone', async () => {
  await raw.del('{rw}:readers', '{rw}:writers', '{rw}:breaches', '{rw}:max-readers', '{rw}:read-sections', '{rw}:write-sections');
  await runWorkers(
    'rw-worker.mjs',
    Array.from({ length: 4 }, () => ({ url: server.url, resource: 'doc', sections: 40, writeShare: 0.25 })),
  );
  const [reads, writes, breaches, maxReaders] = (await raw.mget('{rw}:read-sections', '{rw}:write-sections', '{rw}:breaches', '{rw}:max-readers')).map(Number);
  assert.equal(reads + writes, 160, 'every section ran');
  assert.ok(writes > 0 && reads > 0, `both sides ran (${reads} reads, ${writes} writes)`);
  assert.equal(breaches, 0, 'no reader beside a writer, no writer beside anybody');
  assert.ok(maxReaders >= 2, `readers shared the lock (at most ${maxReaders} at once)`);
  assert.deepEqual(await keysOf('doc'), [], 'nothing left once every holder is gone');
});

test('sides: readers share, a writer waits for them; release, extend and count work on either side', async () => {
  const rw = new ReadWriteLock(server.url, { ttl: 2000 });
  const r1 = await rw.acquireRead('s1');
  const r2 = await rw.acquireRead('s1');
  assert.ok(r1 && r2 && r1.token !== r2.token);
  assert.equal(r1.fence, null, 'no fences on a read-write lock');
  assert.equal(await rw.count('s1'), 2);
  assert.equal(await rw.isLocked('s1'), true);
  assert.equal(await rw.acquireWrite('s1'), null, 'no writer while readers are inside');
  assert.equal(await rw.acquire('s1'), null, 'a plain acquire is the write side');
  assert.equal(await rw.extend('s1', r1.token, 5000), true);
  assert.equal(await rw.release('s1', r1.token), true);
  assert.equal(await rw.release('s1', r1.token), false, 'a side is given back once');
  assert.equal(await r2.release(), true);
  assert.equal(await rw.isLocked('s1'), false);
  const w = await rw.acquireWrite('s1');
  assert.ok(w);
  assert.equal(await rw.count('s1'), 1);
  assert.equal(await rw.acquireRead('s1'), null, 'no reader while a writer holds it');
  assert.equal(await rw.acquireWrite('s1'), null, 'one writer at a time');
  assert.equal(await rw.extend('s1', w.token, 3000), true);
  const writerKey = (await keysOf('s1')).find(([key]) => key.includes('rw-writer'));
  assert.ok(writerKey && writerKey[1] > 2000 && writerKey[1] <= 3000, `the writer's key has the ttl set (${writerKey})`);
  assert.equal(await rw.extend('s1', 'f'.repeat(32), 3000), false, 'a token holding nothing extends nothing');
  assert.equal(await w.release(), true);
  assert.equal(await rw.count('s1'), 0);
  assert.deepEqual(await keysOf('s1'), []);
  await rw.close();
});

test('a writer waiting behind a steady stream of readers gets in within 2 s; readers come back after it', async () => {
  const readers = new ReadWriteLock(server.url, { ttl: 5000 });
  const writer = new ReadWriteLock(server.url, { ttl: 5000 });
  await Promise.all([readers.isLocked('stream'), writer.isLocked('stream')]); // connections open
  let stop = false;
  let readsDone = 0;
  let readsAfterWrite = 0;
  let wroteAt = 0;
  // 4 overlapping readers at all times: each takes the read side for 150 ms, again and again.
  const stream = Array.from({ length: 4 }, async (_, i) => {
    await sleep(i * 40);
    while (!stop) {
      await readers.usingRead('stream', () => sleep(150), { retryCount: Infinity, retryDelay: 50 });
      readsDone++;
      if (wroteAt) readsAfterWrite++;
    }
  });
  await until('the readers to be inside', 5000, async () => (await readers.count('stream')) >= 2);
  const askedAt = Date.now();
  await writer.usingWrite(
    'stream',
    async () => {
      wroteAt = Date.now();
      assert.equal(await writer.count('stream'), 1, 'the writer is alone');
    },
    { retryCount: Infinity, retryDelay: 100 },
  );
  const waited = wroteAt - askedAt;
  console.log(`writer got in after ${waited} ms behind ${readsDone} reads`);
  assert.ok(waited < 2000, `the writer got in within 2 s (${waited} ms)`);
  await until('readers to come back after the writer', 5000, () => readsAfterWrite >= 4);
  stop = true;
  await Promise.all(stream);
  await Promise.all([readers.close(), writer.close()]);
});

test('a writer that stops waiting stops keeping readers out soon after', async () => {
  const rw = new ReadWriteLock(server.url, { ttl: 5000 });
  const reader = await rw.acquireRead('gave-up');
  assert.ok(reader);
  // The writer waits 300 ms (polling every 100 ms), then gives up.
  assert.equal(await rw.acquireWrite('gave-up', { waitTimeout: 300, retryDelay: 100 }), null);
  const gaveUpAt = Date.now();
  const second = await rw.acquireRead('gave-up', { retryCount: Infinity, retryDelay: 50 });
  const blocked = Date.now() - gaveUpAt;
  assert.ok(second, 'a reader got in');
  assert.ok(blocked < 1500, `the mark lapsed soon after the writer left (${blocked} ms)`);
  await Promise.all([reader.release(), second.release()]);
  const left = await keysOf('gave-up');
  assert.ok(left.every(([, ttl]) => ttl > 0), `whatever is left expires (${JSON.stringify(left)})`);
  await rw.close();
});

test('a release wakes waiters at once: the writer\'s wakes every waiting reader (retryDelay 2000)', async () => {
  const holder = new ReadWriteLock(server.url);
  const waiting = new ReadWriteLock(server.url);
  await waiting.isLocked('wake'); // connections open
  const w = await holder.acquireWrite('wake');
  assert.ok(w);
  const opts = { retryCount: Infinity, retryDelay: 2000 };
  const readers = [waiting.acquireRead('wake', opts), waiting.acquireRead('wake', opts), holder.acquireRead('wake', opts)];
  await sleep(300); // their first attempts found it taken; they listen now
  const releasedAt = Date.now();
  assert.equal(await w.release(), true);
  const leases = await Promise.all(readers);
  const woke = Date.now() - releasedAt;
  assert.ok(leases.every(Boolean));
  assert.ok(woke < 1000, `all woken by the release, not by their 2 s poll (${woke} ms)`);
  assert.equal(await holder.count('wake'), 3);
  // The last reader out wakes a waiting writer.
  const writing = holder.acquireWrite('wake', opts);
  await sleep(300);
  for (const lease of leases.slice(0, 2)) await lease?.release();
  await sleep(100);
  const lastOutAt = Date.now();
  await leases[2]?.release();
  assert.ok(await writing);
  assert.ok(Date.now() - lastOutAt < 1000, 'the writer was woken by the last reader out');
  await Promise.all([holder.close(), waiting.close()]);
});

test('each reader is its own lease: one runs out with its ttl, an auto-extended one stays, and loses its signal when taken away', async () => {
  const rw = new ReadWriteLock(server.url, { ttl: 300 });
  const short = await rw.acquireRead('leases');
  const kept = await rw.acquireRead('leases', { autoExtend: true });
  assert.ok(short && kept);
  await sleep(800);
  assert.equal(kept.signal.aborted, false, 'auto-extension renews a reader past its ttl');
  assert.equal(await rw.count('leases'), 1, 'the other reader ran out with its ttl');
  assert.equal(short.signal.aborted, true, 'its signal aborted at its deadline');
  assert.equal(await rw.release('leases', short.token), false, 'an expired side is not released');
  await raw.zrem('rwlock:leases', kept.token);
  await until('the loss to be noticed', 3000, () => kept.signal.aborted);
  assert.ok(kept.signal.reason instanceof LockLostError);
  assert.equal(kept.signal.reason.kind, 'not-owner');
  await sleep(400);
  assert.deepEqual(await keysOf('leases'), [], 'every key went with its holder');
  await rw.close();
});

test('usingRead / usingWrite: the callback runs on its side; a refused one throws LockAcquireError', async () => {
  const rw = new ReadWriteLock(server.url);
  const result = await rw.usingRead('using', async (signal, lease) => {
    assert.equal(signal.aborted, false);
    assert.equal(await rw.usingRead('using', async () => 'nested read'), 'nested read', 'readers share');
    const err = await rw.usingWrite('using', async () => 'never').catch((e) => e);
    assert.ok(err instanceof LockAcquireError);
    assert.equal(err.message, 'Failed to acquire lock on resource "using".');
    return lease.resource;
  });
  assert.equal(result, 'using');
  assert.equal(await rw.using('using', async () => rw.count('using')), 1, 'using is the write side, alone');
  assert.equal(await rw.isLocked('using'), false);
  await rw.close();
});

test('a read-write lock and a lock on the same resource name do not collide; bad input and Redlock are refused', async () => {
  const rw = new ReadWriteLock(server.url);
  const lock = new Lock(server.url);
  const r = await rw.acquireRead('shared-name');
  const l = await lock.acquire('shared-name');
  assert.ok(r && l);
  assert.equal(await raw.type('rwlock:shared-name'), 'zset');
  assert.equal(await raw.type('lock:shared-name'), 'string');
  await assert.rejects(rw.acquireRead(/** @type {any} */ (42)), TypeError);
  await assert.rejects(rw.acquireWrite('x', { ttl: -1 }), RangeError);
  await assert.rejects(rw.usingRead('x', /** @type {any} */ ('not a function')), TypeError);
  assert.throws(() => new ReadWriteLock(server.url, /** @type {any} */ ({ ttl: 'long' })), TypeError);
  assert.equal(await rw.count('x'), 0, 'Redis unchanged by rejected calls');
  await r.release();
  await Promise.all([rw.close(), lock.close()]);
  const masters = await startIndependentMasters(3);
  try {
    assert.throws(() => new ReadWriteLock(masters.map((m) => m.url)), LockUnsupportedError);
  } finally {
    await stopAll(masters);
  }
});

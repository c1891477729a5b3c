// @ts-check
// Every documented behaviour and default of the v1 API, with exact return values and PTTLs.

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { Lock, LockAcquireError, LockClosedError, LockError } from 'simple-distributed-lock';
import { RedisServer } from './helpers/redis-server.mjs';

/** @type {RedisServer} */
let server;
/** @type {import('ioredis').Redis} */
let raw;
/** @type {import('ioredis').Redis} */
let redis;

before(async () => {
  server = await RedisServer.start();
  raw = server.client();
  redis = server.client();
});
after(async () => {
  await server.stop();
});

/** Calls of one command so far, from INFO commandstats of every master. @param {string} command */
async function calls(command) {
  let total = 0;
  for (const info of await server.everyMaster('INFO', 'commandstats')) {
    const match = new RegExp(`cmdstat_${command}:calls=(\\d+)`).exec(String(info));
    total += match ? Number(match[1]) : 0;
  }
  return total;
}

test('acquire: a 32-hex token stored with SET PX 10000 NX under "lock:" by default', async () => {
  const lock = new Lock(redis);
  const token = await lock.acquire('defaults');
  assert.ok(token);
  assert.match(token, /^[0-9a-f]{32}$/);
  assert.equal(await raw.get('lock:defaults'), token);
  const pttl = await raw.pttl('lock:defaults');
  assert.ok(pttl > 9000 && pttl <= 10000, `pttl ${pttl}`);
  assert.equal(await lock.acquire('defaults'), null, 'held: a second acquire returns null');
  assert.equal(await raw.get('lock:defaults'), token, 'the failed acquire left the key alone');
});

test('acquire: per-call ttl, Lock ttl and prefix options', async () => {
  const lock = new Lock(redis, { ttl: 3000, prefix: 'jobs:' });
  const a = await lock.acquire('a');
  const pttlA = await raw.pttl('jobs:a');
  assert.ok(a && pttlA > 2000 && pttlA <= 3000, `pttl ${pttlA}`);
  const b = await lock.acquire('b', { ttl: 60000 });
  const pttlB = await raw.pttl('jobs:b');
  assert.ok(b && pttlB > 59000 && pttlB <= 60000, `pttl ${pttlB}`);
  assert.equal(await raw.exists('lock:a'), 0);
});

test('acquire: undefined (and null) options mean the defaults', async () => {
  const lock = new Lock(redis, { ttl: undefined, prefix: undefined });
  const token = await lock.acquire('undef', {
    ttl: undefined,
    retryCount: undefined,
    retryDelay: undefined,
    autoExtend: undefined,
  });
  assert.ok(token);
  assert.equal(await raw.get('lock:undef'), token);
  const pttl = await raw.pttl('lock:undef');
  assert.ok(pttl > 9000 && pttl <= 10000, `pttl ${pttl}`);
});

test('acquire: retryCount n waits n x retryDelay, attempting at least 1 + n times', async () => {
  const lock = new Lock(redis);
  assert.ok(await lock.acquire('retry-count'));
  const before = await calls('set');
  const started = Date.now();
  assert.equal(await lock.acquire('retry-count', { retryCount: 3, retryDelay: 100 }), null);
  const elapsed = Date.now() - started;
  // 1 + 3 timed attempts; v2 may add one free attempt when its release subscription starts.
  const attempts = (await calls('set')) - before;
  assert.ok(attempts >= 4 && attempts <= 5, `${attempts} attempts`);
  assert.ok(elapsed >= 290, `three delays of 100 ms, took ${elapsed} ms`);
  assert.ok(elapsed < 2000, `took ${elapsed} ms`);
});

test('acquire: the default is a single attempt', async () => {
  const lock = new Lock(redis);
  assert.ok(await lock.acquire('single'));
  const before = await calls('set');
  assert.equal(await lock.acquire('single'), null);
  assert.equal((await calls('set')) - before, 1);
});

test('acquire: retries take the lock once the holder releases; Infinity retries until then', async () => {
  const lock = new Lock(redis);
  const first = await lock.acquire('handover');
  assert.ok(first);
  const waiting = lock.acquire('handover', { retryCount: Infinity, retryDelay: 20 });
  await sleep(150);
  assert.equal(await lock.release('handover', first), true);
  const second = await waiting;
  assert.ok(second && second !== first);
  assert.equal(await raw.get('lock:handover'), second);
});

test('release: true for the owner, false for a wrong token or an expired lock', async () => {
  const lock = new Lock(redis);
  const token = await lock.acquire('rel', { ttl: 5000 });
  assert.ok(token);
  assert.equal(await lock.release('rel', 'ffffffffffffffffffffffffffffffff'), false);
  assert.equal(await raw.get('lock:rel'), token, 'a wrong token leaves the lock');
  assert.equal(await lock.release('rel', token), true);
  assert.equal(await raw.exists('lock:rel'), 0);
  assert.equal(await lock.release('rel', token), false, 'already released');

  const short = await lock.acquire('rel-expired', { ttl: 50 });
  assert.ok(short);
  await sleep(120);
  assert.equal(await lock.release('rel-expired', short), false);
});

test('extend: sets the TTL; defaults to the Lock ttl, not the acquire ttl', async () => {
  const lock = new Lock(redis, { ttl: 7000 });
  const token = await lock.acquire('ext', { ttl: 2000 });
  assert.ok(token);
  assert.equal(await lock.extend('ext', token, 15000), true);
  let pttl = await raw.pttl('lock:ext');
  assert.ok(pttl > 14000 && pttl <= 15000, `pttl ${pttl}`);
  assert.equal(await lock.extend('ext', token), true);
  pttl = await raw.pttl('lock:ext');
  assert.ok(pttl > 6000 && pttl <= 7000, `default ttl is the Lock's: pttl ${pttl}`);
});

test('extend: false for a wrong token or a lost lock, and never re-creates the key', async () => {
  const lock = new Lock(redis);
  const token = await lock.acquire('ext-lost', { ttl: 60 });
  assert.ok(token);
  assert.equal(await lock.extend('ext-lost', 'not-mine', 5000), false);
  await sleep(120);
  assert.equal(await lock.extend('ext-lost', token, 5000), false);
  assert.equal(await raw.exists('lock:ext-lost'), 0);
});

test('isLocked: true while anybody holds the resource', async () => {
  const lock = new Lock(redis);
  assert.equal(await lock.isLocked('is'), false);
  await raw.set('lock:is', 'someone', 'PX', 5000);
  assert.equal(await lock.isLocked('is'), true);
  await raw.del('lock:is');
  assert.equal(await lock.isLocked('is'), false);
});

test('using: returns fn result, passes (signal, lease), releases afterwards', async () => {
  const lock = new Lock(redis);
  /** @type {unknown[] | undefined} */
  let seenArgs;
  let heldInside = false;
  const result = await lock.using('use', async (...args) => {
    seenArgs = args;
    heldInside = (await raw.exists('lock:use')) === 1;
    return { success: true };
  });
  assert.deepEqual(result, { success: true });
  assert.equal(heldInside, true);
  assert.equal(await raw.exists('lock:use'), 0);
  assert.ok(seenArgs);
  const [signal, lease] = /** @type {[AbortSignal, import('simple-distributed-lock').Lease]} */ (seenArgs);
  assert.ok(signal instanceof AbortSignal);
  assert.equal(signal.aborted, false, 'a release is not a loss');
  assert.equal(lease.resource, 'use');
  assert.match(lease.token, /^[0-9a-f]{32}$/);
  assert.equal(typeof lease.fence, 'number');

  // A v1 callback that takes no arguments works unchanged.
  assert.equal(await lock.using('use', async () => 'v1 style'), 'v1 style');
});

test('using: releases when fn throws and rethrows fn error unchanged', async () => {
  const lock = new Lock(redis);
  const boom = new Error('boom');
  await assert.rejects(
    lock.using('use-throw', async () => {
      throw boom;
    }),
    (err) => err === boom,
  );
  assert.equal(await raw.exists('lock:use-throw'), 0);
});

test('using: throws v1 message when the lock cannot be acquired, without calling fn', async () => {
  const lock = new Lock(redis);
  await raw.set('lock:use-held', 'someone', 'PX', 5000);
  let called = false;
  const err = await lock
    .using('use-held', async () => {
      called = true;
    })
    .then(
      () => null,
      (e) => e,
    );
  assert.ok(err instanceof LockAcquireError);
  assert.ok(err instanceof LockError);
  assert.ok(err instanceof Error);
  assert.equal(err.message, 'Failed to acquire lock on resource "use-held".');
  assert.equal(err.code, 'ERR_LOCK_NOT_ACQUIRED');
  assert.equal(err.name, 'LockAcquireError');
  assert.equal(called, false);
  assert.equal(await raw.get('lock:use-held'), 'someone');
});

test('using: passes retry options to acquire', async () => {
  const lock = new Lock(redis);
  const holder = await lock.acquire('use-retry', { ttl: 5000 });
  assert.ok(holder);
  setTimeout(() => void lock.release('use-retry', holder), 150);
  const result = await lock.using('use-retry', async () => 42, { retryCount: 50, retryDelay: 20 });
  assert.equal(result, 42);
});

test('autoExtend: refreshes every floor(ttl/2) ms by the acquire ttl until release', async () => {
  const lock = new Lock(redis);
  const token = await lock.acquire('auto', { ttl: 400, autoExtend: true });
  assert.ok(token);
  await sleep(1300);
  assert.equal(await raw.get('lock:auto'), token, 'held after more than three ttls');
  const pttl = await raw.pttl('lock:auto');
  assert.ok(pttl > 0 && pttl <= 400, `extended by its own ttl: ${pttl}`);
  assert.equal(await lock.release('auto', token), true);
  await sleep(500);
  assert.equal(await raw.exists('lock:auto'), 0, 'no refresh after release');
});

test('autoExtend: stops when another owner took the key, and does not touch it', async () => {
  const lock = new Lock(redis);
  const token = await lock.acquire('auto-stolen', { ttl: 300, autoExtend: true });
  assert.ok(token);
  await raw.set('lock:auto-stolen', 'thief', 'PX', 60000);
  await sleep(700);
  assert.equal(await raw.get('lock:auto-stolen'), 'thief');
  const pttl = await raw.pttl('lock:auto-stolen');
  assert.ok(pttl > 58000, `the other owner's ttl is untouched: ${pttl}`);
  assert.equal(await lock.release('auto-stolen', token), false);
});

test('close: later calls reject with LockClosedError; close is idempotent', async () => {
  const lock = new Lock(redis);
  await lock.close();
  await lock.close();
  await assert.rejects(lock.acquire('closed'), (err) => {
    assert.ok(err instanceof LockClosedError);
    assert.equal(err.code, 'ERR_LOCK_CLOSED');
    return true;
  });
  assert.equal(await raw.exists('lock:closed'), 0);
});

test('close: stops a forever-retrying acquire and auto-extension', async () => {
  const lock = new Lock(redis);
  const token = await lock.acquire('close-auto', { ttl: 300, autoExtend: true });
  assert.ok(token);
  const other = new Lock(redis);
  const waiting = other.acquire('close-auto', { retryCount: Infinity, retryDelay: 20 });
  await sleep(50);
  await other.close();
  await assert.rejects(waiting, LockClosedError);
  await lock.close();
  await sleep(600);
  assert.equal(await raw.exists('lock:close-auto'), 0, 'no refresh after close: the lock expired');
});

test('Symbol.asyncDispose closes the Lock', async () => {
  const lock = new Lock(redis);
  await lock[Symbol.asyncDispose]();
  await assert.rejects(lock.isLocked('x'), LockClosedError);
});

test('Lock instances share nothing: two Locks on one Redis exclude each other', async () => {
  const a = new Lock(redis);
  const b = new Lock(server.client({ lazyConnect: true }));
  const token = await a.acquire('shared');
  assert.ok(token);
  assert.equal(await b.acquire('shared'), null);
  assert.equal(await b.release('shared', 'other'), false);
  assert.equal(await a.release('shared', token), true);
  assert.ok(await b.acquire('shared'));
});

test('scripts flushed from Redis (a restart, SCRIPT FLUSH): calls load them again', async () => {
  const lock = new Lock(redis);
  // Warm up, so that both the engine and its event-loop lane have sent the scripts before.
  for (let i = 0; i < 3; i++) {
    const t = await lock.acquire('flushed');
    assert.ok(t);
    assert.equal(await lock.release('flushed', t), true);
  }
  const token = await lock.acquire('flushed', { ttl: 5000 });
  assert.ok(token);
  await server.everyMaster('SCRIPT', 'FLUSH');
  assert.equal(await lock.extend('flushed', token, 9000), true);
  const pttl = await raw.pttl('lock:flushed');
  assert.ok(pttl > 8000, `pttl ${pttl}`);
  await server.everyMaster('SCRIPT', 'FLUSH');
  assert.equal(await lock.release('flushed', token), true);
  await server.everyMaster('SCRIPT', 'FLUSH');
  const again = await lock.acquire('flushed');
  assert.ok(again);
  assert.equal(await lock.release('flushed', again), true);
});

test('many calls at once on one Lock settle, each with its own answer', async () => {
  const lock = new Lock(redis);
  const tokens = await Promise.all(Array.from({ length: 500 }, (_, i) => lock.acquire(`burst:${i % 250}`)));
  const granted = tokens.filter((t) => t !== null);
  assert.equal(granted.length, 250, 'each of 250 keys granted once');
  const released = await Promise.all(tokens.map((t, i) => (t ? lock.release(`burst:${i % 250}`, t) : Promise.resolve(false))));
  assert.equal(released.filter(Boolean).length, 250);
  assert.equal((await server.keys('lock:burst:*')).length, 0);
});

test('loops that chain calls as replies arrive all see their own answers', async () => {
  // 128 loops on distinct keys: each reply's continuation sends the next call while the
  // replies that came with it are still being settled.
  const lock = new Lock(redis);
  let pairs = 0;
  await Promise.all(
    Array.from({ length: 128 }, async (_, i) => {
      for (let round = 0; round < 20; round++) {
        const token = await lock.acquire(`chain:${i}`, { ttl: 5000 });
        assert.ok(token, `loop ${i} round ${round}: the key is free`);
        assert.equal(await lock.isLocked(`chain:${i}`), true);
        assert.equal(await lock.release(`chain:${i}`, token), true);
        pairs++;
      }
    }),
  );
  assert.equal(pairs, 128 * 20);
  assert.equal((await server.keys('lock:chain:*')).length, 0);
  await lock.close();
});

test('close() from a continuation in the middle of a burst: every call still settles', async () => {
  const lock = new Lock(redis);
  let closing;
  const calls = Array.from({ length: 300 }, (_, i) =>
    lock.acquire(`midclose:${i}`, { ttl: 2000 }).then(
      (token) => {
        if (i === 40) closing = lock.close();
        return token;
      },
      (err) => err,
    ),
  );
  const settled = await Promise.race([
    Promise.all(calls),
    sleep(10_000).then(() => assert.fail('calls still pending 10 s after close()')),
  ]);
  for (const outcome of settled) {
    assert.ok(typeof outcome === 'string' || outcome instanceof LockClosedError, String(outcome));
  }
  assert.ok(closing, 'the 41st acquire resolved');
  await closing;
  await assert.rejects(lock.acquire('midclose:after'), LockClosedError);
});

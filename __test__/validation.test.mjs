// @ts-check
// Bad input: a TypeError or RangeError naming the argument, before any Redis call; Redis unchanged.

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Lock, LockUnsupportedError } from 'simple-distributed-lock';
import { RedisServer } from './helpers/redis-server.mjs';

/** @type {RedisServer} */
let server;
/** @type {import('ioredis').Redis} */
let raw;
/** @type {Lock} */
let lock;
/** @type {string} */
let token;

before(async () => {
  server = await RedisServer.start();
  raw = server.client();
  lock = new Lock(server.client());
  token = /** @type {string} */ (await lock.acquire('held', { ttl: 60000 }));
});
after(async () => {
  await server.stop();
});

/** Everything Redis has executed so far (commands of our own checks excluded by the caller). */
async function totalCalls() {
  const info = await raw.info('commandstats');
  let total = 0;
  for (const match of info.matchAll(/^cmdstat_(\w+):calls=(\d+)/gm)) {
    if (match[1] !== 'info') total += Number(match[2]);
  }
  return total;
}

/** Any value, to get past the type checker on purpose. @param {unknown} value @returns {any} */
const bad = (value) => value;

/**
 * @param {() => Promise<unknown>} call
 * @param {typeof TypeError | typeof RangeError} kind
 * @param {RegExp} message
 */
async function rejectsWithoutRedis(call, kind, message) {
  const before = await totalCalls();
  await assert.rejects(call, (err) => {
    assert.ok(err instanceof kind, `expected ${kind.name}, got ${err}`);
    assert.match(/** @type {Error} */ (err).message, message);
    return true;
  });
  assert.equal(await totalCalls(), before, 'no command reached Redis');
}

const badResources = [
  [undefined, TypeError],
  [null, TypeError],
  [42, TypeError],
  ['', TypeError],
  [{}, TypeError],
];

test('resource must be a non-empty string, for every method', async () => {
  for (const [resource, kind] of badResources) {
    const r = bad(resource);
    const k = /** @type {typeof TypeError} */ (kind);
    await rejectsWithoutRedis(() => lock.acquire(r), k, /^resource must be a non-empty string/);
    await rejectsWithoutRedis(() => lock.release(r, token), k, /^resource must be a non-empty string/);
    await rejectsWithoutRedis(() => lock.extend(r, token), k, /^resource must be a non-empty string/);
    await rejectsWithoutRedis(() => lock.isLocked(r), k, /^resource must be a non-empty string/);
    await rejectsWithoutRedis(() => lock.using(r, async () => 1), k, /^resource must be a non-empty string/);
  }
});

test('ttl must be a positive integer of ms up to 2^31-1', async () => {
  for (const ttl of [0, -1, 1.5, NaN, Infinity, 2 ** 31]) {
    await rejectsWithoutRedis(() => lock.acquire('x', { ttl }), RangeError, /^ttl must be a positive integer of ms/);
    await rejectsWithoutRedis(() => lock.extend('held', token, ttl), RangeError, /^ttl must be a positive integer of ms/);
    assert.throws(() => new Lock(server.url, { ttl }), RangeError);
  }
  for (const ttl of ['1000', true, {}]) {
    await rejectsWithoutRedis(() => lock.acquire('x', { ttl: bad(ttl) }), TypeError, /^ttl must be/);
  }
  const pttl = await raw.pttl('lock:held');
  assert.ok(pttl > 50000, 'the held lock kept its ttl');
});

test('retryCount must be a non-negative integer or Infinity', async () => {
  for (const retryCount of [-1, 1.5, NaN, -Infinity]) {
    await rejectsWithoutRedis(() => lock.acquire('x', { retryCount }), RangeError, /^retryCount must be a non-negative integer or Infinity/);
  }
  await rejectsWithoutRedis(() => lock.acquire('x', { retryCount: bad('3') }), TypeError, /^retryCount must be/);
});

test('retryDelay must be a non-negative finite number', async () => {
  for (const retryDelay of [-1, NaN, Infinity]) {
    await rejectsWithoutRedis(() => lock.acquire('x', { retryDelay }), RangeError, /^retryDelay must be a non-negative finite number/);
  }
  await rejectsWithoutRedis(() => lock.acquire('x', { retryDelay: bad('200') }), TypeError, /^retryDelay must be/);
});

test('autoExtend must be a boolean; options must be an object', async () => {
  await rejectsWithoutRedis(() => lock.acquire('x', { autoExtend: bad('yes') }), TypeError, /^autoExtend must be a boolean/);
  await rejectsWithoutRedis(() => lock.acquire('x', bad('fast')), TypeError, /^opts must be an object/);
});

test('token must be a string', async () => {
  for (const t of [undefined, null, 1, {}]) {
    await rejectsWithoutRedis(() => lock.release('held', bad(t)), TypeError, /^token must be a string/);
    await rejectsWithoutRedis(() => lock.extend('held', bad(t)), TypeError, /^token must be a string/);
  }
  assert.equal(await raw.get('lock:held'), token);
});

test('fn must be a function, checked before acquiring', async () => {
  await rejectsWithoutRedis(() => lock.using('x', bad(undefined)), TypeError, /^fn must be a function/);
  await rejectsWithoutRedis(() => lock.using('x', bad('not a fn')), TypeError, /^fn must be a function/);
  assert.equal(await raw.exists('lock:x'), 0);
});

test('constructor: prefix must be a string; options an object', () => {
  assert.throws(() => new Lock(server.url, { prefix: bad(5) }), { name: 'TypeError', message: /^prefix must be a string/ });
  assert.throws(() => new Lock(server.url, bad('ttl')), { name: 'TypeError', message: /^options must be an object/ });
  assert.throws(() => new Lock(server.url, { connectTimeout: 0 }), { name: 'RangeError', message: /^connectTimeout/ });
  assert.throws(() => new Lock(server.url, { commandTimeout: -5 }), { name: 'RangeError', message: /^commandTimeout/ });
});

test('constructor: redis must be an ioredis instance, a URL or an options object', () => {
  for (const value of [undefined, null, 42, true]) {
    assert.throws(() => new Lock(bad(value)), { name: 'TypeError', message: /^redis must be an ioredis instance \(Redis or Cluster\), a redis:\/\/ \/ rediss:\/\/ \/ redis\+sentinel:\/\/ URL, an options object, or an array of them for Redlock/ });
  }
  assert.throws(() => new Lock('http://example.com'), { name: 'TypeError', message: /URL scheme "http:" is not supported/ });
  assert.throws(() => new Lock({ port: 70000 }), { name: 'TypeError', message: /^redis\.port must be an integer from 1 to 65535/ });
  assert.throws(() => new Lock({ db: -1 }), { name: 'TypeError', message: /^redis\.db/ });
});

test('constructor: a malformed URL is refused without echoing it (it may hold a password)', () => {
  assert.throws(
    () => new Lock('redis://user:hunter2@[bad'),
    (err) => {
      assert.ok(err instanceof TypeError);
      assert.ok(!err.message.includes('hunter2'), err.message);
      assert.ok(!String(err.stack).includes('hunter2'));
      return true;
    },
  );
});

test('constructor: deployment descriptions that cannot work are refused', async () => {
  const { Cluster } = await import('ioredis');
  assert.throws(() => new Lock([server.url]), { name: 'RangeError', message: /^redis must be an array of at least 2 independent masters/ });
  const cluster = new Cluster([{ host: '127.0.0.1', port: 1 }], { lazyConnect: true });
  assert.throws(() => new Lock([server.url, cluster]), (err) => {
    assert.ok(err instanceof LockUnsupportedError);
    assert.equal(err.code, 'ERR_LOCK_UNSUPPORTED');
    assert.match(err.message, /^redis\[1\]: each Redlock master must be a single server/);
    return true;
  });
  assert.throws(() => new Lock({ cluster: [] }), { name: 'TypeError', message: /at least one startup node/ });
  assert.throws(() => new Lock({ cluster: ['127.0.0.1:7000'], db: 2 }), { name: 'TypeError', message: /^redis\.db: Redis Cluster has only database 0/ });
  assert.throws(() => new Lock(bad({ sentinels: [{ host: '127.0.0.1', port: 26379 }] })), { name: 'TypeError', message: /^redis\.name must be the Sentinel master's name/ });
  assert.throws(() => new Lock('redis+sentinel://:pw@/mymaster'), (err) => {
    assert.ok(err instanceof TypeError);
    assert.ok(!err.message.includes('pw'), err.message);
    return true;
  });
  assert.throws(() => new Lock(server.url, { driftFactor: 0.5 }), { name: 'RangeError', message: /^driftFactor/ });
  await assert.rejects(lock.acquire('x', { replicas: { count: 0 } }), { name: 'RangeError', message: /^replicas\.count must be a positive integer/ });
  cluster.disconnect();
});

test('the process survives every rejected call and the Lock still works', async () => {
  assert.equal(await lock.isLocked('held'), true);
  const t = await lock.acquire('after-bad-input', { ttl: 1000 });
  assert.ok(t);
  assert.equal(await lock.release('after-bad-input', t), true);
});

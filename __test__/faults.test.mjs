// @ts-check
// Network faults between the Lock and a real Redis, through the fault proxy: latency, connection
// resets, replies lost and partitions. What is checked is the lock's state on the real server
// (a raw client connected directly, not through the proxy), not only what the Lock says.
// The event-loop lane is on unless SDL_EVENT_LOOP_LANE=0 (the test runner runs it both ways).

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { Lock, LockConnectionError } from 'simple-distributed-lock';
import { RedisServer } from './helpers/redis-server.mjs';
import { FaultProxy } from './helpers/fault-proxy.mjs';
import { fenceKey } from './helpers/fences.mjs';

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

const lane = process.env.SDL_EVENT_LOOP_LANE === '0' ? 'off' : 'on';

/**
 * What a call settled with, as a value or a readable error line (for assertion messages).
 * @param {Promise<unknown>} promise
 */
async function settle(promise) {
  try {
    return await promise;
  } catch (err) {
    const e = /** @type {any} */ (err);
    return `rejected: ${e?.name} ${e?.code ?? ''}: ${e?.message ?? e}`;
  }
}

/**
 * Polls until the key is gone or `ms` passed; returns how long it took, or -1 if it stayed.
 * @param {string} key @param {number} ms
 */
async function goneWithin(key, ms) {
  const started = Date.now();
  for (;;) {
    if ((await raw.exists(key)) === 0) return Date.now() - started;
    if (Date.now() - started >= ms) return -1;
    await sleep(50);
  }
}

/** Loads the acquire and release scripts on the server, over `lock`'s own connection. @param {Lock} lock @param {string} resource */
async function warmUp(lock, resource) {
  const token = await lock.acquire(resource);
  assert.ok(token, 'warm-up acquire');
  assert.equal(await lock.release(resource, token), true, 'warm-up release');
}

test(`150 ms latency each way from the first call: an auto-extended lease (ttl 1500) survives 4 s (lane ${lane})`, async () => {
  const proxy = await FaultProxy.start({ port: server.port });
  proxy.latency(150);
  /** @type {string[]} */
  const lost = [];
  const created = Date.now();
  const lock = new Lock(proxy.url, {
    commandTimeout: 2000,
    connectTimeout: 2000,
    onLockLost: (info) => {
      lost.push(`${Date.now() - created} ms after new Lock: ${String(info.reason)}`);
    },
  });
  const resource = `faults:latency:${lane}`;
  try {
    const token = await lock.acquire(resource, { ttl: 1500, autoExtend: true });
    const acquired = Date.now() - created;
    assert.ok(token, 'acquired through 300 ms round trips');
    for (let second = 1; second <= 4; second++) {
      await sleep(1000);
      assert.equal(await raw.get(`lock:${resource}`), token, `the key still holds the token after ${second} s`);
      assert.deepEqual(lost, [], `onLockLost was called, ${second} s after the acquire resolved (${acquired} ms after new Lock)`);
    }
    assert.equal(await settle(lock.release(resource, token)), true);
    assert.equal(await raw.exists(`lock:${resource}`), 0);
    assert.deepEqual(lost, [], 'onLockLost was called');
  } finally {
    await lock.close();
    await proxy.stop();
  }
});

test(`two connection resets 1 s apart: the auto-extended lease (ttl 2000) is kept, calls 100 ms after each reset succeed (lane ${lane})`, async (t) => {
  const proxy = await FaultProxy.start({ port: server.port });
  /** @type {string[]} */
  const lost = [];
  const created = Date.now();
  const lock = new Lock(proxy.url, {
    onLockLost: (info) => {
      lost.push(`${Date.now() - created} ms after new Lock: ${String(info.reason)}`);
    },
  });
  const resource = `faults:cut:${lane}`;
  const key = `lock:${resource}`;
  try {
    const token = await lock.acquire(resource, { ttl: 2000, autoExtend: true });
    assert.ok(token);
    const acquiredAt = Date.now();
    /** @type {string[]} */
    const problems = [];
    for (const cut of [1, 2]) {
      const cutAt = Date.now();
      proxy.cut();
      await sleep(100);
      const locked = await settle(lock.isLocked(resource));
      if (locked !== true) problems.push(`isLocked 100 ms after cut ${cut}: ${JSON.stringify(locked)}`);
      const extended = await settle(lock.extend(resource, token, 2000));
      if (extended !== true) problems.push(`extend after cut ${cut}: ${JSON.stringify(extended)}`);
      await sleep(Math.max(0, cutAt + 1000 - Date.now()));
    }
    await sleep(Math.max(0, acquiredAt + 4000 - Date.now()));
    const holder = await raw.get(key);
    if (holder !== token) problems.push(`after 4 s the key holds ${JSON.stringify(holder)}, not the token`);
    if (lost.length > 0) problems.push(`onLockLost was called: ${lost.join('; ')} (cuts at 0 and 1000 ms after the acquire, ${acquiredAt - created} ms after new Lock)`);
    t.diagnostic(`connections through the proxy: ${proxy.connections}`);
    assert.deepEqual(problems, []);
    assert.equal(await settle(lock.release(resource, token)), true);
    assert.equal(await raw.exists(key), 0);
  } finally {
    await lock.close();
    await proxy.stop();
  }
});

test(`an acquire whose reply is lost ('down' blackhole): it rejects, and once healed the lock is given back (lane ${lane})`, async (t) => {
  const proxy = await FaultProxy.start({ port: server.port });
  const lock = new Lock(proxy.url, { commandTimeout: 500, connectTimeout: 500 });
  const resource = `faults:down:${lane}`;
  const key = `lock:${resource}`;
  try {
    await warmUp(lock, `${resource}:warm`);
    const counter = fenceKey(key);
    const fencesBefore = Number((await raw.get(counter)) ?? 0);
    proxy.blackhole('down');
    const started = Date.now();
    const result = await lock.acquire(resource, { ttl: 30000 }).then((v) => v, (e) => e);
    const elapsed = Date.now() - started;
    assert.ok(result instanceof LockConnectionError, `a LockTimeoutError or LockConnectionError, got ${String(result)}`);
    assert.ok(elapsed < 500 + 3000, `rejected after ${elapsed} ms`);
    // The premise: the server did execute the acquire (its script counts the fence on success).
    assert.equal(Number(await raw.get(counter)), fencesBefore + 1, 'the server ran the acquire whose reply was lost');
    proxy.heal();
    const gone = await goneWithin(key, 3000);
    assert.ok(gone >= 0, `the key (ttl 30 s) still holds ${JSON.stringify(await raw.get(key))} 3 s after the heal: the lock of an unknown acquire was not given back`);
    t.diagnostic(`key gone ${gone} ms after the heal`);
    const again = await settle(lock.acquire(resource, { ttl: 30000 }));
    assert.equal(typeof again, 'string', `the Lock acquires again after the heal: ${JSON.stringify(again)}`);
    assert.equal(await settle(lock.release(resource, /** @type {string} */ (again))), true);
  } finally {
    await lock.close();
    await proxy.stop();
  }
});

test(`an acquire sent into a partition ('both' blackhole): no key is left 3 s after the heal (lane ${lane})`, async (t) => {
  const proxy = await FaultProxy.start({ port: server.port });
  const lock = new Lock(proxy.url, { commandTimeout: 500, connectTimeout: 500 });
  const resource = `faults:both:${lane}`;
  const key = `lock:${resource}`;
  try {
    await warmUp(lock, `${resource}:warm`);
    proxy.blackhole('both');
    const started = Date.now();
    const result = await lock.acquire(resource, { ttl: 30000 }).then((v) => v, (e) => e);
    const elapsed = Date.now() - started;
    assert.ok(result instanceof LockConnectionError, `a LockTimeoutError or LockConnectionError, got ${String(result)}`);
    assert.ok(elapsed < 500 + 3000, `rejected after ${elapsed} ms`);
    assert.equal(await raw.exists(key), 0, 'nothing reached the server during the partition');
    // The held bytes (the acquire included) reach the server now, as after a real partition.
    proxy.heal();
    await sleep(3000);
    const holder = await raw.get(key);
    t.diagnostic(`fence counter after the heal: ${JSON.stringify(await raw.get(fenceKey(key)))}`);
    assert.equal(holder, null, `3 s after the heal the key (ttl 30 s) still holds ${JSON.stringify(holder)}`);
    const again = await settle(lock.acquire(resource, { ttl: 30000 }));
    assert.equal(typeof again, 'string', `the Lock acquires again after the heal: ${JSON.stringify(again)}`);
    assert.equal(await settle(lock.release(resource, /** @type {string} */ (again))), true);
  } finally {
    await lock.close();
    await proxy.stop();
  }
});

test(`a waiter partitioned while it waits ('both' blackhole): it settles within its waitTimeout and a command timeout, and waits again after the heal (lane ${lane})`, async () => {
  const proxy = await FaultProxy.start({ port: server.port });
  const waiter = new Lock(proxy.url, { commandTimeout: 500, connectTimeout: 500 });
  const holder = new Lock(server.url);
  const resource = `faults:waiter:${lane}`;
  try {
    await warmUp(waiter, `${resource}:warm`);
    const held = await holder.acquire(resource, { ttl: 30000 });
    assert.ok(held);
    const started = Date.now();
    const waiting = settle(waiter.acquire(resource, { waitTimeout: 1500, retryDelay: 100 }));
    await sleep(300); // it found the lock held and waits, polling
    proxy.blackhole('both');
    const result = await waiting;
    const elapsed = Date.now() - started;
    // Either the wait ran out (null) or a poll timed out in the partition (a connection error).
    assert.ok(result === null || (typeof result === 'string' && result.startsWith('rejected: LockTimeoutError')) || (typeof result === 'string' && result.startsWith('rejected: LockConnectionError')), `settled with ${JSON.stringify(result)}`);
    assert.ok(elapsed < 1500 + 500 + 1500, `settled after ${elapsed} ms (waitTimeout 1500, commandTimeout 500)`);
    proxy.heal();
    await holder.release(resource, held);
    const again = await settle(waiter.acquire(resource, { waitTimeout: 3000, retryDelay: 100 }));
    assert.equal(typeof again, 'string', `the waiter takes the lock after the heal: ${JSON.stringify(again)}`);
    assert.match(/** @type {string} */ (again), /^[0-9a-f]{32}$/);
    await waiter.release(resource, /** @type {string} */ (again));
  } finally {
    await Promise.all([waiter.close(), holder.close()]);
    await proxy.stop();
  }
});

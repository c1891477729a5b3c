// @ts-check
// Safe leases: the lost-lock signal, onLockLost, fencing tokens, bounded and abortable waits,
// hand-over by notification. Real Redis servers; generous time bounds, no timing goals.

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { performance } from 'node:perf_hooks';
import { Lock, LockLostError, LockError } from 'simple-distributed-lock';
import { RedisServer, eachKey } from './helpers/redis-server.mjs';
import { runWorkers } from './helpers/workers.mjs';
import { writeWithFence } from './helpers/fenced-store.mjs';
import { fenceKey, slot } from './helpers/fences.mjs';

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

/** Resolves when `signal` aborts, or rejects after `ms`. @param {AbortSignal} signal @param {number} ms */
function aborted(signal, ms) {
  if (signal.aborted) return Promise.resolve(signal.reason);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`signal did not abort within ${ms} ms`)), ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve(signal.reason);
    });
  });
}

test('using + autoExtend: the signal aborts when the key is deleted under fn', async () => {
  const lock = new Lock(server.url);
  const result = await lock.using(
    'deleted',
    async (signal) => {
      await raw.del('lock:deleted');
      const reason = await aborted(signal, 3000);
      assert.ok(signal.aborted);
      assert.ok(reason instanceof LockLostError);
      assert.ok(reason instanceof LockError);
      assert.equal(reason.code, 'ERR_LOCK_LOST');
      assert.equal(reason.kind, 'not-owner');
      assert.equal(reason.resource, 'deleted');
      assert.match(reason.message, /^The lock on resource "deleted" was lost/);
      return 'noticed';
    },
    { ttl: 300, autoExtend: true },
  );
  assert.equal(result, 'noticed');
});

test('using + autoExtend: the signal aborts when another owner overwrote the key', async () => {
  const lock = new Lock(server.url);
  await lock.using(
    'overwritten',
    async (signal, lease) => {
      await raw.set('lock:overwritten', 'intruder', 'PX', 60000);
      const reason = await aborted(signal, 3000);
      assert.ok(reason instanceof LockLostError);
      assert.equal(reason.token, lease.token);
    },
    { ttl: 300, autoExtend: true },
  );
  assert.equal(await raw.get('lock:overwritten'), 'intruder', "the release did not touch the intruder's key");
});

test('using + autoExtend: a killed server aborts the signal within ttl plus a second', async () => {
  const victim = await RedisServer.start();
  try {
    const lock = new Lock(victim.url);
    const ttl = 1000;
    let killedAt = 0;
    await lock.using(
      'killed',
      async (signal) => {
        await victim.kill();
        killedAt = Date.now();
        const reason = await aborted(signal, ttl + 3000);
        assert.ok(Date.now() - killedAt <= ttl + 1000, `aborted ${Date.now() - killedAt} ms after the kill`);
        assert.ok(reason instanceof LockLostError);
        assert.equal(reason.kind, 'unreachable');
      },
      { ttl, autoExtend: true },
    ).catch((err) => {
      // The release after fn cannot reach the dead server either.
      assert.equal(err.code, 'ERR_LOCK_CONNECTION');
    });
    assert.ok(killedAt > 0);
  } finally {
    await victim.stop();
  }
});

test('using without autoExtend: the signal aborts at the deadline (ttl minus the margin)', async () => {
  const lock = new Lock(server.url);
  await lock.isLocked('deadline'); // the connection is open: the SET goes out at once
  const started = Date.now();
  const startedMono = performance.now();
  await lock.using(
    'deadline',
    async (signal, lease) => {
      // The deadline, on the monotonic clock: before the ttl ends (by the margin, 1% + 2 ms, less
      // the few ms the SET took to go out).
      const deadline = performance.now() + lease.remainingMs - startedMono;
      assert.ok(deadline <= 1000 && deadline >= 900, `deadline ${deadline} ms after the call`);
      // expiresAt is the same deadline on the wall clock, which this machine may step meanwhile.
      assert.ok(Math.abs(lease.expiresAt - (started + deadline)) < 100, `expiresAt ${lease.expiresAt - started}`);
      const reason = await aborted(signal, 5000);
      const at = Date.now() - started;
      assert.ok(at >= 950 && at < 2500, `aborted after ${at} ms`);
      assert.ok(reason instanceof LockLostError);
      assert.equal(reason.kind, 'expired');
    },
    { ttl: 1000 },
  );
});

test('acquireLease: fields, extend moves expiresAt, release, and a release is not a loss', async () => {
  const lock = new Lock(server.url, { ttl: 2000 });
  const lease = await lock.acquireLease('lease-fields');
  assert.ok(lease);
  assert.equal(lease.resource, 'lease-fields');
  assert.equal(await raw.get('lock:lease-fields'), lease.token);
  assert.ok(Number.isInteger(lease.fence) && /** @type {number} */ (lease.fence) >= 1);
  assert.equal(Number(await raw.get(fenceKey('lock:lease-fields'))), lease.fence);
  const first = lease.expiresAt;
  assert.ok(first > Date.now() + 1500 && first <= Date.now() + 2000, `${first - Date.now()}`);
  await sleep(300);
  assert.equal(await lease.extend(10000), true);
  assert.ok(lease.expiresAt > Date.now() + 9000, 'extend moved the deadline');
  const pttl = await raw.pttl('lock:lease-fields');
  assert.ok(pttl > 9000);
  assert.equal(await lease.release(), true);
  assert.equal(await raw.exists('lock:lease-fields'), 0);
  assert.equal(lease.signal.aborted, false);
  assert.equal(await lease.release(), false);
  await sleep(50);
  assert.equal(lease.signal.aborted, false);
});

test('acquireLease: Symbol.asyncDispose releases; null when held', async () => {
  const lock = new Lock(server.url);
  const lease = await lock.acquireLease('disposable');
  assert.ok(lease);
  assert.equal(await lock.acquireLease('disposable'), null);
  await lease[Symbol.asyncDispose]();
  assert.equal(await raw.exists('lock:disposable'), 0);
});

test('onLockLost: called once per lost auto-extended lock, with resource, token and reason', async () => {
  /** @type {import('simple-distributed-lock').LockLostInfo[]} */
  const seen = [];
  const lock = new Lock(server.url, { onLockLost: (info) => void seen.push(info) });
  const token = await lock.acquire('watched', { ttl: 300, autoExtend: true });
  assert.ok(token);
  const kept = await lock.acquire('kept', { ttl: 300, autoExtend: true });
  assert.ok(kept);
  await raw.set('lock:watched', 'thief');
  await sleep(800);
  assert.equal(seen.length, 1);
  assert.equal(seen[0].resource, 'watched');
  assert.equal(seen[0].token, token);
  assert.ok(seen[0].reason instanceof LockLostError);
  assert.equal(seen[0].reason.kind, 'not-owner');
  assert.equal(await lock.release('kept', kept), true, 'the other lock was kept alive');
  await sleep(400);
  assert.equal(seen.length, 1, 'a release is not a loss');
});

test('onLockLost: a callback that throws or rejects is never an unhandled rejection', async () => {
  /** @type {string[]} */
  const warnings = [];
  const onWarning = (/** @type {Error} */ w) => warnings.push(w.message);
  process.on('warning', onWarning);
  try {
    const throwing = new Lock(server.url, {
      onLockLost: () => {
        throw new Error('callback bug');
      },
    });
    const rejecting = new Lock(server.url, { onLockLost: async () => Promise.reject(new Error('async callback bug')) });
    assert.ok(await throwing.acquire('cb-throw', { ttl: 200, autoExtend: true }));
    assert.ok(await rejecting.acquire('cb-reject', { ttl: 200, autoExtend: true }));
    await eachKey.del(raw, 'lock:cb-throw', 'lock:cb-reject');
    await sleep(800);
    assert.ok(warnings.some((w) => w.includes('callback bug')), warnings.join('\n'));
    assert.ok(warnings.some((w) => w.includes('async callback bug')), warnings.join('\n'));
  } finally {
    process.off('warning', onWarning);
  }
});

test('fences strictly increase per resource across 4 processes x 50 acquisitions', async () => {
  await raw.del('fences');
  await runWorkers(
    'fence-worker.mjs',
    Array.from({ length: 4 }, () => ({ url: server.url, resource: 'fenced-counter', iterations: 50 })),
  );
  const fences = (await raw.lrange('fences', 0, -1)).map(Number);
  assert.equal(fences.length, 200);
  // Appended while holding the lock, so list order is lock order: strictly increasing.
  for (let i = 1; i < fences.length; i++) assert.ok(fences[i] > fences[i - 1], `${fences[i - 1]} then ${fences[i]}`);
});

test('fences keep increasing after the lock key expired', async () => {
  const lock = new Lock(server.url);
  const first = await lock.acquireLease('fence-expiry', { ttl: 50 });
  assert.ok(first);
  await sleep(120);
  assert.equal(await raw.exists('lock:fence-expiry'), 0, 'the lock key expired');
  const second = await lock.acquireLease('fence-expiry', { ttl: 50 });
  assert.ok(second && /** @type {number} */ (second.fence) > /** @type {number} */ (first.fence));
  const braces = await lock.acquireLease('user:{42}:cart');
  const counter = fenceKey('lock:user:{42}:cart');
  assert.equal(slot(counter), slot('lock:user:{42}:cart'), 'the counter is in the hash slot of the lock key');
  assert.equal(await raw.get(counter), String(braces?.fence));
  assert.equal(await raw.ttl(counter), -1, 'a counter per slot, shared by its resources, is kept');
});

test('a holder paused past its ttl (SIGSTOP) cannot write to a store that checks fences', async () => {
  await eachKey.del(raw, '{store}:highest-fence', '{store}:writes', 'holder:fence', 'holder:go');
  const script = fileURLToPath(new URL('./fixtures/paused-holder.mjs', import.meta.url));
  const holder = spawn(process.execPath, [script, JSON.stringify({ url: server.url, ttl: 500 })], { stdio: ['ignore', 'pipe', 'inherit'] });
  let output = '';
  holder.stdout.on('data', (d) => (output += d));
  const exited = new Promise((resolve) => holder.on('close', resolve));
  try {
    let holderFence = null;
    for (let i = 0; i < 500 && holderFence === null; i++) {
      holderFence = await raw.get('holder:fence');
      if (holderFence === null) await sleep(10);
    }
    assert.ok(holderFence, 'the holder acquired');
    holder.kill('SIGSTOP');
    await sleep(900); // past the holder's ttl
    const lock = new Lock(server.url);
    const next = await lock.acquireLease('fenced-resource', { ttl: 5000 });
    assert.ok(next, 'the lock expired while its holder was paused');
    assert.ok(/** @type {number} */ (next.fence) > Number(holderFence));
    assert.equal(await writeWithFence(raw, /** @type {number} */ (next.fence), 'from the new holder'), true);
    holder.kill('SIGCONT');
    await raw.set('holder:go', '1');
    await exited;
    const report = JSON.parse(output);
    assert.equal(report.accepted, false, 'the stale holder was rejected');
    assert.deepEqual(await raw.lrange('{store}:writes', 0, -1), ['from the new holder']);
    await next.release();
  } finally {
    holder.kill('SIGKILL');
  }
});

test('waitTimeout: resolves null after about that long', async () => {
  const lock = new Lock(server.url);
  assert.ok(await lock.acquire('wait-timeout', { ttl: 10000 }));
  const started = Date.now();
  assert.equal(await lock.acquire('wait-timeout', { waitTimeout: 500, retryDelay: 50 }), null);
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 480 && elapsed < 2000, `${elapsed} ms`);
  // With an explicit retryCount, whichever ends first wins.
  const quick = Date.now();
  assert.equal(await lock.acquire('wait-timeout', { waitTimeout: 5000, retryCount: 1, retryDelay: 50 }), null);
  assert.ok(Date.now() - quick < 1000);
});

test('signal: an aborted signal rejects with its reason, before and while waiting', async () => {
  const lock = new Lock(server.url);
  const before = await calls();
  const early = new AbortController();
  early.abort(new Error('stop early'));
  await assert.rejects(lock.acquire('abortable', { signal: early.signal }), /stop early/);
  assert.equal(await calls(), before, 'nothing reached Redis');

  assert.ok(await lock.acquire('abortable', { ttl: 10000 }));
  const controller = new AbortController();
  const waiting = lock.acquire('abortable', { retryCount: Infinity, retryDelay: 50, signal: controller.signal });
  await sleep(200);
  const reason = new Error('user gave up');
  const abortedAt = Date.now();
  controller.abort(reason);
  await assert.rejects(waiting, (err) => err === reason);
  assert.ok(Date.now() - abortedAt < 500);

  const timeout = AbortSignal.timeout(200);
  await assert.rejects(lock.acquireLease('abortable', { retryCount: Infinity, signal: timeout }), { name: 'TimeoutError' });
});

/** Lock commands Redis has run so far (background subscriber commands excluded). */
async function calls() {
  const info = (await server.everyMaster('INFO', 'commandstats')).join('\n');
  return [...info.matchAll(/^cmdstat_(\w+):calls=(\d+)/gm)]
    .filter((m) => ['set', 'eval', 'evalsha'].includes(m[1]))
    .reduce((n, m) => n + Number(m[2]), 0);
}

test('a waiter takes a lock released by another v2 process long before retryDelay', async () => {
  await eachKey.del(raw, 'holder:ready', 'holder:released-at');
  const holder = runWorkers('release-after.mjs', [{ url: server.url, resource: 'handover', holdMs: 400 }]);
  while ((await raw.get('holder:ready')) !== '1') await sleep(10);
  const lock = new Lock(server.url);
  const token = await lock.acquire('handover', { retryCount: 3, retryDelay: 10000 });
  const acquiredAt = Date.now();
  await holder;
  assert.ok(token, 'acquired');
  const releasedAt = Number(await raw.get('holder:released-at'));
  assert.ok(acquiredAt - releasedAt < 2000, `took ${acquiredAt - releasedAt} ms after the release; retryDelay is 10 s`);
});

test('a lock released by a v1 process is still taken, by polling', async () => {
  const v1 = new V1Lock(server.client());
  const v1Token = await v1.acquire('v1-handover', { ttl: 10000 });
  assert.ok(v1Token);
  setTimeout(() => void v1.release('v1-handover', v1Token), 300);
  const lock = new Lock(server.url);
  const started = Date.now();
  const token = await lock.acquire('v1-handover', { retryCount: 50, retryDelay: 100 });
  assert.ok(token);
  assert.ok(Date.now() - started < 3000);
});

test('retryJitter and waitTimeout are validated like the other options', async () => {
  const lock = new Lock(server.url);
  await assert.rejects(lock.acquire('x', { retryJitter: -1 }), { name: 'RangeError', message: /^retryJitter/ });
  await assert.rejects(lock.acquire('x', { waitTimeout: NaN }), { name: 'RangeError', message: /^waitTimeout/ });
  await assert.rejects(lock.acquire('x', { signal: /** @type {any} */ ({}) }), { name: 'TypeError', message: /^signal must be an AbortSignal/ });
  assert.throws(() => new Lock(server.url, { onLockLost: /** @type {any} */ ('nope') }), { name: 'TypeError', message: /^onLockLost must be a function/ });
  assert.ok(await lock.acquire('jittered', { retryJitter: 20 }));
});

test('close: aborts the signals of held leases', async () => {
  const lock = new Lock(server.url);
  const lease = await lock.acquireLease('closing', { autoExtend: true });
  assert.ok(lease);
  await lock.close();
  assert.ok(lease.signal.aborted);
  assert.ok(lease.signal.reason instanceof LockLostError);
  assert.equal(lease.signal.reason.kind, 'closed');
});

/** Keys on every master. */
async function dbsize() {
  return (await server.everyMaster('DBSIZE')).reduce((/** @type {number} */ n, count) => n + Number(count), 0);
}

test('fencing: false keeps no counter and gives null fences', async () => {
  const lock = new Lock(server.url, { fencing: false });
  const keysBefore = await dbsize();
  const lease = await lock.acquireLease('unfenced');
  assert.ok(lease);
  assert.equal(lease.fence, null);
  assert.equal(await dbsize(), keysBefore + 1, 'only the lock key was written');
});

test('waiters that time out, give up or are aborted under contention leave no lock behind', async () => {
  const lock = new Lock(server.url);
  const outcomes = await Promise.allSettled(
    Array.from({ length: 60 }, async (_, i) => {
      const controller = new AbortController();
      setTimeout(() => controller.abort(new Error('gave up')), Math.random() * 80);
      const waiting =
        i % 3 === 0
          ? { waitTimeout: 40, retryDelay: 5 }
          : i % 3 === 1
            ? { signal: controller.signal, retryCount: Infinity, retryDelay: 5 }
            : { retryCount: 3, retryDelay: 5 };
      const token = await lock.acquire('storm', { ttl: 3000, ...waiting });
      if (token) {
        await sleep(1);
        assert.equal(await lock.release('storm', token), true);
      }
      return token;
    }),
  );
  for (const outcome of outcomes) {
    if (outcome.status === 'rejected') assert.match(String(outcome.reason), /gave up/);
  }
  assert.ok(outcomes.some((o) => o.status === 'fulfilled' && o.value), 'some got the lock');
  await sleep(200);
  assert.equal(await raw.exists('lock:storm'), 0, 'nobody holds it: an attempt granted after an abort was given back');
});

test('a waiter queued behind others of its process keeps the v1 time budget (1 + retryCount attempts)', async () => {
  const lock = new Lock(server.url);
  const other = new Lock(server.url);
  const held = await other.acquire('budget', { ttl: 10000 });
  assert.ok(held);
  const first = lock.acquire('budget', { retryCount: Infinity, retryDelay: 50, waitTimeout: 3000 });
  const started = Date.now();
  const second = await lock.acquire('budget', { retryCount: 2, retryDelay: 200 });
  const took = Date.now() - started;
  assert.equal(second, null);
  assert.ok(took >= 350 && took < 3000, `gave up after ${took} ms; 2 retries x 200 ms expected`);
  assert.equal(await other.release('budget', held), true);
  const token = await first;
  assert.ok(token, 'the first waiter took the lock once it was released');
  await lock.release('budget', token);
  await lock.close();
  await other.close();
});

test('a waiter is handed the lock even when Redis lost the release script (SCRIPT FLUSH)', async () => {
  const lock = new Lock(server.url);
  // Let the event-loop socket open: a new Lock's first calls take the runtime path.
  await lock.isLocked('noscript');
  await sleep(200);
  const held = await lock.acquire('noscript', { ttl: 10000 });
  assert.ok(held);
  const waiting = lock.acquire('noscript', { retryCount: 3, retryDelay: 10000 });
  await sleep(100);
  await server.everyMaster('SCRIPT', 'FLUSH');
  // The acquire script is cached again, the release script is not: the release's EVAL comes
  // back after the waiter's attempt, which found the lock still held.
  const warm = await lock.acquire('noscript:warm');
  assert.ok(warm);
  const started = Date.now();
  assert.equal(await lock.release('noscript', held), true);
  const token = await waiting;
  assert.ok(token, 'the waiter took the lock');
  assert.ok(Date.now() - started < 3000, `took ${Date.now() - started} ms; retryDelay is 10 s`);
  await lock.release('noscript', token);
  await lock.release('noscript:warm', warm);
  await lock.close();
});

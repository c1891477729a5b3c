// @ts-check
// Lease hygiene: nothing per resource outlives its lock, fences still only grow, a synchronous
// validity check that a paused process cannot outrun, and a cap on holding (maxHoldTime).

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { Lock, LockLostError } from 'simple-distributed-lock';
import { RedisServer } from './helpers/redis-server.mjs';
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

test('20,000 using() on distinct resources leave no key per resource, at most one counter per slot', async () => {
  await raw.flushall();
  const lock = new Lock(server.url, { ttl: 200 });
  for (let i = 0; i < 20000; i += 200) {
    await Promise.all(Array.from({ length: 200 }, (_, j) => lock.using(`order:${i + j}`, async () => {})));
  }
  await sleep(400); // two ttls
  const keys = await raw.keys('*');
  assert.deepEqual(keys.filter((k) => k.includes('order:')), [], 'no key names a resource');
  assert.ok(keys.length <= 16384, `${keys.length} keys left`);
  for (const key of keys) assert.match(key, /^\{[0-9a-f]+\}:fence:lock:$/, 'only fencing counters, one per slot');
  for (const key of keys.slice(0, 50)) assert.equal(await raw.ttl(key), -1);
  await lock.close();
});

test('fences keep growing across a restart of a server with persistence (appendonly)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'sdl-aof-'));
  const durable = await RedisServer.start(['--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir]);
  try {
    const lock = new Lock(durable.url);
    const first = await lock.acquireLease('durable', { ttl: 1000 });
    assert.ok(first && first.fence !== null);
    assert.equal(await first.release(), true);
    await durable.kill();
    await durable.restart();
    const second = await lock.acquireLease('durable', { ttl: 1000, retryCount: 20, retryDelay: 50 });
    assert.ok(second && second.fence !== null);
    assert.ok(second.fence > first.fence, `${second.fence} after ${first.fence}`);
    await lock.close();
  } finally {
    await durable.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('remainingMs and throwIfLost(): the deadline on the monotonic clock, no call into the engine', async () => {
  const lock = new Lock(server.url, { ttl: 1000 });
  const lease = await lock.acquireLease('remaining');
  assert.ok(lease);
  const left = lease.remainingMs;
  // ttl - (1% + 2 ms), less the round trip.
  assert.ok(left > 800 && left <= 988, `remainingMs ${left}`);
  assert.doesNotThrow(() => lease.throwIfLost());
  await sleep(100);
  assert.ok(lease.remainingMs < left - 50, 'it counts down');
  assert.equal(await lease.extend(5000), true);
  assert.ok(lease.remainingMs > 4800, `extend moved it: ${lease.remainingMs}`);
  // A shorter extend sets a shorter TTL (PEXPIRE): the deadline moves earlier, everywhere.
  assert.equal(await lease.extend(400), true);
  assert.ok(lease.remainingMs <= 400, `a shorter extend moved it earlier: ${lease.remainingMs}`);
  assert.ok(lease.expiresAt <= Date.now() + 400, 'expiresAt too');
  assert.equal(await lease.extend(5000), true);
  assert.equal(await lease.release(), true);
  assert.equal(lease.remainingMs, 0, 'released: 0');
  assert.throws(() => lease.throwIfLost(), (err) => err instanceof LockLostError && err.kind === 'released');
  assert.equal(lease.signal.aborted, false, 'a release is not a loss');

  // Without autoExtend the deadline passes: throwIfLost() throws what the signal holds, at once.
  const short = await lock.acquireLease('remaining-short', { ttl: 100 });
  assert.ok(short);
  await new Promise((resolve) => setTimeout(resolve, 120));
  assert.equal(short.remainingMs, 0);
  assert.throws(
    () => short.throwIfLost(),
    (err) => err instanceof LockLostError && ['expired'].includes(err.kind) && short.signal.reason === err,
  );

  // Auto-extension moves it (the engine tells the lease, without being asked).
  const kept = await lock.acquireLease('remaining-kept', { ttl: 300, autoExtend: true });
  assert.ok(kept);
  await sleep(700);
  assert.ok(kept.remainingMs > 0, 'auto-extended past its ttl');
  assert.doesNotThrow(() => kept.throwIfLost());
  await kept.release();
  await lock.close();
});

test('a holder SIGSTOPped past its ttl 100 times: checking remainingMs, it never writes late; the signal aborts', async () => {
  await raw.del('checker:accepted', 'checker:late', 'checker:aborted');
  const rounds = 100;
  const ttl = 120;
  const script = fileURLToPath(new URL('./fixtures/paused-checker.mjs', import.meta.url));
  const child = spawn(process.execPath, [script, JSON.stringify({ url: server.url, resource: 'checker', ttl, rounds })], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve(code ?? signal)));
  let paused = 0;
  let pausing = false;
  let buffer = '';
  let lastRound = -1;
  const done = new Promise((resolve) => {
    child.stdout.on('data', async (chunk) => {
      buffer += chunk;
      const lines = buffer.split('\n');
      buffer = lines.pop() ?? '';
      for (const line of lines) {
        const round = Number(line.split(' ')[1]);
        // The first sleep of each round: stop the holder there, past its ttl.
        if (pausing || round <= lastRound) continue;
        lastRound = round;
        pausing = true;
        child.kill('SIGSTOP');
        await sleep(ttl + 80);
        child.kill('SIGCONT');
        paused++;
        pausing = false;
        if (paused === rounds) resolve(undefined);
      }
    });
  });
  try {
    await Promise.race([done, exited]);
    assert.equal(await exited, 0, 'the holder ran to the end');
    assert.equal(paused, rounds);
    const late = await raw.lrange('checker:late', 0, -1);
    assert.deepEqual(late, [], 'no write after its lock was gone');
    assert.ok((await raw.llen('checker:accepted')) >= rounds, 'it did write while it held the lock');
    const aborted = await raw.lrange('checker:aborted', 0, -1);
    assert.equal(aborted.length, rounds);
    assert.deepEqual(aborted.filter((kind) => kind === 'no'), [], 'the signal aborted every time');
  } finally {
    child.kill('SIGKILL');
  }
});

test('maxHoldTime: auto-extension stops after that long; the key then runs out its ttl; kind max-hold-time', async () => {
  /** @type {Array<{ resource: string, reason: LockLostError }>} */
  const told = [];
  const lock = new Lock(server.url, { onLockLost: (info) => void told.push(info) });
  const started = Date.now();
  const lease = await lock.acquireLease('max-hold', { ttl: 1000, autoExtend: true, maxHoldTime: 1500 });
  assert.ok(lease);
  let gone = 0;
  while (!gone) {
    if ((await raw.exists('lock:max-hold')) === 0) gone = Date.now() - started;
    else await sleep(20);
    assert.ok(Date.now() - started < 5000, 'still held after 5 s');
  }
  assert.ok(gone >= 1500 && gone <= 2600, `expired after ${gone} ms`);
  for (let i = 0; i < 100 && !lease.signal.aborted; i++) await sleep(20);
  assert.ok(lease.signal.reason instanceof LockLostError);
  assert.equal(lease.signal.reason.kind, 'max-hold-time');
  assert.equal(told.length, 1);
  assert.equal(told[0].reason.kind, 'max-hold-time');
  await lock.close();
});

test('maxHoldTime is validated like the other options', async () => {
  const lock = new Lock(server.url);
  await assert.rejects(lock.acquire('x', { autoExtend: true, maxHoldTime: 0 }), RangeError);
  await assert.rejects(lock.acquire('x', { autoExtend: true, maxHoldTime: -5 }), RangeError);
  // @ts-expect-error: a string is not a number of ms
  await assert.rejects(lock.acquire('x', { autoExtend: true, maxHoldTime: '100' }), TypeError);
  assert.equal(await raw.exists('lock:x'), 0, 'Redis is unchanged by a rejected call');
  await lock.close();
});

test('fenceKey mirrors the engine (the counter the acquire incremented)', async () => {
  const lock = new Lock(server.url, { prefix: 'mirror:' });
  for (const resource of ['plain', 'with:{tag}:x', 'a}b', 'x{}y']) {
    const lease = await lock.acquireLease(resource);
    assert.ok(lease);
    assert.equal(Number(await raw.get(fenceKey(`mirror:${resource}`, 'mirror:'))), lease.fence, resource);
    await lease.release();
  }
  await lock.close();
});

// @ts-check
// Observability: the tracing channels (one per operation), the background channels (lost,
// extend-failed, connection, quorum), lock.metrics() and the NODE_DEBUG=simple-distributed-lock
// log, against real servers. No owner token and no password may appear in anything published
// or logged.

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import dc from 'node:diagnostics_channel';
import { AsyncLocalStorage } from 'node:async_hooks';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { Lock, LockAcquireError, LockConnectionError, LockLostError } from 'simple-distributed-lock';
import { RedisServer } from './helpers/redis-server.mjs';
import { until } from './helpers/until.mjs';
import { startIndependentMasters, stopAll } from './helpers/topology.mjs';

const OPS = ['acquire', 'release', 'extend', 'isLocked', 'using'];
const PHASES = /** @type {const} */ (['start', 'end', 'asyncStart', 'asyncEnd', 'error']);

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
 * Records every event of every tracing channel (a copy of the context at that moment) and of the
 * plain channels, until `stop()`.
 */
function record() {
  /** @type {Array<{ channel: string, phase: string, ctx: Record<string, any> }>} */
  const events = [];
  /** @type {Array<() => void>} */
  const undo = [];
  for (const op of OPS) {
    const tc = dc.tracingChannel(`simple-distributed-lock:${op}`);
    /** @type {Record<string, (ctx: any) => void>} */
    const handlers = {};
    for (const phase of PHASES) handlers[phase] = (ctx) => events.push({ channel: op, phase, ctx: { ...ctx } });
    tc.subscribe(/** @type {any} */ (handlers));
    undo.push(() => tc.unsubscribe(/** @type {any} */ (handlers)));
  }
  for (const name of ['lost', 'extend-failed', 'connection', 'quorum']) {
    const handler = (/** @type {any} */ message) => events.push({ channel: name, phase: 'message', ctx: { ...message } });
    dc.subscribe(`simple-distributed-lock:${name}`, handler);
    undo.push(() => dc.unsubscribe(`simple-distributed-lock:${name}`, handler));
  }
  return {
    events,
    /** @param {string} channel @param {string} phase */
    of: (channel, phase) => events.filter((e) => e.channel === channel && e.phase === phase).map((e) => e.ctx),
    stop: () => undo.forEach((f) => f()),
  };
}

/**
 * Everything published, as text: every own property, enumerable or not (an error's `cause`,
 * `errors`, `message`, `stack`), all the way down.
 * @param {unknown} value
 */
function asText(value) {
  const seen = new Set();
  /** @param {unknown} v @returns {unknown} */
  const walk = (v) => {
    if (v === null || typeof v !== 'object') return typeof v === 'function' ? `[function ${v.name}]` : v;
    if (seen.has(v)) return '[seen]';
    seen.add(v);
    if (Array.isArray(v)) return v.map(walk);
    /** @type {Record<string, unknown>} */
    const out = {};
    for (const key of Object.getOwnPropertyNames(v)) out[key] = walk(/** @type {any} */ (v)[key]);
    return out;
  };
  return JSON.stringify(walk(value));
}

test('acquire: granted, refused and failing calls publish their context, without the token', async () => {
  const rec = record();
  try {
    const lock = new Lock(server.url, { prefix: 'obs:' });
    const token = await lock.acquire('a', { ttl: 5000 });
    assert.ok(token);
    assert.equal(await lock.acquire('a', { retryCount: 2, retryDelay: 10 }), null);
    const [start, second] = rec.of('acquire', 'start');
    assert.deepEqual(start, { resource: 'a', prefix: 'obs:', server: `127.0.0.1:${server.port}`, ttl: 5000, autoExtend: false });
    assert.equal(second.ttl, 10000, "the Lock's ttl when the call gives none");
    const [granted, refused] = rec.of('acquire', 'asyncEnd');
    assert.equal(granted.outcome, 'granted');
    assert.equal(granted.attempts, 1);
    assert.equal(typeof granted.fence, 'number');
    assert.ok(granted.waitedMs >= 0 && granted.waitedMs < 10000);
    assert.deepEqual(granted.result, { granted: true, fence: granted.fence });
    assert.equal(refused.outcome, 'refused');
    assert.ok(refused.attempts >= 3, `1 + retryCount attempts at least, got ${refused.attempts}`);
    assert.ok(refused.waitedMs >= 15, `two retry delays at least, got ${refused.waitedMs}`);
    assert.deepEqual(refused.result, { granted: false, fence: null });
    assert.equal(rec.of('acquire', 'end').length, 2, 'end follows each synchronous start');
    assert.equal(rec.of('acquire', 'error').length, 0);
    assert.ok(!asText(rec.events).includes(token), 'the token is never published');
    await lock.close();
  } finally {
    rec.stop();
  }
});

test('release, extend, isLocked: outcome and result, for the owner and for a stranger', async () => {
  const lock = new Lock(server.url);
  const token = /** @type {string} */ (await lock.acquire('b'));
  const rec = record();
  try {
    assert.equal(await lock.isLocked('b'), true);
    assert.equal(await lock.extend('b', token, 4000), true);
    assert.equal(await lock.extend('b', 'f'.repeat(32), 4000), false);
    assert.equal(await lock.release('b', 'f'.repeat(32)), false);
    assert.equal(await lock.release('b', token), true);
    assert.equal(await lock.isLocked('b'), false);
    assert.deepEqual(
      rec.of('isLocked', 'asyncEnd').map((c) => [c.resource, c.outcome, c.result]),
      [['b', 'held', true], ['b', 'free', false]],
    );
    assert.deepEqual(
      rec.of('extend', 'asyncEnd').map((c) => [c.resource, c.ttl, c.outcome, c.result]),
      [['b', 4000, 'extended', true], ['b', 4000, 'not-owner', false]],
    );
    assert.deepEqual(
      rec.of('release', 'asyncEnd').map((c) => [c.resource, c.prefix, c.outcome, c.result]),
      [['b', 'lock:', 'not-owner', false], ['b', 'lock:', 'released', true]],
    );
    assert.ok(!asText(rec.events).includes(token));
  } finally {
    rec.stop();
    await lock.close();
  }
});

test('a stopped server: each channel publishes the error, with outcome "error"', async () => {
  const own = await RedisServer.start();
  const lock = new Lock(own.url, { commandTimeout: 300, connectTimeout: 300 });
  const token = /** @type {string} */ (await lock.acquire('c', { ttl: 30000 }));
  own.child?.kill('SIGSTOP');
  const rec = record();
  try {
    await assert.rejects(lock.acquire('d'), LockConnectionError);
    await assert.rejects(lock.isLocked('c'), LockConnectionError);
    await assert.rejects(lock.extend('c', token), LockConnectionError);
    await assert.rejects(lock.release('c', token), LockConnectionError);
    await assert.rejects(lock.using('e', async () => {}), LockConnectionError);
    for (const op of OPS) {
      const errors = rec.of(op, 'error');
      assert.equal(errors.length, op === 'acquire' ? 2 : 1, `${op}: one error event per failing call (using's acquire is an acquire)`);
      for (const ctx of errors) {
        assert.equal(ctx.outcome, 'error');
        assert.ok(ctx.error instanceof LockConnectionError, `${op}: ${ctx.error}`);
      }
      assert.equal(rec.of(op, 'asyncEnd').length, errors.length, `${op}: asyncEnd follows the error`);
    }
    assert.ok(!asText(rec.events).includes(token));
  } finally {
    rec.stop();
    own.child?.kill('SIGCONT');
    await lock.close();
    await own.stop();
  }
});

test('using: its acquire and release nest inside it; refusal carries attempts and waitedMs', async () => {
  const lock = new Lock(server.url);
  const other = new Lock(server.url);
  const rec = record();
  try {
    const fence = await lock.using('u', async (_signal, lease) => lease.fence);
    assert.equal(typeof fence, 'number');
    const [span] = rec.of('using', 'asyncEnd');
    assert.equal(span.resource, 'u');
    assert.equal(span.outcome, 'completed');
    assert.equal(span.attempts, 1);
    assert.equal(span.fence, fence);
    assert.equal(span.result, undefined, "using's result is the caller's value: not published");
    const order = rec.events.filter((e) => e.phase === 'start' || e.phase === 'asyncEnd').map((e) => `${e.channel}:${e.phase}`);
    assert.deepEqual(order, ['using:start', 'acquire:start', 'acquire:asyncEnd', 'release:start', 'release:asyncEnd', 'using:asyncEnd']);

    const held = await other.acquire('u', { ttl: 5000 });
    assert.ok(held);
    const err = await lock.using('u', async () => {}, { retryCount: 3, retryDelay: 10 }).catch((e) => e);
    assert.ok(err instanceof LockAcquireError);
    assert.equal(err.message, 'Failed to acquire lock on resource "u".', "v1's message, word for word");
    assert.ok(err.attempts >= 4, `attempts: ${err.attempts}`);
    assert.ok(err.waitedMs >= 25 && err.waitedMs < 10000, `waitedMs: ${err.waitedMs}`);
    const refused = rec.of('using', 'error').at(-1);
    assert.equal(refused?.outcome, 'error');
    assert.equal(refused?.error, err);
    assert.equal(refused?.attempts, err.attempts);

    // fn rethrows its lease's LockLostError: what is published has no token.
    await other.release('u', /** @type {string} */ (held));
    let token = '';
    await assert.rejects(
      lock.using(
        'u',
        async (signal, lease) => {
          token = lease.token;
          await raw.del('lock:u'); // the next auto-extension finds no key
          await until('the loss to be noticed', 5000, () => signal.aborted);
          throw signal.reason;
        },
        { ttl: 400, autoExtend: true },
      ),
      LockLostError,
    );
    const lostSpan = rec.of('using', 'error').at(-1);
    assert.ok(lostSpan?.error instanceof LockLostError);
    assert.ok(token.length === 32 && !asText(rec.events).includes(token), 'no token in any published object');
  } finally {
    rec.stop();
    await lock.close();
    await other.close();
  }
});

test("no token in a published error: a lease's LockLostError as the cause of Node's AbortError, and as another acquire's signal reason", async () => {
  const lock = new Lock(server.url);
  const rec = record();
  try {
    let token = '';
    // fn awaits a timer with the lease's signal: Node rejects it with an AbortError whose cause is
    // the LockLostError (and its token).
    const err = await lock
      .using(
        'scrub',
        async (signal, lease) => {
          token = lease.token;
          await raw.del('lock:scrub');
          await sleep(10000, undefined, { signal });
        },
        { ttl: 400, autoExtend: true },
      )
      .catch((e) => e);
    assert.equal(err.name, 'AbortError');
    assert.ok(err.cause instanceof LockLostError && err.cause.token === token, 'the caller gets the real error');
    const published = rec.of('using', 'error').at(-1);
    assert.equal(published?.error.name, 'AbortError');
    assert.ok(published?.error.cause instanceof LockLostError, 'the published copy keeps its shape');
    // An acquire waiting with another lease's signal rejects with that lease's LockLostError.
    const outer = await lock.acquireLease('scrub-outer', { ttl: 400, autoExtend: true });
    assert.ok(outer);
    const held = await new Lock(server.url).acquire('scrub-inner', { ttl: 5000 });
    assert.ok(held);
    const waiting = lock.acquire('scrub-inner', { retryCount: Infinity, retryDelay: 50, signal: outer.signal }).catch((e) => e);
    await raw.del('lock:scrub-outer');
    const inner = await waiting;
    assert.ok(inner instanceof LockLostError && inner.token === outer.token);
    const acquireError = rec.of('acquire', 'error').at(-1);
    assert.ok(acquireError?.error instanceof LockLostError);
    for (const secret of [token, outer.token]) assert.ok(!asText(rec.events).includes(secret), 'no token anywhere in what was published');
  } finally {
    rec.stop();
    await lock.close();
  }
});

test('an AsyncLocalStorage bound to the start channel reaches the caller\'s continuation (how APMs attach spans)', async () => {
  const lock = new Lock(server.url);
  const als = new AsyncLocalStorage();
  const start = dc.tracingChannel('simple-distributed-lock:using').start;
  start.bindStore(als, (/** @type {any} */ ctx) => ({ span: `using ${ctx.resource}` }));
  try {
    const seen = await lock.using('als', async () => {
      await sleep(1);
      return als.getStore();
    });
    assert.deepEqual(seen, { span: 'using als' });
    assert.equal(als.getStore(), undefined, 'outside the call there is no span');
  } finally {
    start.unbindStore(als);
    await lock.close();
  }
});

test('with no subscriber nothing is traced: no context is made per call', async () => {
  const lock = new Lock(server.url);
  await lock.isLocked('warm');
  const starts = OPS.map((op) => dc.channel(`tracing:simple-distributed-lock:${op}:start`));
  const original = starts.map((c) => c.runStores);
  let traced = 0;
  starts.forEach((c, i) => {
    c.runStores = /** @type {any} */ (function (/** @type {any[]} */ ...args) {
      traced++;
      return /** @type {any} */ (original[i]).apply(this, args);
    });
  });
  try {
    for (let i = 0; i < 20; i++) {
      const token = /** @type {string} */ (await lock.acquire('quiet'));
      await lock.extend('quiet', token);
      await lock.isLocked('quiet');
      await lock.release('quiet', token);
      await lock.using('quiet', async () => {});
    }
    assert.equal(traced, 0, 'no call went through a tracing channel');
    // The same calls with a subscriber are traced (the spy above is live).
    const rec = record();
    await lock.using('quiet', async () => {});
    rec.stop();
    assert.equal(traced, 3, 'using, its acquire and its release');
  } finally {
    starts.forEach((c, i) => (c.runStores = original[i]));
    await lock.close();
  }
});

test('metrics() counts a scripted sequence exactly', async () => {
  const lock = new Lock(server.url, { ttl: 5000 });
  const other = new Lock(server.url);
  const zero = lock.metrics();
  assert.deepEqual(
    { ...zero, waitTime: zero.waitTime.count, holdTime: zero.holdTime.count },
    {
      acquired: 0, refused: 0, errors: 0, released: 0, releasedNotOwner: 0, extended: 0, extendFailed: 0,
      lost: { 'not-owner': 0, unreachable: 0, expired: 0, 'max-hold-time': 0, closed: 0 },
      held: 0, waiting: 0, waitTime: 0, holdTime: 0, windowMs: 60000,
    },
  );
  const a = /** @type {string} */ (await lock.acquire('m1'));
  const b = /** @type {string} */ (await lock.acquire('m2', { ttl: 300 }));
  assert.equal(await lock.acquire('m1'), null);
  assert.equal((await lock.metrics()).held, 2);
  assert.equal(await lock.extend('m1', a), true);
  assert.equal(await lock.extend('m1', b), false);
  await sleep(20);
  assert.equal(await lock.release('m1', a), true);
  assert.equal(await lock.release('m1', a), false);
  await sleep(400); // m2 ran out on its own
  const lease = await lock.acquireLease('m3', { ttl: 400, autoExtend: true });
  assert.ok(lease);
  await raw.del('lock:m3'); // taken away: its next extension finds no key
  await until('the lease to be lost', 10000, () => lease.signal.aborted);
  const blocker = /** @type {string} */ (await other.acquire('m4'));
  assert.ok(blocker);
  const pending = lock.acquire('m4', { retryCount: Infinity, retryDelay: 50 });
  await sleep(30);
  assert.equal(lock.metrics().waiting, 1);
  await other.release('m4', blocker);
  assert.ok(await pending);
  const lease2 = await lock.acquireLease('m5', { ttl: 60000 });
  assert.ok(lease2);
  await lock.close();
  const m = lock.metrics();
  assert.equal(m.acquired, 5);
  assert.equal(m.refused, 1);
  assert.equal(m.errors, 0);
  assert.equal(m.released, 1);
  assert.equal(m.releasedNotOwner, 1);
  assert.equal(m.extended, 1);
  assert.equal(m.extendFailed, 1);
  assert.deepEqual(m.lost, { 'not-owner': 1, unreachable: 0, expired: 0, 'max-hold-time': 0, closed: 1 });
  assert.equal(m.holdTime.count, 1);
  assert.ok(m.holdTime.p50 >= 15 && m.holdTime.max === m.holdTime.p50, `hold: ${JSON.stringify(m.holdTime)}`);
  assert.equal(m.waitTime.count, 5);
  assert.ok(m.waitTime.max >= m.waitTime.p90 && m.waitTime.p90 >= m.waitTime.p50);
  assert.equal(m.held, 1, 'm4, taken and never released, within its ttl (m2 ran out, m3 lost, m5 closed)');
  assert.equal(m.waiting, 0);
  await other.close();
});

test('metrics(): waiting counts acquires that wait; held counts only locks still within their ttl', async () => {
  const lock = new Lock(server.url);
  const other = new Lock(server.url);
  const token = await other.acquire('w', { ttl: 5000 });
  assert.ok(token);
  const waiters = [1, 2, 3].map(() => lock.acquire('w', { retryCount: Infinity, retryDelay: 20 }));
  await sleep(50);
  assert.equal(lock.metrics().waiting, 3);
  await other.release('w', token);
  const tokens = [];
  for (const w of waiters) {
    const t = /** @type {string} */ (await w);
    tokens.push(t);
    await lock.release('w', t);
  }
  assert.equal(lock.metrics().waiting, 0);
  // 3,000 short locks never released: they leave `held` as they run out.
  const brief = new Lock(server.url, { ttl: 50 });
  for (let i = 0; i < 3000; i += 300) await Promise.all(Array.from({ length: 300 }, (_, j) => brief.acquire(`brief:${i + j}`)));
  await sleep(100);
  assert.equal(brief.metrics().held, 0);
  assert.equal(brief.metrics().acquired, 3000);
  await Promise.all([lock.close(), other.close(), brief.close()]);
});

test('lost and extend-failed channels: resource, kind and message, never the token', async () => {
  const own = await RedisServer.start();
  const ownRaw = own.client();
  const lock = new Lock(own.url, { commandTimeout: 200, connectTimeout: 200 });
  const rec = record();
  try {
    const lease = await lock.acquireLease('l', { ttl: 1000, autoExtend: true });
    assert.ok(lease);
    own.child?.kill('SIGSTOP');
    await until('the lease to be lost', 10000, () => lease.signal.aborted);
    own.child?.kill('SIGCONT');
    const failed = rec.of('extend-failed', 'message');
    assert.ok(failed.length >= 1, 'each failed auto-extension is published');
    for (const f of failed) {
      assert.equal(f.resource, 'l');
      assert.equal(f.prefix, 'lock:');
      assert.match(f.error, /127\.0\.0\.1/);
      assert.ok(f.retryInMs > 0);
    }
    const [lost] = rec.of('lost', 'message');
    assert.equal(lost.resource, 'l');
    assert.equal(lost.kind, 'unreachable');
    assert.match(lost.message, /was lost/);
    assert.ok(!('token' in lost) && !asText(rec.events).includes(lease.token));
    assert.ok(lock.metrics().extendFailed >= failed.length);
    assert.equal(lock.metrics().lost.unreachable, 1);
    await ownRaw.ping();
  } finally {
    rec.stop();
    own.child?.kill('SIGCONT');
    await lock.close();
    await own.stop();
  }
});

test('connection channel and NODE_DEBUG: a server restart shows broken, then reopened; no password', async () => {
  const password = 'obs-secret-pw';
  const own = await RedisServer.start(['--requirepass', password]);
  const url = own.url.replace('://', `://:${password}@`);
  const fixture = fileURLToPath(new URL('./fixtures/debug-log-worker.mjs', import.meta.url));
  const child = spawn(process.execPath, [fixture, url], {
    env: { ...process.env, NODE_DEBUG: 'simple-distributed-lock' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise((resolve) => child.on('close', resolve));
  try {
    await until('the worker to hold a lock', 10000, () => stdout.includes('ready'));
    await own.restart();
    child.stdin.end('go\n');
    const code = await Promise.race([exited, sleep(20000, 'timeout', { ref: false })]);
    assert.equal(code, 0, `worker: ${stdout}\n${stderr}`);
    const lines = stderr.split('\n').filter((l) => l.startsWith('SIMPLE-DISTRIBUTED-LOCK'));
    const opened = lines.findIndex((l) => /connection to 127\.0\.0\.1:\d+ opened/.test(l));
    const broken = lines.findIndex((l) => /connection broken/.test(l));
    const reopened = lines.findIndex((l) => /reopened/.test(l));
    assert.ok(opened >= 0 && broken > opened && reopened > broken, `opened → broken → reopened in:\n${lines.join('\n')}`);
    const published = JSON.parse(stdout.slice(stdout.indexOf('{')));
    assert.deepEqual(
      published.events.filter((/** @type {string} */ e) => e !== 'connect-failed').slice(0, 3),
      ['opened', 'broken', 'reopened'],
    );
    const tokens = /** @type {string[]} */ (published.tokens);
    assert.ok(tokens.length >= 2);
    for (const secret of [password, ...tokens]) {
      assert.ok(!stderr.includes(secret), `the debug log holds ${secret === password ? 'the password' : 'a token'}`);
      assert.ok(!asText(published.messages).includes(secret));
    }
  } finally {
    child.kill('SIGKILL');
    await own.stop();
  }
});

test('Redlock: the quorum channel gives each master\'s vote, a minority down included', async () => {
  const masters = await startIndependentMasters(3);
  const lock = new Lock(
    masters.map((m) => m.url),
    { commandTimeout: 300, connectTimeout: 300 },
  );
  const rec = record();
  try {
    const token = await lock.acquire('q');
    assert.ok(token);
    await masters[2].kill();
    assert.equal(await lock.acquire('q'), null, 'held on the two masters left');
    const second = await lock.acquire('q2');
    assert.ok(second);
    // Notices come from the engine through Node's queue: just after the call settles.
    await until('a message per acquire', 5000, () => rec.of('quorum', 'message').length >= 3);
    await sleep(50);
    const votes = rec.of('quorum', 'message');
    assert.equal(votes.length, 3, 'one message per acquire while subscribed');
    // A majority decides: a master still answering then shows as 'no-answer'.
    const first = votes[0].votes.map((/** @type {any} */ v) => v.vote);
    assert.ok(first.filter((/** @type {string} */ v) => v === 'granted').length >= 2 && first.every((/** @type {string} */ v) => v === 'granted' || v === 'no-answer'), first.join());
    assert.equal(votes[0].granted, true);
    assert.equal(votes[0].resource, 'q');
    assert.deepEqual(votes[0].votes.map((/** @type {any} */ v) => v.server), masters.map((m) => `127.0.0.1:${m.port}`));
    assert.equal(votes[1].granted, false);
    // Decided as soon as a majority can no longer grant it: one refusal and the dead master do.
    const second2 = votes[1].votes.map((/** @type {any} */ v) => v.vote);
    assert.ok(second2.includes('refused') && !second2.includes('granted'), second2.join());
    assert.equal(votes[2].granted, true);
    assert.deepEqual(votes[2].votes.slice(0, 2).map((/** @type {any} */ v) => v.vote), ['granted', 'granted']);
    // The killed master's vote: its error, or no answer yet when the other two decided it.
    const down = votes[2].votes[2];
    assert.ok(down.vote === 'failed' || down.vote === 'no-answer', down.vote);
    if (down.vote === 'failed') assert.match(down.error, new RegExp(`127\\.0\\.0\\.1:${masters[2].port}`));
    assert.ok(!asText(rec.events).includes(token) && !asText(rec.events).includes(second));
  } finally {
    rec.stop();
    await lock.close();
    await stopAll(masters);
  }
});

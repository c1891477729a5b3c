// @ts-check
// Property-based API tests (fast-check): random sequences of calls, often with invalid
// arguments, against a model of what Redis must hold. After every call: the outcome is the
// model's, no call hangs, the process lives, and every lock key in Redis is exactly what the
// model allows (the owner's token, or absent).

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Lock, LockError } from 'simple-distributed-lock';
import { RedisServer } from './helpers/redis-server.mjs';

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

const RESOURCES = ['p:a', 'p:b', 'p:c'];
/** Long enough that nothing expires within a run. */
const TTL = 60000;
/** Any call not settled by then is a hang. */
const CALL_LIMIT_MS = 5000;
/** Calls run, by kind: the runs must have exercised both. */
const ran = { good: 0, bad: 0 };

/**
 * The model: who holds each resource (a token this test got), and the tokens handed out.
 * @typedef {{ holders: Map<string, string>, tokens: string[] }} Model
 * @typedef {{ lock: Lock }} Real
 */

/** @template T @param {Promise<T>} call @returns {Promise<T>} */
function bounded(call) {
  /** @type {NodeJS.Timeout | undefined} */
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`a call did not settle within ${CALL_LIMIT_MS} ms`)), CALL_LIMIT_MS);
  });
  return /** @type {Promise<T>} */ (Promise.race([call, limit]).finally(() => clearTimeout(timer)));
}

/** Redis holds exactly what the model says, for every resource. @param {Model} model */
async function checkRedis(model) {
  const stored = await raw.mget(...RESOURCES.map((r) => `lock:${r}`));
  RESOURCES.forEach((resource, i) => {
    assert.equal(stored[i], model.holders.get(resource) ?? null, `lock:${resource}`);
  });
}

/** A bad-argument call rejects with a TypeError or RangeError, and leaves Redis as it was. */
async function rejectsAsBadInput(/** @type {() => Promise<unknown>} */ call, /** @type {Model} */ model) {
  let settled;
  try {
    settled = await bounded(call());
  } catch (err) {
    assert.ok(err instanceof TypeError || err instanceof RangeError, `a TypeError or RangeError, got ${err}`);
    assert.ok(!(err instanceof LockError));
    await checkRedis(model);
    return;
  }
  assert.fail(`a bad argument was accepted (resolved with ${String(settled)})`);
}

const resource = fc.constantFrom(...RESOURCES);
const resources = fc.uniqueArray(resource, { minLength: 1, maxLength: 3 });
/** A resource argument: one name, or an array of them (a lock over several). */
const target = fc.oneof(resource, resources);
/** Tokens: one the model handed out (by index), or one nobody holds. */
const tokenPick = fc.oneof(fc.nat(), fc.constant(-1));
const badResource = fc.oneof(
  fc.constant(''),
  fc.integer(),
  fc.constant(null),
  fc.constant(undefined),
  fc.boolean(),
  fc.object({ maxDepth: 1 }),
  fc.constant([]),
  fc.array(fc.oneof(fc.integer(), fc.constant('')), { minLength: 1, maxLength: 3 }),
);
const badTtl = fc.oneof(
  fc.integer({ min: -1000, max: 0 }),
  fc.double({ noDefaultInfinity: false, noNaN: false }).filter((x) => !Number.isInteger(x) || x > 2 ** 31 - 1 || x < 1),
  fc.constant(2 ** 31),
  fc.string({ maxLength: 3 }),
  fc.boolean(),
);
const badOpts = fc.oneof(
  badTtl.map((ttl) => ({ ttl })),
  fc.oneof(fc.integer({ min: -5, max: -1 }), fc.double({ min: 0.1, max: 0.9 }), fc.string({ maxLength: 2 })).map((retryCount) => ({ retryCount })),
  fc.oneof(fc.integer({ min: -5, max: -1 }), fc.string({ maxLength: 2 })).map((retryDelay) => ({ retryCount: 1, retryDelay })),
  fc.oneof(fc.string({ maxLength: 2 }), fc.integer()).map((autoExtend) => ({ autoExtend })),
  fc.oneof(fc.string({ maxLength: 2 }), fc.integer(), fc.object({ maxDepth: 0 })).map((signal) => ({ signal })),
  fc.oneof(fc.string({ maxLength: 2 }), fc.integer(), fc.boolean()),
);

/** @param {Model} model @param {number} pick */
function tokenOf(model, pick) {
  return pick < 0 || model.tokens.length === 0 ? 'f'.repeat(32) : model.tokens[pick % model.tokens.length];
}

/** Every command can run in any model state (a bad or refused call is an outcome too). */
class Command {
  check() {
    return true;
  }
}

/** @implements {fc.AsyncCommand<Model, Real>} */
class Acquire extends Command {
  /** @param {string | string[]} target @param {boolean} lease */
  constructor(target, lease) {
    super();
    this.target = target;
    this.lease = lease;
  }
  /** @param {Model} model @param {Real} real */
  async run(model, real) {
    ran.good++;
    const names = [this.target].flat();
    const free = names.every((r) => !model.holders.has(r));
    const token = this.lease
      ? ((await bounded(real.lock.acquireLease(this.target, { ttl: TTL })))?.token ?? null)
      : await bounded(real.lock.acquire(this.target, { ttl: TTL }));
    if (free) {
      assert.match(String(token), /^[0-9a-f]{32}$/, `${names} were free`);
      for (const r of names) model.holders.set(r, /** @type {string} */ (token));
      model.tokens.push(/** @type {string} */ (token));
    } else {
      assert.equal(token, null, `${names} were not all free`);
    }
    await checkRedis(model);
  }
  toString() {
    return `${this.lease ? 'acquireLease' : 'acquire'}(${JSON.stringify(this.target)})`;
  }
}

/** @implements {fc.AsyncCommand<Model, Real>} */
class Release extends Command {
  /** @param {string | string[]} target @param {number} pick */
  constructor(target, pick) {
    super();
    this.target = target;
    this.pick = pick;
  }
  /** @param {Model} model @param {Real} real */
  async run(model, real) {
    ran.good++;
    const token = tokenOf(model, this.pick);
    const names = [this.target].flat();
    const owned = names.filter((r) => model.holders.get(r) === token);
    const released = await bounded(real.lock.release(this.target, token));
    // One resource: released iff it held the token. Several: each key holding it goes; true
    // iff that was every one.
    assert.equal(released, owned.length === names.length, `release(${names}) with ${owned.length} owned`);
    for (const r of owned) model.holders.delete(r);
    await checkRedis(model);
  }
  toString() {
    return `release(${JSON.stringify(this.target)}, #${this.pick})`;
  }
}

/** @implements {fc.AsyncCommand<Model, Real>} */
class Extend extends Command {
  /** @param {string | string[]} target @param {number} pick */
  constructor(target, pick) {
    super();
    this.target = target;
    this.pick = pick;
  }
  /** @param {Model} model @param {Real} real */
  async run(model, real) {
    ran.good++;
    const token = tokenOf(model, this.pick);
    const names = [this.target].flat();
    const extended = await bounded(real.lock.extend(this.target, token, TTL));
    assert.equal(extended, names.every((r) => model.holders.get(r) === token));
    await checkRedis(model);
  }
  toString() {
    return `extend(${JSON.stringify(this.target)}, #${this.pick})`;
  }
}

/** @implements {fc.AsyncCommand<Model, Real>} */
class IsLocked extends Command {
  /** @param {string} resource */
  constructor(resource) {
    super();
    this.resource = resource;
  }
  /** @param {Model} model @param {Real} real */
  async run(model, real) {
    ran.good++;
    assert.equal(await bounded(real.lock.isLocked(this.resource)), model.holders.has(this.resource));
  }
  toString() {
    return `isLocked(${this.resource})`;
  }
}

/** @implements {fc.AsyncCommand<Model, Real>} */
class BadCall extends Command {
  /** @param {string} method @param {unknown[]} args */
  constructor(method, args) {
    super();
    this.method = method;
    this.args = args;
  }
  /** @param {Model} model @param {Real} real */
  async run(model, real) {
    const lock = /** @type {any} */ (real.lock);
    ran.bad++;
    await rejectsAsBadInput(() => lock[this.method](...this.args), model);
  }
  toString() {
    let args;
    try {
      args = JSON.stringify(this.args);
    } catch {
      args = '[unprintable]';
    }
    return `${this.method}(${args}) -> bad input`;
  }
}

const goodCommands = [
  fc.tuple(target, fc.boolean()).map(([t, lease]) => new Acquire(t, lease)),
  fc.tuple(target, tokenPick).map(([t, pick]) => new Release(t, pick)),
  fc.tuple(target, tokenPick).map(([t, pick]) => new Extend(t, pick)),
  resource.map((r) => new IsLocked(r)),
];
const commands = [
  // As many valid calls as bad ones.
  ...goodCommands,
  ...goodCommands,
  // Bad input, one bad argument at a time: the rest of the call is valid.
  badResource.map((r) => new BadCall('acquire', [r])),
  fc.tuple(target, badOpts).map(([t, o]) => new BadCall('acquire', [t, o])),
  fc.tuple(target, badOpts).map(([t, o]) => new BadCall('acquireLease', [t, o])),
  fc.tuple(badResource, tokenPick).map(([r]) => new BadCall('release', [r, 'f'.repeat(32)])),
  fc.tuple(target, fc.oneof(fc.integer(), fc.constant(null), fc.object({ maxDepth: 0 }))).map(([t, tok]) => new BadCall('release', [t, tok])),
  fc.tuple(target, badTtl.filter((x) => x !== undefined && x !== null)).map(([t, ttl]) => new BadCall('extend', [t, 'f'.repeat(32), ttl])),
  badResource.map((r) => new BadCall('isLocked', [r])),
  fc.tuple(target, fc.oneof(fc.string({ maxLength: 2 }), fc.integer(), fc.constant(null))).map(([t, fn]) => new BadCall('using', [t, fn])),
];

test('random call sequences, often with bad arguments, against a model: right outcomes, no hang, Redis as the model says', async () => {
  const lock = new Lock(server.url, { ttl: TTL });
  try {
    await fc.assert(
      fc.asyncProperty(fc.commands(commands, { maxCommands: 60, size: 'large' }), async (cmds) => {
        await raw.del(...RESOURCES.map((r) => `lock:${r}`));
        /** @type {Model} */
        const model = { holders: new Map(), tokens: [] };
        await fc.asyncModelRun(() => ({ model, real: { lock } }), cmds);
      }),
      { numRuns: 80, seed: Number(process.env.SDL_PROPERTY_SEED ?? Date.now() % 2 ** 31), verbose: 1 },
    );
  } finally {
    await lock.close();
    await raw.del(...RESOURCES.map((r) => `lock:${r}`));
  }
  assert.ok(ran.good > 100 && ran.bad > 100, `both kinds of call ran (${JSON.stringify(ran)})`);
});

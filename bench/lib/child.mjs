// @ts-check
// One measurement in a fresh process: `node child.mjs '<job json>'`, started by run.mjs.
// A fresh process per (scenario, implementation, repeat) keeps one library's heap, JIT state
// and timers out of another's numbers. The result goes back over the IPC channel.
//
// Every job first checks that the implementation behaves as a lock (see precheck) and fails
// loudly otherwise. Clocks: process.hrtime.bigint() (CLOCK_MONOTONIC on Linux: one clock for
// every process on the machine, so timestamps from different processes compare directly).
// Client CPU: process.cpuUsage() (the whole process: native threads such as v2's tokio workers
// count). Redis CPU: used_cpu_user + used_cpu_sys from INFO cpu of the bench's own servers.

import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { availableParallelism } from 'node:os';
import { createImpl, GaveUpError, CONTENDED } from './impls.mjs';
import { keyClients, serverClients } from './transports.mjs';
import { percentile, mean, ns } from './stats.mjs';
import { redisCpuSeconds, commandCalls, cpusAllowed } from './servers.mjs';

/**
 * target: where the servers are and how to reach them (transports.mjs).
 * @typedef {import('./transports.mjs').Target} Target
 * @typedef {import('./transports.mjs').Client} Client
 * @typedef {{ kind: 'serial', impl: string, target: Target, pairs: number, warmup: number, ttl: number }} SerialJob
 * @typedef {{ kind: 'throughput', impl: string, target: Target, loops: number, warmupMs: number, durationMs: number, ttl: number }} ThroughputJob
 * @typedef {{ kind: 'many', impl: string, target: Target, locks: number, ttl: number, holdMs: number }} ManyJob
 * @typedef {{ kind: 'contention', impl: string, target: Target, workerIds: number[], sections: number, sectionMs: number, check: boolean, timeoutMs: number }} ContentionJob
 * @typedef {SerialJob | ThroughputJob | ManyJob | ContentionJob} Job
 */

const now = () => process.hrtime.bigint();
const cpuMicros = () => {
  const u = process.cpuUsage();
  return u.user + u.system;
};

const immediate = () => new Promise((resolve) => setImmediate(resolve));

/**
 * A critical section of exactly `ms` (not less, rarely more): a timer for ms − 1, then
 * setImmediate polling (I/O keeps flowing) to the end. A plain setTimeout(2) averages about
 * 2.3 ms here and can fire after 1.3 ms, since libuv's loop clock is in whole milliseconds.
 * @param {number} ms
 */
async function work(ms) {
  const end = now() + BigInt(Math.round(ms * 1e6));
  if (ms > 1) await sleep(ms - 1);
  while (now() < end) await immediate();
}

/** @param {import('ioredis').Redis[]} admins */
async function redisCpu(admins) {
  let total = 0;
  for (const admin of admins) total += redisCpuSeconds(await admin.info('cpu'));
  return total;
}

/** Lock-writing commands (also when a Lua script runs them): during a hold window, each is one extension of one lock. */
const EXTEND_COMMANDS = ['set', 'pexpire', 'pexpireat', 'expire', 'expireat', 'getex'];
/** @param {import('ioredis').Redis[]} admins */
async function extendCalls(admins) {
  let total = 0;
  for (const admin of admins) {
    const calls = commandCalls(await admin.info('commandstats'));
    for (const name of EXTEND_COMMANDS) total += calls[name] ?? 0;
  }
  return total;
}

/**
 * Before timing: the implementation takes a free lock, a second acquire of it fails, release
 * frees it, it can be taken again, and of 16 simultaneous attempts on a fresh key at most one
 * wins (exactly one on a single server). Throws on any violation.
 * @param {import('./impls.mjs').Impl} impl @param {Client[]} admins where the keys are: one
 *   client, or one per Redlock master
 */
async function precheck(impl, admins) {
  const quorum = Math.floor(admins.length / 2) + 1;
  const r = `precheck:${process.pid}`;
  const fail = (/** @type {string} */ what) => {
    throw new Error(`CORRECTNESS: ${impl.name} on ${admins.length > 1 ? `${admins.length} Redlock masters` : 'one deployment'}: ${what}`);
  };
  /** @param {string} res */
  const holders = async (res) => {
    let n = 0;
    for (const admin of admins) n += await admin.exists(impl.redisKey(res));
    return n;
  };
  const h = await impl.acquire(r, 5000);
  if (!h) fail('could not acquire a free lock');
  if ((await holders(r)) < quorum) fail(`the lock key ${impl.redisKey(r)} is on fewer than ${quorum} server(s)`);
  if (await impl.acquire(r, 5000)) fail('a second acquire of a held lock succeeded');
  if (!(await impl.release(r, h))) fail('release of a held lock returned false');
  if ((await holders(r)) !== 0) fail('the lock key is still there after release');
  const again = await impl.acquire(r, 5000);
  if (!again) fail('could not acquire the lock again after release');
  await impl.release(r, again);
  const race = `precheck-race:${process.pid}`;
  const results = await Promise.all(Array.from({ length: 16 }, () => impl.acquire(race, 5000)));
  const winners = results.filter((x) => x);
  if (winners.length > 1) fail(`${winners.length} of 16 simultaneous acquires won`);
  if (admins.length === 1 && winners.length !== 1) fail(`${winners.length} of 16 simultaneous acquires won on a free lock`);
  for (const w of winners) await impl.release(race, w);
}

/** @param {SerialJob} job @param {import('./impls.mjs').Impl} impl @param {import('ioredis').Redis[]} admins */
async function serial(job, impl, admins) {
  const r = `serial:${process.pid}`;
  for (let i = 0; i < job.warmup; i++) {
    const h = await impl.acquire(r, job.ttl);
    if (!h) throw new Error('serial: acquire failed on a free lock');
    await impl.release(r, h);
  }
  const acquireNs = new Float64Array(job.pairs);
  const pairNs = new Float64Array(job.pairs);
  const redis0 = await redisCpu(admins);
  const cpu0 = cpuMicros();
  for (let i = 0; i < job.pairs; i++) {
    const t0 = now();
    const h = await impl.acquire(r, job.ttl);
    const t1 = now();
    if (!h) throw new Error('serial: acquire failed on a free lock');
    await impl.release(r, h);
    const t2 = now();
    acquireNs[i] = ns(t0, t1);
    pairNs[i] = ns(t0, t2);
  }
  const cpu = cpuMicros() - cpu0;
  const redis = (await redisCpu(admins)) - redis0;
  return {
    pairP50Us: percentile(pairNs, 0.5) / 1e3,
    pairP99Us: percentile(pairNs, 0.99) / 1e3,
    pairMeanUs: mean(pairNs) / 1e3,
    acquireP50Us: percentile(acquireNs, 0.5) / 1e3,
    acquireP99Us: percentile(acquireNs, 0.99) / 1e3,
    clientCpuPerPairUs: cpu / job.pairs,
    redisCpuPerPairUs: (redis * 1e6) / job.pairs,
    samples: job.pairs,
  };
}

/** @param {ThroughputJob} job @param {import('./impls.mjs').Impl} impl @param {import('ioredis').Redis[]} admins */
async function throughput(job, impl, admins) {
  let stop = false;
  let measuring = false;
  let pairs = 0;
  /** @type {number[]} */
  const latencies = [];
  const loop = async (/** @type {number} */ i) => {
    const r = `tp:${process.pid}:${i}`;
    while (!stop) {
      const t0 = now();
      const h = await impl.acquire(r, job.ttl);
      if (!h) throw new Error(`throughput: acquire of free key ${r} failed`);
      await impl.release(r, h);
      pairs++;
      if (measuring) latencies.push(ns(t0, now()));
    }
  };
  const loops = Array.from({ length: job.loops }, (_, i) => loop(i));
  const failed = Promise.all(loops).then(() => null);
  await Promise.race([sleep(job.warmupMs), failed]);
  const startedRedis = redisCpu(admins);
  // The snapshot is taken when the INFO request goes out; its reply comes a round trip later.
  const t0 = now();
  const cpu0 = cpuMicros();
  const elu0 = performance.eventLoopUtilization();
  const pairs0 = pairs;
  measuring = true;
  const redis0 = await startedRedis;
  await Promise.race([sleep(job.durationMs), failed]);
  const endedRedis = redisCpu(admins);
  const t1 = now();
  const cpu = cpuMicros() - cpu0;
  const elu = performance.eventLoopUtilization(elu0).utilization;
  const n = pairs - pairs0;
  measuring = false;
  const redis = (await endedRedis) - redis0;
  stop = true;
  await failed;
  const seconds = ns(t0, t1) / 1e9;
  return {
    pairsPerSec: n / seconds,
    clientCpuPerPairUs: cpu / n,
    redisCpuPerPairUs: (redis * 1e6) / n,
    elu,
    latencyP50Us: percentile(latencies, 0.5) / 1e3,
    latencyP99Us: percentile(latencies, 0.99) / 1e3,
    pairs: n,
    seconds,
  };
}

/** @param {ManyJob} job @param {import('./impls.mjs').Impl} impl @param {import('ioredis').Redis[]} admins */
async function many(job, impl, admins) {
  if (!impl.hold) return { supported: false };
  const hold = impl.hold;
  // Warm the code paths, then a clean baseline.
  for (let i = 0; i < 100; i++) {
    const h = await impl.acquire(`many-warm:${i}`, job.ttl);
    await impl.release(`many-warm:${i}`, h);
  }
  const gc = /** @type {undefined | (() => void)} */ (globalThis.gc);
  gc?.();
  await sleep(200);
  gc?.();
  const rssBase = process.memoryUsage.rss();
  const resources = Array.from({ length: job.locks }, (_, i) => `many:${i}`);
  /** @type {import('./impls.mjs').Held[]} */
  const held = [];
  const acquireStart = now();
  const CHUNK = 500;
  for (let i = 0; i < resources.length; i += CHUNK) {
    held.push(...(await Promise.all(resources.slice(i, i + CHUNK).map((r) => hold(r, job.ttl)))));
  }
  const acquireSeconds = ns(acquireStart, now()) / 1e9;
  // The hold window: from "all acquired" for holdMs.
  let rssPeak = process.memoryUsage.rss();
  const sampler = setInterval(() => {
    rssPeak = Math.max(rssPeak, process.memoryUsage.rss());
  }, 100);
  const calls0 = await extendCalls(admins);
  const redis0 = await redisCpu(admins);
  const cpu0 = cpuMicros();
  const elu0 = performance.eventLoopUtilization();
  await sleep(job.holdMs);
  const cpu = cpuMicros() - cpu0;
  const elu = performance.eventLoopUtilization(elu0).utilization;
  const redis = (await redisCpu(admins)) - redis0;
  const extends_ = (await extendCalls(admins)) - calls0;
  clearInterval(sampler);
  const rssEnd = process.memoryUsage.rss();
  rssPeak = Math.max(rssPeak, rssEnd);
  // Still held: the key exists on a majority (one contender per key here, so existence is ownership).
  let present = 0;
  const keys = resources.map((r) => impl.redisKey(r));
  for (let i = 0; i < keys.length; i += 1000) {
    const chunk = keys.slice(i, i + 1000);
    const counts = await Promise.all(admins.map((a) => a.exists(...chunk)));
    present += Math.max(...counts);
  }
  const reportedLost = held.filter((h) => h.lost()).length;
  const lostCount = impl.lostCount();
  await Promise.all(held.map((h) => h.release().catch(() => {})));
  return {
    supported: true,
    locks: job.locks,
    extends: extends_,
    extendsPerLock: extends_ / job.locks,
    clientCpuPerExtendUs: cpu / extends_,
    clientCpuMs: cpu / 1e3,
    redisCpuPerExtendUs: (redis * 1e6) / extends_,
    redisCpuMs: redis * 1e3,
    elu,
    rssGrowthMB: (rssPeak - rssBase) / 2 ** 20,
    rssEndGrowthMB: (rssEnd - rssBase) / 2 ** 20,
    heldAtEnd: present,
    lost: job.locks - present,
    lostReported: Math.max(reportedLost, lostCount ?? 0),
    acquireSeconds,
  };
}

/**
 * Workers of scenario 3 in this process. Waits for the parent's 'go' (a shared start time on
 * the monotonic clock), then each worker runs `sections` critical sections through the
 * library's idiomatic acquire-with-retries call. Times are µs after the start time.
 * @param {ContentionJob} job @param {import('./impls.mjs').Impl} impl @param {Client} admin
 */
async function contention(job, impl, admin) {
  const withLock = impl.withLock;
  if (!withLock) return { supported: false };
  const resource = CONTENDED;
  /** @type {bigint} */
  const startAt = await new Promise((resolve) => {
    process.on('message', (/** @type {any} */ m) => {
      if (m && m.type === 'go') resolve(BigInt(m.startAt));
    });
    send({ type: 'ready', hr: String(now()) });
  });
  while (now() < startAt - 1_000_000n) await sleep(0.5);
  while (now() < startAt) await new Promise((r) => setImmediate(r));
  const us = (/** @type {bigint} */ t) => Number(t - startAt) / 1e3;
  const deadline = startAt + BigInt(job.timeoutMs) * 1_000_000n;
  /** @type {Array<[number, number, number, number]>} worker, requested, start, end (µs) */
  const sections = [];
  /** @type {Record<number, number>} */
  const giveUps = {};
  /** @type {Record<number, number>} */
  const completed = {};
  const worker = async (/** @type {number} */ w) => {
    giveUps[w] = 0;
    completed[w] = 0;
    const me = `${process.pid}:${w}`;
    while (completed[w] < job.sections && now() < deadline) {
      const requested = now();
      try {
        await withLock(resource, async () => {
          const start = now();
          if (job.check) {
            // Overlap detector (as __test__/fixtures/counter-worker.mjs): a second holder inside
            // finds the marker taken, and the read-modify-write loses an increment.
            if ((await admin.set('bench:inside', me, 'NX')) !== 'OK') await admin.incr('bench:violations');
            const value = Number((await admin.get('bench:counter')) ?? 0);
            await work(job.sectionMs);
            await admin.set('bench:counter', String(value + 1));
            await admin.del('bench:inside');
          } else {
            await work(job.sectionMs);
          }
          sections.push([w, us(requested), us(start), us(now())]);
        });
        completed[w]++;
      } catch (err) {
        if (err instanceof GaveUpError) giveUps[w]++;
        else throw err;
      }
    }
  };
  // A worker stuck in a library's wait past the deadline is starved: report what was done.
  const deadlineMs = Number(deadline - now()) / 1e6 + 2000;
  const finished = await Promise.race([Promise.all(job.workerIds.map(worker)).then(() => true), sleep(deadlineMs).then(() => false)]);
  return { supported: true, sections, giveUps, completed, endUs: us(now()), timedOut: !finished, env: { cpuSeconds: cpuMicros() / 1e6, cpus: cpusAllowed('self') } };
}

/** @param {object} message */
function send(message) {
  return new Promise((resolve) => {
    if (!process.send) throw new Error('child.mjs must be started by run.mjs (IPC channel)');
    process.send(message, undefined, {}, () => resolve(undefined));
  });
}

async function main() {
  /** @type {Job} */
  const job = JSON.parse(process.argv[2]);
  process.on('disconnect', () => process.exit(1)); // the parent died: do not linger
  // admins: one per data server (INFO cpu, commandstats); stores: where the lock keys are.
  const admins = serverClients(job.target);
  const stores = keyClients(job.target);
  const impl = await createImpl(job.impl, job.target);
  await precheck(impl, stores);
  let data;
  switch (job.kind) {
    case 'serial':
      data = await serial(job, impl, admins);
      break;
    case 'throughput':
      data = await throughput(job, impl, admins);
      break;
    case 'many':
      data = await many(job, impl, admins);
      break;
    case 'contention':
      data = await contention(job, impl, stores[0]);
      break;
    default:
      throw new Error(`unknown job ${JSON.stringify(job)}`);
  }
  const env = { cpus: cpusAllowed('self'), parallelism: availableParallelism(), pid: process.pid, cpuSeconds: cpuMicros() / 1e6 };
  await send({ type: 'result', data: { ...data, env } });
  await impl.close();
  for (const admin of [...admins, ...stores]) admin.disconnect();
  process.exit(0);
}

main().catch(async (err) => {
  const message = err instanceof Error ? err.stack ?? err.message : String(err);
  try {
    await send({ type: 'error', message });
  } finally {
    process.exit(1);
  }
});

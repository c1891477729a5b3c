// @ts-check
// Fault scenarios with a verdict: 4 worker processes take turns on one resource, each through
// its own fault proxy to Redis, writing to a fenced store on a server no fault touches. Midway a
// fault strikes; afterwards the history checker (helpers/history.mjs) proves that no two
// sections the library reported as held overlapped with both writes accepted, or prints the
// overlap. Each scenario also checks what it is about (the partitioned holder's signal aborted
// before anyone else had the lock, the paused holder did not write late, ...).

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { RedisServer } from './helpers/redis-server.mjs';
import { FaultProxy } from './helpers/fault-proxy.mjs';
import { checkHistory } from './helpers/history.mjs';

const WORKER = fileURLToPath(new URL('./fixtures/history-worker.mjs', import.meta.url));
const WORKERS = 4;
const TTL = 300;
/** Writes per section, 20 ms apart: a section outlasts the ttl, so a fault mid-section costs the lease. */
const STEPS = 25;

/** @type {RedisServer} */
let store;
/** @type {import('ioredis').Redis} */
let storeRaw;

before(async () => {
  store = await RedisServer.start();
  storeRaw = store.client();
});
after(async () => {
  await store.stop();
});

/**
 * Runs the workers for `runMs`, striking with `fault(ctx)` once they are all going, and returns
 * the history and the checker's verdict.
 * @param {string} resource
 * @param {number} runMs
 * @param {(ctx: { lockServer: RedisServer, lockServers: RedisServer[], proxies: FaultProxy[], proxiesTo: FaultProxy[][], workers: import('node:child_process').ChildProcess[], freshHolder: () => Promise<number> }) => Promise<void>} fault
 * @param {{ lateWrites?: boolean, serverArgs?: string[], masters?: number }} [options] `masters`:
 *   Redlock over that many servers (each worker through a proxy of its own to each)
 */
async function scenario(resource, runMs, fault, options = {}) {
  const lockServers = await Promise.all(Array.from({ length: options.masters ?? 1 }, () => RedisServer.start(options.serverArgs ?? [])));
  const lockServer = lockServers[lockServers.length - 1];
  // proxiesTo[m][w]: worker w's proxy to server m.
  const proxiesTo = await Promise.all(lockServers.map((server) => Promise.all(Array.from({ length: WORKERS }, () => FaultProxy.start({ port: server.port })))));
  const proxies = proxiesTo[proxiesTo.length - 1];
  const until = Date.now() + runMs;
  /** @type {string[]} */
  const outputs = Array.from({ length: WORKERS }, () => '');
  const workers = proxies.map((_, id) => {
    const urls = proxiesTo.map((toServer) => toServer[id].url);
    const lockUrl = urls.length === 1 ? urls[0] : urls;
    const config = { lockUrl, storeUrl: store.url, resource, id, ttl: TTL, steps: STEPS, until, lateWrites: options.lateWrites ?? false };
    const child = spawn(process.execPath, [WORKER, JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (d) => (outputs[id] += d));
    child.stderr.on('data', (d) => (outputs[id] += d));
    return child;
  });
  const exits = workers.map((child) => new Promise((resolve) => child.on('close', (code, signal) => resolve(code ?? signal))));
  const lockRaw = lockServer.client();
  /**
   * Waits for a section to begin (the token on Redis changes), then names its worker: a fault
   * that strikes now finds the holder at the start of its section.
   */
  const freshHolder = async () => {
    const before = await lockRaw.get(`lock:${resource}`);
    for (let tries = 0; tries < 2000; tries++) {
      const token = await lockRaw.get(`lock:${resource}`);
      if (token !== null && token !== before) {
        const id = await storeRaw.hget(`history:${resource}:holders`, token);
        if (id !== null) return Number(id);
      }
      await sleep(1);
    }
    throw new Error('no new section began');
  };
  try {
    for (let waited = 0; outputs.some((o) => !o.includes('ready')); waited += 20) {
      assert.ok(waited < 20000, `workers did not start: ${outputs.join('\n')}`);
      await sleep(20);
    }
    await sleep(Math.min(1000, runMs / 4));
    await fault({ lockServer, lockServers, proxies, proxiesTo, workers, freshHolder });
    const codes = await Promise.race([Promise.all(exits), sleep(runMs + 30000, 'timeout', { ref: false })]);
    assert.deepEqual(codes, Array(WORKERS).fill(0), `every worker ends well:\n${outputs.join('\n')}`);
  } finally {
    for (const child of workers) child.kill('SIGKILL');
    for (const proxy of proxiesTo.flat()) await proxy.stop();
    for (const server of lockServers) await server.stop();
  }
  const raw = await storeRaw.lrange(`history:${resource}:sections`, 0, -1);
  /** @type {import('./helpers/history.mjs').Section[]} */
  const sections = raw.map((line) => JSON.parse(line));
  const summary = outputs.map((o) => o.trim().split('\n').at(-1)).join(' ');
  return { sections, summary };
}

/**
 * The checker's verdict, printed; fails on any overlap.
 * @param {string} name @param {import('./helpers/history.mjs').Section[]} sections @param {string} summary
 */
function verdictOf(name, sections, summary) {
  const verdict = checkHistory(sections);
  console.log(`${name}: ${JSON.stringify({ ...verdict, overlaps: verdict.overlaps.length })}; workers: ${summary}`);
  assert.deepEqual(verdict.overlaps, [], `${name}: sections held at once, both writes accepted`);
  assert.ok(verdict.writing >= 5, `${name}: enough sections ran (${verdict.writing})`);
  return verdict;
}

test('a holder partitioned from Redis past its ttl: its signal aborts before anyone else holds the lock', async () => {
  let partitioned = -1;
  const { sections, summary } = await scenario('hist-partition', 5000, async ({ proxies, freshHolder }) => {
    partitioned = await freshHolder();
    proxies[partitioned].blackhole('both');
    await sleep(4 * TTL);
    proxies[partitioned].heal();
  });
  verdictOf('partitioned holder', sections, summary);
  const cut = sections.find((s) => s.id === partitioned && s.abortedAt !== null);
  assert.ok(cut, `the partitioned worker's lease was lost: ${JSON.stringify(sections.filter((s) => s.id === partitioned))}`);
  const next = sections.filter((s) => s.id !== partitioned && s.start > cut.start).sort((a, b) => a.start - b.start)[0];
  assert.ok(next, 'another worker took the lock meanwhile');
  assert.ok(/** @type {number} */ (cut.abortedAt) <= next.start, `aborted at ${cut.abortedAt}, the next holder from ${next.start}`);
  assert.ok(cut.lastWrite === null || cut.lastWrite < next.start);
  console.log(`the partitioned holder's signal aborted ${next.start - /** @type {number} */ (cut.abortedAt)} ms before the next holder's grant`);
  assert.ok(cut.writes < STEPS, 'it stopped writing when the lease ran out');
});

test('the holder process SIGSTOPped past its ttl: once resumed it sees the lease gone, and the store refuses its late write', async () => {
  let paused = -1;
  const { sections, summary } = await scenario(
    'hist-pause',
    5000,
    async ({ workers, freshHolder }) => {
      paused = await freshHolder();
      workers[paused].kill('SIGSTOP');
      await sleep(4 * TTL);
      workers[paused].kill('SIGCONT');
    },
    { lateWrites: true },
  );
  verdictOf('paused holder', sections, summary);
  const resumed = sections.find((s) => s.id === paused && s.late);
  assert.ok(resumed, `the paused worker found remainingMs at 0: ${JSON.stringify(sections.filter((s) => s.id === paused))}`);
  const others = sections.filter((s) => s.id !== paused && s.accepted > 0 && s.start > resumed.start && s.start < resumed.end);
  assert.ok(others.length > 0, 'another worker held it and wrote while this one was stopped');
  assert.equal(resumed.lateAccepted, false, 'its late write carried a lower fence than one the store had seen: refused');
});

test('Redis SIGSTOPped for 2x ttl, then resumed: no overlap, and the workers carry on', async () => {
  let resumedAt = 0;
  const { sections, summary } = await scenario('hist-redis-stop', 5000, async ({ lockServer, freshHolder }) => {
    await freshHolder(); // at the start of a section: its lease runs out while Redis is stopped
    lockServer.child?.kill('SIGSTOP');
    await sleep(2 * TTL);
    lockServer.child?.kill('SIGCONT');
    resumedAt = Date.now();
  });
  const verdict = verdictOf('Redis stopped', sections, summary);
  assert.ok(verdict.lost >= 1, 'the lease held while Redis was stopped was lost');
  assert.ok(sections.some((s) => s.accepted > 0 && s.start > resumedAt), 'sections ran and wrote after Redis resumed');
});

test('CLIENT PAUSE for 2x ttl, longer than the command timeout: calls time out, no overlap, the workers carry on', async () => {
  let resumedAt = 0;
  const { sections, summary } = await scenario('hist-client-pause', 5000, async ({ lockServer, freshHolder }) => {
    await freshHolder();
    const admin = lockServer.client();
    await admin.call('CLIENT', 'PAUSE', String(2 * TTL), 'ALL');
    admin.disconnect();
    await sleep(2 * TTL);
    resumedAt = Date.now();
  });
  const verdict = verdictOf('CLIENT PAUSE', sections, summary);
  assert.ok(verdict.lost >= 1, 'the lease held through the pause was lost');
  assert.ok(sections.some((s) => s.accepted > 0 && s.start > resumedAt), 'sections ran and wrote after the pause');
});

test('DEBUG SLEEP for 2x ttl (the server busy, sockets open): no overlap, and the workers carry on', async () => {
  let resumedAt = 0;
  const { sections, summary } = await scenario(
    'hist-debug-sleep',
    5000,
    async ({ lockServer, freshHolder }) => {
      await freshHolder();
      const admin = lockServer.client();
      await admin.call('DEBUG', 'SLEEP', String((2 * TTL) / 1000)); // answers when the sleep ends
      admin.disconnect();
      resumedAt = Date.now();
    },
    { serverArgs: ['--enable-debug-command', 'yes'] },
  );
  const verdict = verdictOf('DEBUG SLEEP', sections, summary);
  assert.ok(verdict.lost >= 1, 'the lease held through the sleep was lost');
  assert.ok(sections.some((s) => s.accepted > 0 && s.start > resumedAt), 'sections ran and wrote after the sleep');
});

test('Redlock over 3 masters with one partitioned from every worker for 4x ttl, then healed: no overlap, locks kept coming', async () => {
  let cutAt = 0;
  let healedAt = 0;
  const { sections, summary } = await scenario(
    'hist-redlock-minority',
    6000,
    async ({ proxiesTo, freshHolder }) => {
      await freshHolder();
      for (const proxy of proxiesTo[0]) proxy.blackhole('both');
      cutAt = Date.now();
      await sleep(4 * TTL);
      for (const proxy of proxiesTo[0]) proxy.heal();
      healedAt = Date.now();
    },
    { masters: 3 },
  );
  verdictOf('Redlock minority partitioned', sections, summary);
  assert.ok(sections.some((s) => s.accepted > 0 && s.start > cutAt && s.start < healedAt), 'a majority kept granting while a master was cut off');
  assert.ok(sections.some((s) => s.accepted > 0 && s.start > healedAt), 'and after it came back');
});

test('Redis killed and restarted empty while a lease is held: the store refuses the fences that start over', async () => {
  let restartedAt = 0;
  const { sections, summary } = await scenario('hist-restart', 5000, async ({ lockServer, freshHolder }) => {
    await freshHolder();
    await lockServer.restart();
    restartedAt = Date.now();
  });
  verdictOf('Redis restarted empty', sections, summary);
  const after = sections.filter((s) => s.start > restartedAt);
  assert.ok(after.length > 0, 'sections ran after the restart');
  // Fences start again from the bottom on an empty server: the store refuses them (safe, not
  // live, as the README says of a restart without persistence).
  const highestBefore = Math.max(...sections.filter((s) => s.start < restartedAt && s.accepted > 0).map((s) => s.fence));
  for (const s of after) if (s.fence < highestBefore) assert.equal(s.accepted, 0, `fence ${s.fence} < ${highestBefore} accepted`);
  assert.ok(after.some((s) => s.fence < highestBefore && s.writes > 0), 'holders after the restart had lower fences and were refused');
});

test('the checker itself: it names two sections held at once with both writes accepted, and only those', () => {
  /** @param {number} id @param {number} fence @param {number} start @param {number | null} lastWrite @param {number} accepted */
  const section = (id, fence, start, lastWrite, accepted) => ({
    id, fence, token: `t${fence}`, start, lastWrite, writes: accepted, accepted, late: false, lateAccepted: false, abortedAt: null, end: (lastWrite ?? start) + 1,
  });
  assert.deepEqual(checkHistory([section(0, 1, 0, 100, 3), section(1, 2, 101, 200, 3)]).overlaps, []);
  const found = checkHistory([section(0, 1, 0, 100, 3), section(1, 2, 50, 200, 3), section(2, 3, 300, 400, 1)]).overlaps;
  assert.equal(found.length, 1);
  assert.match(found[0], /worker 0 \(fence 1\) held it 0\.\.100 and worker 1 \(fence 2\) from 50/);
  // A section whose writes were all refused is not a holder the store believed.
  assert.deepEqual(checkHistory([section(0, 5, 0, 100, 3), { ...section(1, 1, 50, null, 0), writes: 3 }]).overlaps, []);
});

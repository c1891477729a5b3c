#!/usr/bin/env node
// @ts-check
// `npm run soak [-- --cycles N --leases N --out DIR]`: a soak run against a redis-server it starts
// on a free port. Phase 1: N acquire/release cycles (default 1,000,000) from 64 concurrent loops on
// distinct keys. Phase 2: N auto-extended leases (default 100,000) coming and going, up to 2,000
// held at once, each held 0-1200 ms with a ttl of 1000 (so most are extended, some twice). Every
// second it collects garbage (node --expose-gc, as `npm run soak` runs it) and samples RSS, the V8
// heap, open file descriptors and Redis's key count. At the end it reports, per phase, the growth
// of RSS, heap and fds over the phase's last half (a least-squares slope times the half's
// duration, over its mean): "flat" is under 1%. Redis's key count must stay within the locks held
// plus one fence counter per Cluster slot (16,384). Any error or unhandled rejection fails the
// run. Writes results.md and results.json (default bench/results/soak/).

import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { Lock } from 'simple-distributed-lock';

const { values: flags } = parseArgs({
  options: { cycles: { type: 'string' }, leases: { type: 'string' }, out: { type: 'string' } },
});
const CYCLES = Number(flags.cycles ?? 1_000_000);
const LEASES = Number(flags.leases ?? 100_000);
const OUT = flags.out ?? 'bench/results/soak';
const LOOPS = 64;
const MAX_HELD = 2000;

let unhandled = 0;
process.on('unhandledRejection', () => void unhandled++);

/** @returns {Promise<number>} */
const freePort = () =>
  new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });

const port = await freePort();
const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
for (let i = 0; ; i++) {
  const up = await new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
  if (up) break;
  if (i > 200) throw new Error('redis-server did not start');
  await sleep(25);
}
const admin = new Redis({ port });

const lock = new Lock(`redis://127.0.0.1:${port}`, { commandTimeout: 5000 });
let errors = 0;
/** @type {string[]} */
const errorSamples = [];
/** @param {unknown} err */
const failed = (err) => {
  errors++;
  if (errorSamples.length < 5) errorSamples.push(err instanceof Error ? err.message : String(err));
};

/** @typedef {{ t: number, rss: number, heap: number, fds: number, keys: number, done: number }} Sample */
/** @type {Record<string, Sample[]>} */
const samples = { cycles: [], leases: [] };
let phase = 'cycles';
let done = 0;
const started = Date.now();
const collect = /** @type {{ gc?: () => void }} */ (globalThis).gc;
const sampler = setInterval(async () => {
  collect?.();
  const m = process.memoryUsage();
  const keys = await admin.dbsize().catch(() => -1);
  samples[phase].push({ t: (Date.now() - started) / 1000, rss: m.rss, heap: m.heapUsed, fds: readdirSync('/proc/self/fd').length, keys, done });
}, 1000);

// Phase 1: acquire/release cycles.
const phase1 = Date.now();
await Promise.all(
  Array.from({ length: LOOPS }, async (_, loop) => {
    const resource = `soak:cycle:${loop}`;
    while (done < CYCLES) {
      done++;
      try {
        const token = await lock.acquire(resource, { ttl: 10000 });
        if (token === null) throw new Error(`${resource} was held`);
        if (!(await lock.release(resource, token))) throw new Error(`${resource}: release found another owner`);
      } catch (err) {
        failed(err);
      }
    }
  }),
);
const phase1Seconds = (Date.now() - phase1) / 1000;

// Phase 2: auto-extended leases coming and going.
phase = 'leases';
done = 0;
let held = 0;
let next = 0;
const phase2 = Date.now();
await new Promise((resolve) => {
  const startOne = () => {
    while (held < MAX_HELD && next < LEASES) {
      const n = next++;
      held++;
      const resource = `soak:lease:${n}`;
      lock
        .acquire(resource, { ttl: 1000, autoExtend: true })
        .then(async (token) => {
          if (token === null) throw new Error(`${resource} was held`);
          await sleep(Math.floor(Math.random() * 1200));
          if (!(await lock.release(resource, token))) throw new Error(`${resource}: lost while held`);
        })
        .catch(failed)
        .finally(() => {
          held--;
          done++;
          if (done === LEASES) resolve(undefined);
          else startOne();
        });
    }
  };
  startOne();
});
const phase2Seconds = (Date.now() - phase2) / 1000;
await sleep(1500);
clearInterval(sampler);
const keysLeft = await admin.dbsize();
const metrics = lock.metrics();
await lock.close();
admin.disconnect();
server.kill('SIGKILL');

/**
 * Growth over the last half of `series`: least-squares slope × the half's duration ÷ its mean.
 * @param {Sample[]} series @param {'rss' | 'heap' | 'fds' | 'keys'} field
 */
function growth(series, field) {
  const half = series.slice(Math.floor(series.length / 2));
  if (half.length < 3) return NaN;
  const xs = half.map((s) => s.t);
  const ys = half.map((s) => s[field]);
  const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
  const my = ys.reduce((a, b) => a + b, 0) / ys.length;
  const slope = xs.reduce((a, x, i) => a + (x - mx) * (ys[i] - my), 0) / xs.reduce((a, x) => a + (x - mx) ** 2, 0);
  if (my === 0) return slope === 0 ? 0 : Infinity;
  return (slope * (xs[xs.length - 1] - xs[0])) / my;
}

const pct = (/** @type {number} */ g) => (Number.isFinite(g) ? `${(g * 100).toFixed(2)}%` : String(g));
const mb = (/** @type {number} */ b) => (b / 1e6).toFixed(1);
const rows = [];
for (const [name, series] of Object.entries(samples)) {
  const last = series.at(-1);
  for (const field of /** @type {const} */ (['rss', 'heap', 'fds'])) {
    const g = growth(series, field);
    const value = field === 'fds' ? String(last?.[field] ?? 0) : `${mb(last?.[field] ?? 0)} MB`;
    rows.push({ phase: name, field, last: value, growth: pct(g), flat: g < 0.01 });
  }
  // Keys: the locks held at the moment plus the fence counters, at most one per slot.
  const bound = (name === 'cycles' ? LOOPS : MAX_HELD) + 16384;
  const most = Math.max(...series.map((s) => s.keys));
  rows.push({ phase: name, field: 'keys', last: `${last?.keys ?? 0} (most ${most})`, growth: `bound ${bound}`, flat: most <= bound });
}
const ok = errors === 0 && unhandled === 0 && rows.every((r) => r.flat) && keysLeft <= 16384;
const md = [
  '# Soak run',
  '',
  `- **Command**: \`npm run soak -- --cycles ${CYCLES} --leases ${LEASES}\``,
  `- **Machine**: ${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores; Node.js ${process.version}`,
  `- **Phase 1**: ${CYCLES.toLocaleString('en-US')} acquire/release cycles from ${LOOPS} loops in ${phase1Seconds.toFixed(1)} s (${Math.round(CYCLES / phase1Seconds).toLocaleString('en-US')} pairs/s)`,
  `- **Phase 2**: ${LEASES.toLocaleString('en-US')} auto-extended leases (ttl 1000, held 0-1200 ms, up to ${MAX_HELD} at once) in ${phase2Seconds.toFixed(1)} s`,
  `- **Errors**: ${errors}${errorSamples.length ? ` (${errorSamples.join('; ')})` : ''}; unhandled rejections: ${unhandled}`,
  `- **Keys left in Redis** 1.5 s after the last release: ${keysLeft} (fence counters: at most one per slot)`,
  `- **lock.metrics()**: acquired ${metrics.acquired}, released ${metrics.released}, lost ${JSON.stringify(metrics.lost)}, held ${metrics.held}`,
  `- **Verdict**: ${ok ? 'pass' : 'FAIL'}`,
  '',
  'Growth over the last half of each phase (least-squares slope × that half\'s duration ÷ its mean, after a GC; flat: under 1%); Redis keys against their bound (the locks held plus one fence counter per slot):',
  '',
  '| Phase | Measure | At the end | Growth, last half | Flat / within bound |',
  '|---|---|---:|---:|---|',
  ...rows.map((r) => `| ${r.phase} | ${r.field} | ${r.last} | ${r.growth} | ${r.flat ? 'yes' : '**no**'} |`),
  '',
].join('\n');
mkdirSync(OUT, { recursive: true });
writeFileSync(join(OUT, 'results.md'), md);
writeFileSync(join(OUT, 'results.json'), `${JSON.stringify({ CYCLES, LEASES, phase1Seconds, phase2Seconds, errors, errorSamples, unhandled, keysLeft, metrics, rows, samples, ok }, null, 2)}\n`);
console.log(md);
process.exit(ok ? 0 : 1);

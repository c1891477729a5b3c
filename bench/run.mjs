#!/usr/bin/env node
// @ts-check
// `npm run bench [-- options]`: issue #6's benchmark with issue #11's transport axis. v2 beside
// plain ioredis (the floor for any JS client), v1 on ioredis, redlock and redis-semaphore, on
// redis-servers it starts itself: plain TCP, and for ioredis and v2 also TLS, Cluster, Sentinel.
//
//   --scenario <names>  serial,throughput,contention,many,redlock (or 1-5); default: all
//   --repeat N          repeats per measurement (default 3, 1 with --quick); medians are reported
//   --pin               bench client and its workers on CPU 0, each redis-server on CPU 1 (taskset)
//   --quick             small counts: a smoke run in about a minute (default out: bench/results/quick/)
//   --out <dir>         where results.json, results.md and chart.svg go (default bench/results/)
//   --impls <names>     ioredis,v1,v2,redlock,redis-semaphore (default), also v2-nofence, v2-traced, v2-before
//   --transports <names> tcp,tls,cluster,sentinel (default: all) for serial, throughput and
//                       contention (ioredis and v2 only off tcp); many and redlock: tcp only
//
// Every (scenario, implementation, repeat) runs in a fresh child process (lib/child.mjs); the
// implementations take turns within each repeat, in a rotating order, so that noise from other
// work on the machine falls on all of them alike. Transports run one after the other, each on
// its own servers (lib/deployments.mjs). See bench/README.md for what each number means.

import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { killAll, track, pinned, pinSelf, cpusAllowed } from './lib/servers.mjs';
import { LABELS, SINGLE_IMPLS, EXTRA_IMPLS, ANY_TRANSPORT_IMPLS, CONTENDED } from './lib/impls.mjs';
import { TRANSPORTS, TRANSPORT_LABELS, serverClients, keyClients, clientForKey } from './lib/transports.mjs';
import { startDeployment } from './lib/deployments.mjs';
import { median, percentile, mean } from './lib/stats.mjs';
import { LoadProbe } from './lib/load.mjs';
import { markdown, chart, transportChart, targets, transportTargets, ratio } from './lib/report.mjs';

/** @typedef {import('./lib/report.mjs').Row} Row */
/** @typedef {import('./lib/report.mjs').Scenario} Scenario */
/** @typedef {import('./lib/report.mjs').Metrics} Metrics */
/** @typedef {import('./lib/child.mjs').Job} Job */
/** @typedef {import('./lib/transports.mjs').Target} Target */
/** @typedef {import('./lib/transports.mjs').Client} Client */
/** @typedef {import('./lib/deployments.mjs').Deployment} Deployment */

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '..');
const CHILD = join(HERE, 'lib', 'child.mjs');
const SCENARIOS = ['serial', 'throughput', 'contention', 'many', 'redlock'];
/** The scenarios with a transport axis; the others run over plain TCP only. */
const TRANSPORT_SCENARIOS = ['serial', 'throughput', 'contention'];

// ---------------------------------------------------------------------------------------------
// Options

const { values: flags } = parseArgs({
  options: {
    scenario: { type: 'string' },
    repeat: { type: 'string' },
    pin: { type: 'boolean', default: false },
    quick: { type: 'boolean', default: false },
    out: { type: 'string' },
    impls: { type: 'string' },
    transports: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});
if (flags.help) {
  const source = readFileSync(fileURLToPath(import.meta.url), 'utf8');
  console.log(source.split('\n').slice(2, 20).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
  process.exit(0);
}
const quick = flags.quick === true;
const pin = flags.pin === true;
const repeat = flags.repeat === undefined ? (quick ? 1 : 3) : Number(flags.repeat);
if (!Number.isInteger(repeat) || repeat < 1) fatal(`--repeat must be a positive integer, got ${flags.repeat}`);
const selected = (flags.scenario ?? SCENARIOS.join(','))
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean)
  .map((s) => (/^[1-5]$/.test(s) ? SCENARIOS[Number(s) - 1] : s));
for (const s of selected) if (!SCENARIOS.includes(s)) fatal(`unknown scenario "${s}"; choose from ${SCENARIOS.join(', ')} (or 1-5)`);
const impls = (flags.impls ?? SINGLE_IMPLS.join(',')).split(',').map((s) => s.trim()).filter(Boolean);
for (const i of impls) if (![...SINGLE_IMPLS, ...EXTRA_IMPLS].includes(i)) fatal(`unknown implementation "${i}"`);
if (!impls.includes('ioredis') && (selected.includes('serial') || selected.includes('throughput'))) {
  fatal('scenarios serial and throughput report ratios against plain ioredis: keep ioredis in --impls');
}
/** @type {string[]} */
const ALL_TRANSPORTS = [...TRANSPORTS];
const transports = [...new Set((flags.transports ?? ALL_TRANSPORTS.join(',')).split(',').map((s) => s.trim()).filter(Boolean))];
transports.sort((a, b) => ALL_TRANSPORTS.indexOf(a) - ALL_TRANSPORTS.indexOf(b));
for (const t of transports) if (!ALL_TRANSPORTS.includes(t)) fatal(`unknown transport "${t}"; choose from ${ALL_TRANSPORTS.join(', ')}`);
if (transports.length === 0) fatal('--transports needs at least one of tcp,tls,cluster,sentinel');
const tcpOnly = selected.filter((s) => !TRANSPORT_SCENARIOS.includes(s));
if (!transports.includes('tcp') && tcpOnly.length === selected.length) {
  fatal(`scenario ${tcpOnly.join(', ')} runs over plain TCP only: add tcp to --transports`);
}
if (!transports.includes('tcp') && tcpOnly.length) console.log(`note: ${tcpOnly.join(', ')} run over plain TCP only; skipped (tcp is not in --transports)`);
const outDir = resolve(flags.out ?? (quick ? join(HERE, 'results', 'quick') : join(HERE, 'results')));

/** Counts per scenario: full, and --quick. */
const C = quick
  ? {
      serial: { pairs: 1000, warmup: 200, ttl: 10000 },
      throughput: { loops: 64, warmupMs: 200, durationMs: 700, ttl: 10000 },
      contention: { workers: 8, sections: 10, sectionMs: 2, checkWorkers: 4, checkSections: 2, timeoutMs: 30000, modes: [1, 4] },
      many: { locks: 1000, ttl: 1000, holdMs: 1500 },
      redlock: { pairs: 300, warmup: 100, loops: 64, warmupMs: 200, durationMs: 700, ttl: 10000 },
    }
  : {
      serial: { pairs: 10000, warmup: 1000, ttl: 10000 },
      throughput: { loops: 64, warmupMs: 1000, durationMs: 4000, ttl: 10000 },
      contention: { workers: 8, sections: 25, sectionMs: 2, checkWorkers: 8, checkSections: 5, timeoutMs: 60000, modes: [1, 4] },
      many: { locks: 10000, ttl: 2000, holdMs: 6000 },
      redlock: { pairs: 5000, warmup: 500, loops: 64, warmupMs: 1000, durationMs: 3000, ttl: 10000 },
    };

/** @param {string} message @returns {never} */
function fatal(message) {
  console.error(`bench: ${message}`);
  process.exit(2);
}

// ---------------------------------------------------------------------------------------------
// Processes: every child and redis-server dies with the bench, also on Ctrl-C or a crash.

process.on('exit', killAll);
for (const signal of /** @type {const} */ (['SIGINT', 'SIGTERM', 'SIGHUP'])) {
  process.on(signal, () => {
    console.error(`\nbench: ${signal}: stopping redis-servers and workers`);
    killAll();
    process.exit(130);
  });
}

/** pids of the running deployment's redis-servers (sentinel included), for the load probe. @type {Array<number | undefined>} */
const serverPids = [];
const CLIENT_CPU = pin ? 0 : null;
const REDIS_CPU = pin ? 1 : null;

/** @param {Job} job */
function spawnChild(job) {
  const [command, args] = pinned([process.execPath, '--expose-gc', CHILD, JSON.stringify(job)], CLIENT_CPU);
  return track(spawn(command, args, { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
}

/**
 * Runs one job in a fresh process; resolves to its result.
 * @param {Job} job @param {number} [timeoutMs]
 * @returns {Promise<Record<string, any>>}
 */
function runJob(job, timeoutMs = 300_000) {
  const probe = new LoadProbe(serverPids);
  return new Promise((resolvePromise, reject) => {
    const child = spawnChild(job);
    /** @type {Record<string, any> | null} */
    let result = null;
    /** @type {string | null} */
    let error = null;
    const timer = setTimeout(() => {
      error = `timed out after ${timeoutMs} ms`;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('message', (/** @type {any} */ m) => {
      if (m?.type === 'result') result = m.data;
      else if (m?.type === 'error') error = m.message;
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (result && pin && result.env?.cpus !== String(CLIENT_CPU)) warn(`${job.kind}/${job.impl}: child ran on CPUs ${result.env?.cpus}, not ${CLIENT_CPU}`);
      if (result) resolvePromise({ ...result, ...probe.stop(result.env?.cpuSeconds ?? 0) });
      else reject(new Error(error ?? `child exited with ${code ?? signal}`));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// The machine

function machine() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const cpuModel = /model name\s*:\s*(.+)/.exec(cpuinfo)?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown';
  const redisVersion = /v=([\d.]+)/.exec(spawnSync('redis-server', ['--version'], { encoding: 'utf8' }).stdout ?? '')?.[1] ?? '?';
  const git = (/** @type {string[]} */ args) =>
    spawnSync('git', args, { cwd: ROOT, encoding: 'utf8', env: { ...process.env, GIT_OPTIONAL_LOCKS: '0' } }).stdout?.trim() ?? '';
  const head = git(['rev-parse', '--short', 'HEAD']) || 'unknown';
  const dirty = git(['status', '--porcelain', '--untracked-files=no', '--', 'src', 'crates', 'lib', 'index.js', 'Cargo.toml', 'Cargo.lock']);
  const nativeDir = join(ROOT, 'lib', 'native');
  const addonFile = readdirSync(nativeDir).find((f) => f.endsWith('.node'));
  let addon = 'not built';
  if (addonFile) {
    const path = join(nativeDir, addonFile);
    const digest = createHash('sha256').update(readFileSync(path)).digest('hex').slice(0, 12);
    addon = `${addonFile} sha256:${digest}, built ${statSync(path).mtime.toISOString()}`;
  }
  const argv = process.argv.slice(2);
  const command = process.env.npm_lifecycle_event === 'bench' ? `npm run bench${argv.length ? ` -- ${argv.join(' ')}` : ''}` : `node ${relative(process.cwd(), fileURLToPath(import.meta.url))} ${argv.join(' ')}`.trim();
  return {
    date: new Date().toISOString(),
    command,
    argv: process.argv,
    cpuModel,
    cores: cpus().length,
    kernel: release(),
    node: process.version,
    redis: redisVersion,
    git: `${head}${dirty ? ' + uncommitted engine/facade changes' : ''}`,
    addon,
    loadStart: loadavg()[0].toFixed(2),
    loadEnd: '',
    pinning: '',
    repeat,
    quick,
    seconds: 0,
    /** @type {Record<string, number>} */
    scenarioSeconds: {},
    transports,
    /** How each transport's servers were started. @type {Record<string, string>} */
    deployments: {},
    /** @type {string[]} */
    warnings: [],
    config: C,
  };
}

// ---------------------------------------------------------------------------------------------
// Rows, repeats, medians and paired ratios

/** @param {string} id @param {string} impl @param {string} label @param {Record<string, string | number>} [attrs] @returns {Row} */
function newRow(id, impl, label, attrs) {
  return { id, impl, label, attrs, repeats: Array.from({ length: repeat }, () => null), median: {}, ratios: {}, status: 'ok' };
}

/** Things a reader of the results must know (pinning that did not hold, ...). @type {string[]} */
const warnings = [];
/** @param {string} message */
function warn(message) {
  if (warnings.includes(message)) return;
  warnings.push(message);
  console.error(`warning: ${message}`);
}

let failures = 0;
/** @param {Row} row @param {unknown} err */
function fail(row, err) {
  const message = err instanceof Error ? err.message : String(err);
  const correctness = message.includes('CORRECTNESS');
  row.status = 'failed';
  row.note = correctness ? `exclusion/correctness check failed: ${message.split('\n')[0].replace(/^.*CORRECTNESS:\s*/, '')}` : `error: ${message.split('\n')[0]}`;
  failures++;
  console.error(`\n!!! ${row.label}: ${correctness ? 'CORRECTNESS FAILURE' : 'FAILED'}\n${message}\n`);
}

/** @param {Row} row */
function finish(row) {
  if (row.status !== 'ok') return;
  const keys = new Set(row.repeats.flatMap((r) => (r ? Object.keys(r) : [])));
  for (const k of keys) row.median[k] = median(row.repeats.map((r) => (r && typeof r[k] === 'number' ? r[k] : NaN)));
}

/**
 * Median over repeats of row/base for one metric, each ratio taken within one repeat.
 * @param {Row | undefined} row @param {Row | undefined} base @param {string} metric @param {string} [baseMetric]
 */
function paired(row, base, metric, baseMetric = metric) {
  if (!row || !base || row.status !== 'ok' || base.status !== 'ok') return NaN;
  return median(row.repeats.map((r, i) => (r && base.repeats[i] ? r[metric] / /** @type {Metrics} */ (base.repeats[i])[baseMetric] : NaN)));
}

/** @template T @param {T[]} list @param {number} r */
const rotate = (list, r) => list.map((_, i) => list[(i + r) % list.length]);

/**
 * The bench's own clients of a target, made once: one per data server (FLUSHALL), and where the
 * keys are (the exclusion counter of scenario 3).
 * @type {Map<string, { servers: import('ioredis').Redis[], keys: Client[] }>}
 */
const admins = new Map();
/** @param {Target} target */
function adminsOf(target) {
  const id = JSON.stringify(target);
  let a = admins.get(id);
  if (!a) admins.set(id, (a = { servers: serverClients(target), keys: keyClients(target) }));
  return a;
}
/** Disconnects the admin clients (before their servers stop). */
function closeAdmins() {
  for (const a of admins.values()) for (const c of [...a.servers, ...a.keys]) c.disconnect();
  admins.clear();
}
/** @param {Target} target */
async function flush(target) {
  for (const admin of adminsOf(target).servers) await admin.flushall();
}

/** The implementations measured on a transport: all on tcp, ioredis and v2 elsewhere. @param {string} transport */
const implsOn = (transport) => (transport === 'tcp' ? impls : impls.filter((i) => ANY_TRANSPORT_IMPLS.includes(i)));

/**
 * A scenario's title: as it always was over plain TCP, with the transport elsewhere.
 * @param {string} transport @param {string} title
 */
const titled = (transport, title) => (transport === 'tcp' ? title : `${title} — ${TRANSPORT_LABELS[transport]}`);

/** The progress tag of a scenario on a transport: "serial" on tcp, "tls serial" elsewhere. @param {string} transport @param {string} name */
const tag = (transport, name) => (transport === 'tcp' ? name : `${transport} ${name}`);

/** @param {string} what */
const progress = (what) => process.stdout.write(`  ${what}\n`);

// ---------------------------------------------------------------------------------------------
// Scenarios

/** @param {Deployment} deployment @returns {Promise<Scenario>} */
async function serialScenario({ transport, target }) {
  const c = C.serial;
  const rows = implsOn(transport).map((impl) => newRow(impl, impl, LABELS[impl]));
  for (let r = 0; r < repeat; r++) {
    for (const row of rotate(rows, r)) {
      if (row.status !== 'ok') continue;
      await flush(target);
      try {
        const d = await runJob({ kind: 'serial', impl: row.impl, target, pairs: c.pairs, warmup: c.warmup, ttl: c.ttl });
        row.repeats[r] = d;
        progress(`[${tag(transport, 'serial')} ${r + 1}/${repeat}] ${row.impl}: pair p50 ${d.pairP50Us.toFixed(1)} µs, p99 ${d.pairP99Us.toFixed(1)} µs`);
      } catch (err) {
        fail(row, err);
      }
    }
  }
  rows.forEach(finish);
  const base = rows.find((r) => r.impl === 'ioredis');
  for (const row of rows) {
    row.ratios.p50VsIoredis = paired(row, base, 'pairP50Us');
    row.ratios.p99VsIoredis = paired(row, base, 'pairP99Us');
    for (const peer of rows) if (peer !== row) row.ratios[`p50Vs:${peer.impl}`] = paired(row, peer, 'pairP50Us');
  }
  return {
    name: 'serial',
    transport,
    title: titled(transport, '1. Serial: acquire + release, one pair at a time'),
    about: `One process, one key, ${c.pairs.toLocaleString('en-US')} acquire+release pairs per repeat after ${c.warmup} warm-up pairs; p50/p99 over every pair of the repeat. CPU columns: client process CPU (all threads) and Redis CPU, per pair. Ratios < 1 are faster than plain ioredis.`,
    rows,
    extra: {},
  };
}

/** @param {Deployment} deployment @returns {Promise<Scenario>} */
async function throughputScenario({ transport, target }) {
  const c = C.throughput;
  const rows = implsOn(transport).map((impl) => newRow(impl, impl, LABELS[impl]));
  for (let r = 0; r < repeat; r++) {
    for (const row of rotate(rows, r)) {
      if (row.status !== 'ok') continue;
      await flush(target);
      try {
        const d = await runJob({ kind: 'throughput', impl: row.impl, target, loops: c.loops, warmupMs: c.warmupMs, durationMs: c.durationMs, ttl: c.ttl });
        row.repeats[r] = d;
        progress(`[${tag(transport, 'throughput')} ${r + 1}/${repeat}] ${row.impl}: ${Math.round(d.pairsPerSec)} pairs/s, ${d.clientCpuPerPairUs.toFixed(1)} µs CPU/pair, ELU ${d.elu.toFixed(2)}`);
      } catch (err) {
        fail(row, err);
      }
    }
  }
  rows.forEach(finish);
  const base = rows.find((r) => r.impl === 'ioredis');
  for (const row of rows) {
    row.ratios.rateVsIoredis = paired(row, base, 'pairsPerSec');
    row.ratios.cpuVsIoredis = paired(row, base, 'clientCpuPerPairUs');
    row.ratios.redisCpuVsIoredis = paired(row, base, 'redisCpuPerPairUs');
    row.ratios.eluVsIoredis = paired(row, base, 'elu');
  }
  return {
    name: 'throughput',
    transport,
    title: titled(transport, '2. Throughput: 64 concurrent loops on distinct keys'),
    about: `One process, ${c.loops} loops each doing acquire+release on its own key, ${c.durationMs / 1000} s measured after ${c.warmupMs / 1000} s warm-up. Client CPU is process-wide (v2's native threads count); Redis CPU is the server's used_cpu_user+sys; event-loop utilization is Node's ELU over the window. Ratios: pairs/s > 1 is better, CPU and ELU < 1 are better.`,
    rows,
    extra: {},
  };
}

/**
 * Round-trip time to Redis from this (client-side) process: median of 500 PINGs, over the
 * transport, to the server that holds the contended key (its master, on a cluster).
 * @param {Target} target
 */
async function measureRtt(target) {
  const redis = await clientForKey(target, `lock:${CONTENDED}`);
  for (let i = 0; i < 100; i++) await redis.ping();
  const samples = [];
  for (let i = 0; i < 500; i++) {
    const t = process.hrtime.bigint();
    await redis.ping();
    samples.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  redis.disconnect();
  return median(samples);
}

/**
 * One contention run: `procs` processes share `workers` workers; all start at one instant of
 * the shared monotonic clock. Returns the merged sections and the processes' reports.
 * @param {string} impl @param {Target} target @param {number} procs @param {boolean} check
 */
async function contentionRound(impl, target, procs, check) {
  const c = C.contention;
  const sections = check ? c.checkSections : c.sections;
  const workers = check ? c.checkWorkers : c.workers;
  const perProc = Array.from({ length: procs }, (_, p) => Array.from({ length: workers }, (_, w) => w).filter((w) => w % procs === p));
  const probe = new LoadProbe(serverPids);
  const children = perProc.map((workerIds) =>
    spawnChild({ kind: 'contention', impl, target, workerIds, sections, sectionMs: c.sectionMs, check, timeoutMs: c.timeoutMs }),
  );
  const spawnedAt = process.hrtime.bigint();
  /** @type {string[]} */
  const clockProblems = [];
  const results = await new Promise((resolvePromise, reject) => {
    /** @type {any[]} */
    const done = [];
    let ready = 0;
    let settled = false;
    const finishAll = (/** @type {Error | null} */ err) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) {
        for (const child of children) child.kill('SIGKILL');
        reject(err);
      } else resolvePromise(done);
    };
    const timer = setTimeout(() => finishAll(new Error(`contention run timed out after ${c.timeoutMs + 15000} ms`)), c.timeoutMs + 15000);
    children.forEach((child, i) => {
      child.on('message', (/** @type {any} */ m) => {
        if (m?.type === 'ready') {
          // CLOCK_MONOTONIC is machine-wide: the child's reading must fall between our spawn and now.
          const hr = BigInt(m.hr);
          const receivedAt = process.hrtime.bigint();
          if (hr < spawnedAt || hr > receivedAt) clockProblems.push(`child ${i}: ${hr} not within [${spawnedAt}, ${receivedAt}]`);
          if (++ready === children.length) {
            const startAt = process.hrtime.bigint() + 100_000_000n;
            for (const ch of children) ch.send({ type: 'go', startAt: String(startAt) });
          }
        } else if (m?.type === 'result') {
          done[i] = m.data;
          if (done.filter(Boolean).length === children.length) finishAll(null);
        } else if (m?.type === 'error') {
          finishAll(new Error(m.message));
        }
      });
      child.on('close', (code) => {
        if (!done[i]) finishAll(new Error(`contention worker process exited with ${code} before reporting`));
      });
    });
  });
  if (clockProblems.length) throw new Error(`the monotonic clock is not shared across processes here: ${clockProblems.join('; ')}`);
  for (const r of /** @type {any[]} */ (results)) if (pin && r.env?.cpus !== String(CLIENT_CPU)) warn(`contention/${impl}: worker process ran on CPUs ${r.env?.cpus}`);
  const load = probe.stop(/** @type {any[]} */ (results).reduce((sum, r) => sum + (r.env?.cpuSeconds ?? 0), 0));
  return { results: /** @type {any[]} */ (results), sections, load };
}

/**
 * What one contention run shows: wall time, hand-overs, holder changes, starvation, and whether
 * two holders ever overlapped (by the shared clock).
 * @param {any[]} results @param {number} sectionsPerWorker @param {number} floorMs
 */
function analyseContention(results, sectionsPerWorker, floorMs) {
  if (results.some((r) => !r.supported)) return null;
  /** @type {Array<[number, number, number, number]>} */
  const all = results.flatMap((r) => r.sections).sort((a, b) => a[2] - b[2]);
  let overlaps = 0;
  let maxEnd = -Infinity;
  let changes = 0;
  /** @type {number[]} */
  const handovers = [];
  for (let i = 0; i < all.length; i++) {
    const [w, , start, end] = all[i];
    if (start < maxEnd) overlaps++;
    if (i > 0 && all[i - 1][0] !== w) {
      changes++;
      handovers.push((start - all[i - 1][3]) / 1e3);
    }
    maxEnd = Math.max(maxEnd, end);
  }
  /** @type {Record<string, number>} */
  const completed = Object.assign({}, ...results.map((r) => r.completed));
  /** @type {Record<string, number>} */
  const giveUps = Object.assign({}, ...results.map((r) => r.giveUps));
  const starved = Object.values(completed).filter((n) => n < sectionsPerWorker).length;
  // A run with starved workers did not finish: its wall time is the deadline, at least.
  const wallMs = starved ? Math.max(maxEnd / 1e3, C.contention.timeoutMs) : maxEnd / 1e3;
  return {
    overlaps,
    metrics: {
      wallMs,
      wallOverFloor: wallMs / floorMs,
      handoverP50Ms: percentile(handovers, 0.5),
      handoverP90Ms: percentile(handovers, 0.9),
      holderChanges: changes,
      giveUps: Object.values(giveUps).reduce((a, b) => a + b, 0),
      starvedWorkers: starved,
      sectionsDone: all.length,
      longestWaitMs: Math.max(...all.map((s) => (s[2] - s[1]) / 1e3)),
      sectionMeanMs: mean(all.map((s) => (s[3] - s[2]) / 1e3)),
    },
  };
}

/** @param {Deployment} deployment @returns {Promise<Scenario>} */
async function contentionScenario({ transport, target }) {
  const c = C.contention;
  const rttMs = await measureRtt(target);
  const totalSections = c.workers * c.sections;
  const floorMs = totalSections * (c.sectionMs + rttMs);
  const measured = implsOn(transport);
  progress(`[${tag(transport, 'contention')}] Redis RTT (PING p50) ${rttMs.toFixed(3)} ms; floor ${floorMs.toFixed(1)} ms`);
  /** @type {Row[]} */
  const rows = [];
  for (const procs of c.modes) {
    for (const impl of measured) {
      const label = impl === 'ioredis' ? 'ioredis, SET NX polled every 50 ms (reference)' : LABELS[impl];
      rows.push(newRow(`${impl}@${procs}`, impl, label, { processes: procs }));
    }
  }
  // Before timing: exclusion, with a Redis read-modify-write counter and an "inside" marker.
  for (const row of rows) {
    const procs = /** @type {number} */ (row.attrs?.processes);
    try {
      await flush(target);
      const { results, sections } = await contentionRound(row.impl, target, procs, true);
      const analysis = analyseContention(results, sections, floorMs);
      if (!analysis) {
        row.status = 'n/a';
        continue;
      }
      const admin = adminsOf(target).keys[0];
      const counter = Number((await admin.get('bench:counter')) ?? 0);
      const violations = Number((await admin.get('bench:violations')) ?? 0);
      const expected = analysis.metrics.sectionsDone;
      if (violations || counter !== expected || analysis.overlaps) {
        throw new Error(`CORRECTNESS: ${row.impl} (${procs} processes): ${violations} overlap(s) seen inside, counter ${counter} for ${expected} sections, ${analysis.overlaps} overlapping interval(s)`);
      }
      progress(`[${tag(transport, 'contention check')}] ${row.impl} × ${procs} process(es): exclusion held (${expected} sections, counter ${counter})`);
    } catch (err) {
      fail(row, err);
    }
  }
  for (let r = 0; r < repeat; r++) {
    for (const procs of c.modes) {
      for (const row of rotate(rows.filter((x) => x.attrs?.processes === procs), r)) {
        if (row.status !== 'ok') continue;
        await flush(target);
        try {
          const { results, sections, load } = await contentionRound(row.impl, target, procs, false);
          const analysis = /** @type {NonNullable<ReturnType<typeof analyseContention>>} */ (analyseContention(results, sections, floorMs));
          if (analysis.overlaps) throw new Error(`CORRECTNESS: ${row.impl}: ${analysis.overlaps} critical sections overlapped (shared clock)`);
          row.repeats[r] = { ...analysis.metrics, ...load };
          const m = analysis.metrics;
          progress(
            `[${tag(transport, 'contention')} ${r + 1}/${repeat}] ${row.impl} × ${procs}: wall ${m.wallMs.toFixed(0)} ms (${ratio(m.wallOverFloor)} floor), hand-over p50 ${m.handoverP50Ms.toFixed(2)} ms, ${m.holderChanges} changes, ${m.giveUps} give-ups, ${m.starvedWorkers} starved`,
          );
        } catch (err) {
          fail(row, err);
        }
      }
    }
  }
  rows.forEach(finish);
  for (const row of rows) row.ratios.wallVsFloor = row.median.wallOverFloor;
  const how = measured.map((i) => `- ${LABELS[i]}: ${HOW[i] ?? ''}`).join('\n');
  return {
    name: 'contention',
    transport,
    title: titled(transport, `3. Contention: ${c.workers} workers × ${c.sections} critical sections of ${c.sectionMs} ms on one key`),
    about:
      `${c.workers} workers × ${c.sections} sections of ${c.sectionMs} ms (a ${c.sectionMs - 1} ms timer, then setImmediate polling to exactly ${c.sectionMs} ms: a bare setTimeout(2) averages 2.3 ms), all on one key, each worker looping on the library's own acquire-with-retries call with its default settings; in one process, and across ${Math.max(...c.modes)} processes (workers spread evenly). ` +
      `**Wall**: start to the last section's end. **Floor**: sections × (2 ms + one Redis round trip, PING p50 = ${rttMs.toFixed(3)} ms${transport === 'tcp' ? '' : ` over ${TRANSPORT_LABELS[transport]}${transport === 'cluster' ? ", to the key's master" : ''}`}). ` +
      `**Hand-over**: from a holder calling release to the next holder's acquire returning, only where the holder changes (shared monotonic clock). **Give-ups**: the library's retry budget ran out (the worker calls again). **Starved**: workers that did not finish all sections before ${c.timeoutMs / 1000} s. ` +
      `Before timing, each library ran ${c.checkWorkers} workers × ${c.checkSections} sections in each mode with a Redis read-modify-write counter and an "inside" marker: exclusion held for every row shown.\n\nHow each waits:\n${how}`,
    rows,
    extra: { rttMs, floorMs, totalSections, sectionMs: c.sectionMs, modes: c.modes },
  };
}

/** @type {Record<string, string>} */
const HOW = {
  ioredis: 'a plain loop, SET NX PX then sleep 50 ms (not a library; the floor is the formula row)',
  v1: '`lock.using(r, fn, { retryCount: Infinity })`: retryDelay 200 ms (default); v1\'s default retryCount 0 would not wait at all',
  v2: '`lock.using(r, fn, { retryCount: Infinity })`: retryDelay 200 ms (default) plus release notifications',
  'v2-nofence': 'as v2, with `fencing: false`',
  'v2-traced': 'as v2, with every tracing channel subscribed',
  redlock: '`redlock.using([key], 10000, fn)`: retryCount 10, retryDelay 200 ms, retryJitter 100 ms (defaults)',
  'redis-semaphore': '`new Mutex(redis, r).acquire()`: retryInterval 10 ms, acquireTimeout 10 s (defaults)',
};

/** @param {Deployment} deployment @returns {Promise<Scenario>} */
async function manyScenario({ target }) {
  const c = C.many;
  const rows = impls.map((impl) => newRow(impl, impl, LABELS[impl]));
  const ioredisRow = rows.find((r) => r.impl === 'ioredis');
  if (ioredisRow) {
    ioredisRow.status = 'n/a';
    ioredisRow.note = 'a bare client has no auto-extension';
  }
  for (let r = 0; r < repeat; r++) {
    for (const row of rotate(rows, r)) {
      if (row.status !== 'ok') continue;
      await flush(target);
      try {
        const d = await runJob({ kind: 'many', impl: row.impl, target, locks: c.locks, ttl: c.ttl, holdMs: c.holdMs });
        if (!d.supported) {
          row.status = 'n/a';
          continue;
        }
        row.repeats[r] = d;
        progress(
          `[many ${r + 1}/${repeat}] ${row.impl}: ${d.extends} extends (${d.extendsPerLock.toFixed(2)}/lock), ${d.clientCpuPerExtendUs.toFixed(1)} µs CPU/extend, RSS +${d.rssGrowthMB.toFixed(1)} MB, held ${d.heldAtEnd}/${d.locks}`,
        );
      } catch (err) {
        fail(row, err);
      }
    }
  }
  rows.forEach(finish);
  const v1 = rows.find((r) => r.impl === 'v1');
  for (const row of rows) {
    row.ratios.cpuVsV1 = paired(row, v1, 'clientCpuPerExtendUs');
    row.ratios.rssVsV1 = paired(row, v1, 'rssGrowthMB');
    row.ratios.redisCpuVsV1 = paired(row, v1, 'redisCpuPerExtendUs');
  }
  return {
    name: 'many',
    transport: 'tcp',
    title: `4. Many held locks: ${c.locks.toLocaleString('en-US')} auto-extended locks`,
    about:
      `${c.locks.toLocaleString('en-US')} locks with ttl ${c.ttl} ms, taken with each library's own auto-extension, held ${c.holdMs / 1000} s from the moment all are held; one fresh process per implementation. ` +
      `**Extends**: lock-writing commands Redis executed in the window (SET/PEXPIRE..., also inside scripts, from INFO commandstats): one per lock extension, however they were batched. ` +
      `Client CPU and Redis CPU are over the window. **RSS growth**: peak RSS during the hold minus RSS before the first acquire (after a GC). **Held at end**: keys still present at the end. ` +
      `Intervals differ by design: v1 and v2 extend every ttl/2, redis-semaphore every 0.8 × ttl, redlock 500 ms before expiry; CPU is per extend, so that is comparable.\n\n` +
      impls.map((i) => `- ${LABELS[i]}: ${HOLD[i] ?? ''}`).join('\n'),
    rows,
    extra: {},
  };
}

/** @type {Record<string, string>} */
const HOLD = {
  ioredis: 'n/a',
  v1: '`lock.acquire(r, { ttl, autoExtend: true })`: one setInterval per lock',
  v2: '`lock.acquire(r, { ttl, autoExtend: true })`: one native scheduler, batched extends',
  'v2-nofence': 'as v2, with `fencing: false`',
  'v2-traced': 'as v2, with every tracing channel subscribed',
  redlock: '`redlock.using([key], ttl, routine)` (the routine waits out the hold)',
  'redis-semaphore': '`new Mutex(redis, r, { lockTimeout: ttl }).acquire()` (refresh timer per lock)',
};

/** @param {number[]} masters @returns {Promise<Scenario>} */
async function redlockScenario(masters) {
  const c = C.redlock;
  /** @type {Row[]} */
  const rows = [];
  for (const impl of ['v2', 'redlock'].filter((i) => impls.includes(i))) {
    for (const n of [1, 3]) rows.push(newRow(`${impl}-${n}`, impl, `${impl === 'v2' ? 'v2' : 'redlock'} on ${n} master${n > 1 ? 's' : ''}`, { masters: n }));
  }
  for (let r = 0; r < repeat; r++) {
    for (const row of rotate(rows, r)) {
      if (row.status !== 'ok') continue;
      /** @type {Target} */
      const target = { transport: 'tcp', ports: masters.slice(0, /** @type {number} */ (row.attrs?.masters)) };
      try {
        await flush(target);
        const s = await runJob({ kind: 'serial', impl: row.impl, target, pairs: c.pairs, warmup: c.warmup, ttl: c.ttl });
        await flush(target);
        const t = await runJob({ kind: 'throughput', impl: row.impl, target, loops: c.loops, warmupMs: c.warmupMs, durationMs: c.durationMs, ttl: c.ttl });
        row.repeats[r] = {
          acquireP50Us: s.acquireP50Us,
          acquireP99Us: s.acquireP99Us,
          pairP50Us: s.pairP50Us,
          pairP99Us: s.pairP99Us,
          pairsPerSec: t.pairsPerSec,
          clientCpuPerPairUs: t.clientCpuPerPairUs,
          redisCpuPerPairUs: t.redisCpuPerPairUs,
          elu: t.elu,
          otherLoadCpus: (s.otherLoadCpus + t.otherLoadCpus) / 2,
          stealCpus: (s.stealCpus + t.stealCpus) / 2,
        };
        progress(`[redlock ${r + 1}/${repeat}] ${row.label}: acquire p50 ${s.acquireP50Us.toFixed(1)} µs, pair p50 ${s.pairP50Us.toFixed(1)} µs, ${Math.round(t.pairsPerSec)} pairs/s`);
      } catch (err) {
        fail(row, err);
      }
    }
  }
  rows.forEach(finish);
  const get = (/** @type {string} */ id) => rows.find((r) => r.id === id);
  for (const row of rows) {
    row.ratios.acquireVsOneMaster = paired(row, get(`${row.impl}-1`), 'acquireP50Us');
    row.ratios.acquireVsV2One = paired(row, get('v2-1'), 'acquireP50Us');
    row.ratios.p50VsRedlock = paired(row, get(`redlock-${row.attrs?.masters}`), 'pairP50Us');
    row.ratios.rateVsRedlock = paired(row, get(`redlock-${row.attrs?.masters}`), 'pairsPerSec');
  }
  return {
    name: 'redlock',
    transport: 'tcp',
    title: '5. Redlock: 3 independent masters',
    about: `v2 (\`new Lock([url1, url2, url3])\`) and redlock (\`new Redlock([3 ioredis])\`), each also on one master for reference. Latency: ${c.pairs.toLocaleString('en-US')} serial pairs after ${c.warmup} warm-up; throughput: ${c.loops} loops on distinct keys for ${c.durationMs / 1000} s. "× redlock" compares with redlock on the same number of masters; Redis CPU is summed over the masters.${pin ? ' All masters share CPU 1.' : ''}`,
    rows,
    extra: { masters: masters.length },
  };
}

// ---------------------------------------------------------------------------------------------
// Main

/**
 * Starts a transport's servers (pinned like the others); a deployment that does not start is a
 * failure of the run, reported, and the other transports still run.
 * @param {string} transport @param {boolean} redlock tcp: also scenario 5's masters
 * @returns {Promise<Deployment | null>}
 */
async function deploy(transport, redlock) {
  const startedAt = Date.now();
  try {
    const deployment = await startDeployment(transport, { cpu: REDIS_CPU, redlock });
    serverPids.push(...deployment.servers.map((s) => s.child.pid));
    const cpus = deployment.servers.map((s) => s.cpus());
    if (pin && cpus.some((c) => c !== String(REDIS_CPU))) warn(`${transport}: redis-server(s) on CPUs ${cpus.join('/')}, not ${REDIS_CPU}`);
    console.log(`-- ${TRANSPORT_LABELS[transport]} (started in ${Date.now() - startedAt} ms): ${deployment.about}\n`);
    return deployment;
  } catch (err) {
    failures++;
    warn(`${transport}: the servers did not start, its scenarios were not run: ${err instanceof Error ? err.message.split('\n')[0] : err}`);
    return null;
  }
}

async function main() {
  const started = Date.now();
  if (pin) pinSelf(0);
  const meta = machine();
  if (Number(meta.loadStart) > 0.5) {
    console.log(`note: load average ${meta.loadStart} at start: other work is running; expect noise (ratios within a repeat are paired to absorb some of it)`);
  }
  console.log(`bench: ${meta.command}\n  ${meta.cpuModel}, ${meta.cores} cores, Node ${meta.node}, Redis ${meta.redis}; v2 ${meta.git}; scenarios: ${selected.join(', ')}; transports: ${transports.join(', ')}; repeats: ${repeat}${quick ? ' (quick)' : ''}`);
  console.log(`  pinning: ${pin ? `bench client and workers on CPU ${cpusAllowed('self')}, every redis-server on CPU ${REDIS_CPU}` : 'none'}\n`);

  /** @type {Scenario[]} */
  const scenarios = [];
  /** @type {Record<string, number>} */
  const scenarioSeconds = {};
  /** The CPUs each redis-server was allowed, read from /proc. @type {string[]} */
  const serverCpus = [];
  for (const transport of transports) {
    const names = selected.filter((name) => transport === 'tcp' || TRANSPORT_SCENARIOS.includes(name));
    if (names.length === 0) continue;
    const deployment = await deploy(transport, names.includes('redlock'));
    if (!deployment) continue;
    meta.deployments[transport] = deployment.about;
    serverCpus.push(...deployment.servers.map((s) => s.cpus()));
    try {
      for (const name of names) {
        const key = tag(transport, name);
        console.log(`== ${key}`);
        const scenarioStarted = Date.now();
        if (name === 'serial') scenarios.push(await serialScenario(deployment));
        if (name === 'throughput') scenarios.push(await throughputScenario(deployment));
        if (name === 'contention') scenarios.push(await contentionScenario(deployment));
        if (name === 'many') scenarios.push(await manyScenario(deployment));
        if (name === 'redlock') scenarios.push(await redlockScenario(deployment.redlockPorts));
        scenarioSeconds[key] = Math.round((Date.now() - scenarioStarted) / 1000);
        console.log(`   (${scenarioSeconds[key]} s)`);
      }
    } finally {
      closeAdmins();
      await deployment.stop();
      serverPids.length = 0;
    }
  }
  const cpuSet = [...new Set(serverCpus)];
  meta.pinning = pin
    ? `bench client and workers on CPU ${cpusAllowed('self')}, redis-server(s) on CPU ${cpuSet.join('/')} (all ${serverCpus.length}, sentinel included; taskset; verified in /proc)`
    : 'none (client and Redis share all CPUs)';
  meta.loadEnd = loadavg()[0].toFixed(2);
  meta.seconds = Math.round((Date.now() - started) / 1000);
  meta.scenarioSeconds = scenarioSeconds;
  meta.warnings = warnings;

  mkdirSync(outDir, { recursive: true });
  const perTransport = transportChart(scenarios, meta);
  const md = markdown(meta, scenarios, 'chart.svg', perTransport ? 'chart-transports.svg' : null);
  const json = { meta, scenarios, targets: targets(scenarios), transportTargets: transportTargets(scenarios), failures };
  const write = (/** @type {string} */ name, /** @type {string} */ text) => {
    const path = join(outDir, name);
    writeFileSync(`${path}.tmp`, text);
    renameSync(`${path}.tmp`, path);
  };
  write('results.json', `${JSON.stringify(json, null, 2)}\n`);
  write('results.md', md);
  write('chart.svg', chart(scenarios, meta));
  if (perTransport) write('chart-transports.svg', perTransport);
  console.log(`\n${md}`);
  console.log(`Wrote ${['results.json', 'results.md', 'chart.svg', ...(perTransport ? ['chart-transports.svg'] : [])].map((f) => relative(process.cwd(), join(outDir, f))).join(', ')} in ${meta.seconds} s.`);
  if (failures) {
    console.error(`\nbench: ${failures} implementation(s) FAILED (see the tables and the messages above).`);
    process.exitCode = 1;
  }
}

main().catch((err) => {
  console.error(err);
  killAll();
  process.exit(1);
});

// @ts-check
// Markdown tables, the targets check and the SVG chart, from the aggregated results.

/**
 * @typedef {Record<string, number>} Metrics
 * @typedef {object} Row
 * @property {string} id
 * @property {string} label
 * @property {string} impl
 * @property {Record<string, string | number>} [attrs]
 * @property {Array<Metrics | null>} repeats
 * @property {Metrics} median
 * @property {Metrics} ratios
 * @property {'ok' | 'n/a' | 'failed'} status
 * @property {string} [note]
 * @typedef {{ name: string, transport: string, title: string, about: string, rows: Row[], extra: Record<string, any> }} Scenario
 * @typedef {{ value: string, met: boolean | null, number?: number }} Reached
 */

import { TRANSPORTS, TRANSPORT_LABELS } from './transports.mjs';

/** The scenarios over plain TCP (the issue #6 tables, targets and chart). @param {Scenario[]} scenarios */
const overTcp = (scenarios) => scenarios.filter((s) => s.transport === 'tcp');

/** @param {number | undefined} v @param {number} [digits] */
export function num(v, digits = 0) {
  if (v === undefined || !Number.isFinite(v)) return '–';
  return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** Significant-figure formatting for values of any size. @param {number | undefined} v */
export function sig(v) {
  if (v === undefined || !Number.isFinite(v)) return '–';
  const a = Math.abs(v);
  if (a >= 1000) return num(v, 0);
  if (a >= 100) return num(v, 0);
  if (a >= 10) return num(v, 1);
  if (a >= 1) return num(v, 2);
  return num(v, 3);
}

/** @param {number | undefined} v */
export function ratio(v) {
  if (v === undefined || !Number.isFinite(v)) return '–';
  return `${v >= 10 ? v.toFixed(1) : v.toFixed(2)}×`;
}

/** @param {string[]} header @param {string[][]} rows */
function table(header, rows) {
  const lines = [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`];
  for (const row of rows) lines.push(`| ${row.join(' | ')} |`);
  return lines.join('\n');
}

/**
 * A row that could not be measured: "n/a" (the library cannot do it) or the failure.
 * @param {Row} row @param {number} columns
 */
function unmeasured(row, columns) {
  const text = row.status === 'n/a' ? 'n/a' : '**FAILED**';
  return [row.label, ...Array.from({ length: columns - 1 }, (_, i) => (i === 0 ? `${text}${row.note ? ` (${row.note})` : ''}` : ''))];
}

/** @param {Scenario} s */
function serialTable(s) {
  const header = ['Implementation', 'pair p50 (µs)', 'pair p99 (µs)', 'acquire p50 (µs)', 'client CPU/pair (µs)', 'Redis CPU/pair (µs)', 'p50 × ioredis', 'p99 × ioredis'];
  return table(
    header,
    s.rows.map((r) =>
      r.status !== 'ok'
        ? unmeasured(r, header.length)
        : [r.label, sig(r.median.pairP50Us), sig(r.median.pairP99Us), sig(r.median.acquireP50Us), sig(r.median.clientCpuPerPairUs), sig(r.median.redisCpuPerPairUs), ratio(r.ratios.p50VsIoredis), ratio(r.ratios.p99VsIoredis)],
    ),
  );
}

/** @param {Scenario} s */
function throughputTable(s) {
  const header = ['Implementation', 'pairs/s', '× ioredis', 'client CPU/pair (µs)', '× ioredis', 'Redis CPU/pair (µs)', '× ioredis', 'event-loop util.', '× ioredis', 'pair p50 under load (µs)'];
  return table(
    header,
    s.rows.map((r) =>
      r.status !== 'ok'
        ? unmeasured(r, header.length)
        : [
            r.label,
            num(r.median.pairsPerSec),
            ratio(r.ratios.rateVsIoredis),
            sig(r.median.clientCpuPerPairUs),
            ratio(r.ratios.cpuVsIoredis),
            sig(r.median.redisCpuPerPairUs),
            ratio(r.ratios.redisCpuVsIoredis),
            num(r.median.elu, 2),
            ratio(r.ratios.eluVsIoredis),
            sig(r.median.latencyP50Us),
          ],
    ),
  );
}

/** @param {Scenario} s */
function contentionTable(s) {
  const header = ['Implementation', 'processes', 'wall (ms)', '× floor', 'hand-over p50 (ms)', 'hand-over p90 (ms)', 'holder changes', 'give-ups', 'workers starved', 'longest wait (ms)', 'section mean (ms)'];
  /** @type {string[][]} */
  const rows = [];
  for (const procs of s.extra.modes ?? []) {
    const floor = s.extra.floorMs;
    rows.push([`floor: ${s.extra.totalSections} × (${s.extra.sectionMs} ms + ${num(s.extra.rttMs, 3)} ms RTT)`, String(procs), num(floor, 1), '1.00×', '–', '–', '–', '–', '–', '–', num(s.extra.sectionMs, 3)]);
    for (const r of s.rows.filter((x) => x.attrs?.processes === procs)) {
      if (r.status !== 'ok') {
        const cells = unmeasured(r, header.length);
        cells[1] = String(procs);
        rows.push(cells);
        continue;
      }
      rows.push([
        r.label,
        String(procs),
        num(r.median.wallMs, 1),
        ratio(r.ratios.wallVsFloor),
        sig(r.median.handoverP50Ms),
        sig(r.median.handoverP90Ms),
        num(r.median.holderChanges),
        num(r.median.giveUps),
        num(r.median.starvedWorkers),
        num(r.median.longestWaitMs, 1),
        num(r.median.sectionMeanMs, 3),
      ]);
    }
  }
  return table(header, rows);
}

/** @param {Scenario} s */
function manyTable(s) {
  const header = ['Implementation', 'extends/lock', 'client CPU/extend (µs)', '× v1', 'RSS growth (MB)', '× v1', 'Redis CPU/extend (µs)', '× v1', 'event-loop util.', 'held at end', 'losses reported'];
  return table(
    header,
    s.rows.map((r) =>
      r.status !== 'ok'
        ? unmeasured(r, header.length)
        : [
            r.label,
            num(r.median.extendsPerLock, 2),
            sig(r.median.clientCpuPerExtendUs),
            ratio(r.ratios.cpuVsV1),
            num(r.median.rssGrowthMB, 1),
            ratio(r.ratios.rssVsV1),
            sig(r.median.redisCpuPerExtendUs),
            ratio(r.ratios.redisCpuVsV1),
            num(r.median.elu, 3),
            `${num(r.median.heldAtEnd)} / ${num(r.median.locks)}`,
            num(r.median.lostReported),
          ],
    ),
  );
}

/** @param {Scenario} s */
function redlockTable(s) {
  const header = ['Implementation', 'masters', 'acquire p50 (µs)', '× same lib, 1 master', 'pair p50 (µs)', 'pair p99 (µs)', 'p50 × redlock', 'pairs/s (64 loops)', '× redlock', 'client CPU/pair (µs)', 'Redis CPU/pair, all masters (µs)'];
  return table(
    header,
    s.rows.map((r) =>
      r.status !== 'ok'
        ? unmeasured(r, header.length)
        : [
            r.label,
            String(r.attrs?.masters ?? ''),
            sig(r.median.acquireP50Us),
            ratio(r.ratios.acquireVsOneMaster),
            sig(r.median.pairP50Us),
            sig(r.median.pairP99Us),
            ratio(r.ratios.p50VsRedlock),
            num(r.median.pairsPerSec),
            ratio(r.ratios.rateVsRedlock),
            sig(r.median.clientCpuPerPairUs),
            sig(r.median.redisCpuPerPairUs),
          ],
    ),
  );
}

const TABLES = /** @type {Record<string, (s: Scenario) => string>} */ ({
  serial: serialTable,
  throughput: throughputTable,
  contention: contentionTable,
  many: manyTable,
  redlock: redlockTable,
});

/**
 * Issue #6's targets, over plain TCP.
 * @param {Scenario[]} scenarios
 * @returns {Array<{ target: string, value: string, met: boolean | null }>}
 */
export function targets(scenarios) {
  const by = Object.fromEntries(overTcp(scenarios).map((s) => [s.name, s]));
  /** @param {string} scenario @param {string} id */
  const row = (scenario, id) => by[scenario]?.rows.find((r) => r.id === id && r.status === 'ok');
  /** @type {Array<{ target: string, value: string, met: boolean | null }>} */
  const out = [];
  const check = (/** @type {string} */ target, /** @type {number | undefined} */ v, /** @type {(v: number) => boolean} */ ok, /** @type {(v: number) => string} */ show) => {
    out.push(v === undefined || !Number.isFinite(v) ? { target, value: 'not measured', met: null } : { target, value: show(v), met: ok(v) });
  };
  if (by.serial) {
    const v2 = row('serial', 'v2');
    check('serial p50 ≤ 1.0× plain ioredis', v2?.ratios.p50VsIoredis, (v) => v <= 1.0, ratio);
    for (const peer of ['v1', 'redlock', 'redis-semaphore']) {
      const p = row('serial', peer);
      check(`serial p50 better than ${peer}`, v2 && p ? v2.ratios[`p50Vs:${peer}`] : undefined, (v) => v < 1, (v) => `${ratio(v)} of ${peer}`);
    }
  }
  if (by.throughput) {
    const v2 = row('throughput', 'v2');
    check('throughput ≥ 1.5× plain ioredis', v2?.ratios.rateVsIoredis, (v) => v >= 1.5, ratio);
    check('client CPU/pair ≤ 0.6× plain ioredis', v2?.ratios.cpuVsIoredis, (v) => v <= 0.6, ratio);
  }
  if (by.contention) {
    for (const procs of by.contention.extra.modes ?? []) {
      const v2 = by.contention.rows.find((r) => r.impl === 'v2' && r.attrs?.processes === procs && r.status === 'ok');
      const where = procs === 1 ? 'one process' : `${procs} processes`;
      check(`contention (${where}): wall ≤ 1.2× floor`, v2?.ratios.wallVsFloor, (v) => v <= 1.2, ratio);
      check(`contention (${where}): hand-over p50 < 2 ms`, v2?.median.handoverP50Ms, (v) => v < 2, (v) => `${sig(v)} ms`);
      check(`contention (${where}): no worker starved`, v2?.median.starvedWorkers, (v) => v === 0, (v) => `${num(v)} starved, ${num(v2?.median.giveUps)} give-ups`);
    }
  }
  if (by.many) {
    const v2 = row('many', 'v2');
    check('many locks: client CPU/extend ≤ 0.3× v1', v2?.ratios.cpuVsV1, (v) => v <= 0.3, ratio);
    check('many locks: RSS growth ≤ 0.5× v1', v2?.ratios.rssVsV1, (v) => v <= 0.5, ratio);
    check('many locks: none lost', v2 ? v2.median.locks - v2.median.heldAtEnd : undefined, (v) => v === 0, (v) => `${num(v)} lost`);
  }
  if (by.redlock) {
    const v2 = row('redlock', 'v2-3');
    check('Redlock: acquire p50 over 3 masters ≤ 1.3× one master', v2?.ratios.acquireVsOneMaster, (v) => v <= 1.3, ratio);
    check('Redlock: pair p50 ahead of redlock (3 masters)', v2?.ratios.p50VsRedlock, (v) => v < 1, (v) => `${ratio(v)} of redlock`);
    check('Redlock: throughput ahead of redlock (3 masters)', v2?.ratios.rateVsRedlock, (v) => v > 1, (v) => `${ratio(v)} of redlock`);
  }
  return out;
}

/**
 * A ratio as the targets show it, with a third decimal where two would round onto the
 * threshold (0.503× is not "0.50×, not met").
 * @param {number} threshold
 */
const near = (threshold) => (/** @type {number} */ v) => (ratio(v) === ratio(threshold) && v !== threshold ? `${v.toFixed(3)}×` : ratio(v));

/**
 * Issue #11's targets, on every transport measured: each against plain ioredis on the same
 * transport, and contention against its own floor.
 * @param {Scenario[]} scenarios
 * @returns {Array<{ target: string, byTransport: Record<string, Reached> }>}
 */
export function transportTargets(scenarios) {
  const measured = TRANSPORTS.filter((t) => scenarios.some((s) => s.transport === t && ['serial', 'throughput', 'contention'].includes(s.name)));
  /** @type {Map<string, Record<string, Reached>>} */
  const out = new Map();
  /** @param {string} target @param {string} transport @param {number | undefined} v @param {(v: number) => boolean} ok @param {(v: number) => string} show */
  const check = (target, transport, v, ok, show) => {
    if (!out.has(target)) out.set(target, {});
    /** @type {Record<string, Reached>} */ (out.get(target))[transport] = v === undefined || !Number.isFinite(v) ? { value: 'not measured', met: null } : { value: show(v), met: ok(v), number: v };
  };
  for (const transport of measured) {
    /** @param {string} name */
    const scenario = (name) => scenarios.find((s) => s.transport === transport && s.name === name);
    /** @param {string} name @param {(r: Row) => boolean} pick */
    const v2 = (name, pick = () => true) => scenario(name)?.rows.find((r) => r.impl === 'v2' && r.status === 'ok' && pick(r));
    if (scenario('serial')) check('serial p50 ≤ 1.0× plain ioredis', transport, v2('serial')?.ratios.p50VsIoredis, (v) => v <= 1.0, near(1));
    if (scenario('throughput')) {
      const row = v2('throughput');
      check('64 loops: pairs/s ≥ 2× plain ioredis', transport, row?.ratios.rateVsIoredis, (v) => v >= 2, near(2));
      check('64 loops: client CPU/pair ≤ 0.5× plain ioredis', transport, row?.ratios.cpuVsIoredis, (v) => v <= 0.5, near(0.5));
    }
    const contention = scenario('contention');
    for (const procs of contention?.extra.modes ?? []) {
      const row = v2('contention', (r) => r.attrs?.processes === procs);
      const where = procs === 1 ? 'one process' : `${procs} processes`;
      check(`contention (${where}): wall ≤ 1.2× floor`, transport, row?.ratios.wallVsFloor, (v) => v <= 1.2, near(1.2));
      check(`contention (${where}): hand-over p50 < 1 ms`, transport, row?.median.handoverP50Ms, (v) => v < 1, (v) => `${sig(v)} ms`);
    }
  }
  return [...out].map(([target, byTransport]) => ({ target, byTransport }));
}

/** @param {boolean | null} met */
const metText = (met) => (met === null ? '–' : met ? 'yes' : '**no**');

/** The transport targets as one table: a column per transport. @param {Scenario[]} scenarios */
function transportTargetsTable(scenarios) {
  const rows = transportTargets(scenarios);
  const columns = TRANSPORTS.filter((t) => rows.some((r) => r.byTransport[t]));
  return table(
    ['Target (v2 ÷ plain ioredis on the same transport)', ...columns.map((t) => TRANSPORT_LABELS[t])],
    rows.map((r) => [r.target, ...columns.map((t) => (r.byTransport[t] ? `${r.byTransport[t].value} (${metText(r.byTransport[t].met)})` : '–'))]),
  );
}

/**
 * The whole Markdown report.
 * @param {Record<string, any>} meta @param {Scenario[]} scenarios @param {string} chartFile
 * @param {string | null} [transportChartFile] issue #11's chart, if there is one
 */
export function markdown(meta, scenarios, chartFile, transportChartFile = null) {
  const parts = [];
  parts.push(`# Benchmark: simple-distributed-lock v2 beside the alternatives`);
  parts.push(
    [
      `- **Date**: ${meta.date}`,
      `- **Command**: \`${meta.command}\``,
      `- **Machine**: ${meta.cpuModel}, ${meta.cores} cores, Linux ${meta.kernel}; Node.js ${meta.node}; Redis ${meta.redis}`,
      `- **Pinning**: ${meta.pinning}`,
      ...(meta.deployments?.tcp ? [`- **Servers (plain TCP)**: ${meta.deployments.tcp}`] : []),
      `- **Load average** (1 min) at start / end: ${meta.loadStart} / ${meta.loadEnd}`,
      `- **v2 build**: commit ${meta.git}, engine \`${meta.addon}\``,
      `- **Repeats**: ${meta.repeat} (every value is the median over repeats; a ratio is the median of the per-repeat ratios, each taken within one repeat)${meta.quick ? ' — **quick smoke run: small counts, not for publishing**' : ''}`,
      ...(meta.warnings ?? []).map((/** @type {string} */ w) => `- **Warning**: ${w}`),
      `- **Run time**: ${num(meta.seconds)} s (${Object.entries(meta.scenarioSeconds ?? {}).map(([k, v]) => `${k} ${v} s`).join(', ')})`,
    ].join('\n'),
  );
  const t = targets(scenarios);
  if (t.length) {
    parts.push(`## Targets (issue #6), v2 as built\n\n${table(['Target', 'Reached', 'Met'], t.map((x) => [x.target, x.value, metText(x.met)]))}`);
  }
  if (transportTargets(scenarios).length) {
    parts.push(
      `## Targets per transport (issue #11), v2 as built\n\nEach ratio is v2 against plain ioredis on the same transport, in the same run; contention against its own floor (that transport's round trip).\n\n${transportTargetsTable(scenarios)}${transportChartFile ? `\n\n![v2 per transport](${transportChartFile})` : ''}`,
    );
  }
  const tcp = overTcp(scenarios);
  if (tcp.length) parts.push(`![headline ratios](${chartFile})`);
  for (const s of tcp) parts.push(section('##', s));
  for (const transport of TRANSPORTS.filter((x) => x !== 'tcp')) {
    const over = scenarios.filter((s) => s.transport === transport);
    if (over.length === 0) continue;
    const about = String(meta.deployments?.[transport] ?? '');
    parts.push(`## Over ${TRANSPORT_LABELS[transport]}\n\n${about.charAt(0).toUpperCase()}${about.slice(1)}. Only plain ioredis and v2 run here.`);
    for (const s of over) parts.push(section('###', s));
  }
  return `${parts.join('\n\n')}\n`;
}

/** One scenario's heading, text, table and noise line. @param {string} level @param {Scenario} s */
function section(level, s) {
  return `${level} ${s.title}\n\n${s.about}\n\n${TABLES[s.name](s)}\n\n${loadLine(s)}`;
}

/**
 * The noise indicator of a scenario: CPU used on the machine by anything but the bench while
 * its measurements ran, and hypervisor steal.
 * @param {Scenario} s
 */
function loadLine(s) {
  /** @param {string} key */
  const values = (key) => s.rows.flatMap((r) => r.repeats.map((m) => (m ? m[key] : NaN))).filter((v) => Number.isFinite(v));
  const other = values('otherLoadCpus');
  const steal = values('stealCpus');
  if (!other.length) return '';
  const med = (/** @type {number[]} */ xs) => xs.slice().sort((a, b) => a - b)[xs.length >> 1];
  return `<sub>Other work on the machine while these ran (CPUs busy outside the bench): median ${med(other).toFixed(2)}, max ${Math.max(...other).toFixed(2)}; hypervisor steal: median ${med(steal).toFixed(2)}, max ${Math.max(...steal).toFixed(2)}.</sub>`;
}

/** Stable colours per implementation. */
const COLOURS = /** @type {Record<string, string>} */ ({
  ioredis: '#9e9e9e',
  v1: '#f28e2b',
  v2: '#4e79a7',
  'v2-nofence': '#76b7b2',
  'v2-traced': '#ff9da7',
  redlock: '#e15759',
  'redis-semaphore': '#59a14f',
  // transportChart's bars: one per transport
  tcp: '#4e79a7',
  tls: '#edc948',
  cluster: '#b07aa1',
  sentinel: '#ff9da7',
});

/** @param {string} s */
function esc(s) {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/**
 * A grouped bar chart of the headline ratios, on a log scale with a line at 1×.
 * @param {Scenario[]} scenarios
 * @param {Record<string, any>} meta
 * @returns {string}
 */
export function chart(scenarios, meta) {
  const by = Object.fromEntries(overTcp(scenarios).map((s) => [s.name, s]));
  /** @type {ChartGroup[]} */
  const groups = [];
  /** @param {Scenario | undefined} s @param {string} key @param {(r: Row) => boolean} [pick] */
  const bars = (s, key, pick = () => true) =>
    (s?.rows ?? []).filter(pick).map((r) => ({ impl: r.impl, value: r.status === 'ok' && Number.isFinite(r.ratios[key]) ? r.ratios[key] : null }));
  if (by.serial) groups.push({ title: '1 serial p50 ÷ ioredis', better: 'lower', target: 1, bars: bars(by.serial, 'p50VsIoredis') });
  if (by.throughput) {
    groups.push({ title: '2 pairs/s ÷ ioredis', better: 'higher', target: 1.5, bars: bars(by.throughput, 'rateVsIoredis') });
    groups.push({ title: '2 client CPU/pair ÷ ioredis', better: 'lower', target: 0.6, bars: bars(by.throughput, 'cpuVsIoredis') });
  }
  if (by.contention) {
    for (const procs of by.contention.extra.modes ?? []) {
      groups.push({
        title: `3 wall ÷ floor, ${procs} proc${procs > 1 ? 's' : ''}`,
        better: 'lower',
        target: 1.2,
        bars: bars(by.contention, 'wallVsFloor', (r) => r.attrs?.processes === procs),
      });
    }
  }
  if (by.many) {
    const notIoredis = (/** @type {Row} */ r) => r.impl !== 'ioredis';
    groups.push({ title: '4 client CPU/extend ÷ v1', better: 'lower', target: 0.3, bars: bars(by.many, 'cpuVsV1', notIoredis) });
    groups.push({ title: '4 RSS growth ÷ v1', better: 'lower', target: 0.5, bars: bars(by.many, 'rssVsV1', notIoredis) });
  }
  if (by.redlock) {
    groups.push({
      title: '5 acquire p50, 3 masters ÷ v2 on 1',
      better: 'lower',
      target: 1.3,
      bars: bars(by.redlock, 'acquireVsV2One', (r) => r.attrs?.masters === 3),
    });
  }
  return drawChart(groups, meta, 'simple-distributed-lock v2: headline ratios (log scale; 1× = the reference)', 'v2 target (issue #6)');
}

/**
 * Issue #11's headline ratios of v2, one bar per transport: each against plain ioredis on that
 * transport (contention: against that transport's floor).
 * @param {Scenario[]} scenarios
 * @param {Record<string, any>} meta
 * @returns {string | null} null when only plain TCP was measured
 */
export function transportChart(scenarios, meta) {
  const measured = TRANSPORTS.filter((t) => scenarios.some((s) => s.transport === t && ['serial', 'throughput', 'contention'].includes(s.name)));
  if (measured.filter((t) => t !== 'tcp').length === 0) return null;
  /** @param {string} name @param {string} key @param {(r: Row) => boolean} [pick] */
  const bars = (name, key, pick = () => true) =>
    measured.map((transport) => {
      const row = scenarios.find((s) => s.transport === transport && s.name === name)?.rows.find((r) => r.impl === 'v2' && r.status === 'ok' && pick(r));
      const value = row?.ratios[key];
      return { impl: transport, value: value !== undefined && Number.isFinite(value) ? value : null };
    });
  /** @type {ChartGroup[]} */
  const groups = [
    { title: '1 serial p50 ÷ ioredis', better: 'lower', target: 1, bars: bars('serial', 'p50VsIoredis') },
    { title: '2 pairs/s ÷ ioredis', better: 'higher', target: 2, bars: bars('throughput', 'rateVsIoredis') },
    { title: '2 client CPU/pair ÷ ioredis', better: 'lower', target: 0.5, bars: bars('throughput', 'cpuVsIoredis') },
  ];
  const modes = scenarios.find((s) => s.name === 'contention')?.extra.modes ?? [];
  for (const procs of modes) {
    groups.push({ title: `3 wall ÷ floor, ${procs} proc${procs > 1 ? 's' : ''}`, better: 'lower', target: 1.2, bars: bars('contention', 'wallVsFloor', (r) => r.attrs?.processes === procs) });
  }
  return drawChart(groups, meta, 'v2 per transport, ÷ plain ioredis on the same transport (log scale)', 'v2 target (issue #11)');
}

/**
 * @typedef {{ title: string, better: 'lower' | 'higher', target?: number, bars: Array<{ impl: string, value: number | null }> }} ChartGroup
 */

/**
 * Grouped bars on a log scale with a line at 1×; a bar's `impl` picks its colour and legend entry.
 * @param {ChartGroup[]} groups @param {Record<string, any>} meta @param {string} heading @param {string} targetLegend
 */
function drawChart(groups, meta, heading, targetLegend) {
  const impls = [...new Set(groups.flatMap((g) => g.bars.map((b) => b.impl)))];
  const values = groups.flatMap((g) => g.bars.map((b) => b.value)).filter((v) => v !== null && v > 0);
  const lo = Math.min(0.1, ...values.map((v) => /** @type {number} */ (v) / 1.3));
  const hi = Math.max(10, ...values.map((v) => /** @type {number} */ (v) * 1.3));
  const decades = { lo: Math.floor(Math.log10(lo)), hi: Math.ceil(Math.log10(hi)) };
  const barW = 22;
  const gap = 30;
  const groupW = Math.max(impls.length, 1) * barW + gap;
  const left = 60;
  const top = 70;
  const plotH = 320;
  const width = Math.max(640, left + groups.length * groupW + 20, left + (impls.length + 1) * 120 + 40);
  const height = top + plotH + 150;
  const y = (/** @type {number} */ v) => top + plotH - ((Math.log10(v) - decades.lo) / (decades.hi - decades.lo)) * plotH;
  const out = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif" font-size="11">`);
  out.push(`<rect width="100%" height="100%" fill="#ffffff"/>`);
  out.push(`<text x="${left}" y="22" font-size="15" font-weight="bold">${esc(heading)}</text>`);
  out.push(`<text x="${left}" y="40" fill="#555">${esc(`${String(meta.date).slice(0, 16).replace('T', ' ')} UTC · ${meta.cpuModel}, ${meta.cores} cores · Node ${meta.node} · Redis ${meta.redis} · ${meta.pinning}`)}</text>`);
  out.push(`<text x="${left}" y="56" fill="#555">${esc(`${meta.command}${meta.quick ? ' (quick smoke run)' : ''} · medians of ${meta.repeat} repeat(s)`)}</text>`);
  for (let d = decades.lo; d <= decades.hi; d++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** d;
      if (v < 10 ** decades.lo || v > 10 ** decades.hi) continue;
      const yy = y(v).toFixed(1);
      out.push(`<line x1="${left}" x2="${width - 10}" y1="${yy}" y2="${yy}" stroke="${m === 1 ? '#ccc' : '#eee'}"/>`);
      out.push(`<text x="${left - 6}" y="${yy}" text-anchor="end" dominant-baseline="middle" fill="#555">${v >= 1 ? v : v.toFixed(-d)}×</text>`);
    }
  }
  const one = y(1).toFixed(1);
  out.push(`<line x1="${left}" x2="${width - 10}" y1="${one}" y2="${one}" stroke="#333" stroke-width="1.5"/>`);
  groups.forEach((g, gi) => {
    const x0 = left + gi * groupW + gap / 2;
    g.bars.forEach((b) => {
      const i = impls.indexOf(b.impl);
      const x = x0 + i * barW;
      if (b.value === null) {
        out.push(`<text x="${x + barW / 2}" y="${one}" dy="-4" text-anchor="middle" font-size="8" fill="#999" transform="rotate(-90 ${x + barW / 2} ${one})" dx="8">n/a</text>`);
        return;
      }
      const yv = y(b.value);
      const y1 = Math.min(yv, y(1));
      const h = Math.max(1, Math.abs(yv - y(1)));
      out.push(`<rect x="${x + 1}" y="${y1.toFixed(1)}" width="${barW - 2}" height="${h.toFixed(1)}" fill="${COLOURS[b.impl] ?? '#bab0ac'}"><title>${esc(`${b.impl}: ${ratio(b.value)}`)}</title></rect>`);
      const ty = b.value >= 1 ? yv - 3 : yv + 9;
      out.push(`<text x="${x + barW / 2}" y="${ty.toFixed(1)}" text-anchor="middle" font-size="8">${ratio(b.value).replace('×', '')}</text>`);
    });
    if (g.target !== undefined && g.target !== 1) {
      const ty = y(g.target).toFixed(1);
      out.push(`<line x1="${x0 - 4}" x2="${x0 + impls.length * barW + 4}" y1="${ty}" y2="${ty}" stroke="#c00" stroke-width="1.2" stroke-dasharray="4 2"><title>v2 target ${g.target}×</title></line>`);
    }
    const cx = x0 + (impls.length * barW) / 2;
    const labelY = top + plotH + 14;
    out.push(`<text x="${cx}" y="${labelY}" text-anchor="end" transform="rotate(-35 ${cx} ${labelY})">${esc(g.title)}</text>`);
    out.push(`<text x="${cx}" y="${labelY}" dy="12" text-anchor="end" fill="#777" font-size="9" transform="rotate(-35 ${cx} ${labelY})">${g.better} is better</text>`);
  });
  const legendTargetX = left + impls.length * 120;
  out.push(`<line x1="${legendTargetX}" x2="${legendTargetX + 18}" y1="${height - 18}" y2="${height - 18}" stroke="#c00" stroke-width="1.2" stroke-dasharray="4 2"/><text x="${legendTargetX + 22}" y="${height - 14}">${esc(targetLegend)}</text>`);
  impls.forEach((impl, i) => {
    const x = left + i * 120;
    const yy = height - 14;
    out.push(`<rect x="${x}" y="${yy - 9}" width="10" height="10" fill="${COLOURS[impl] ?? '#bab0ac'}"/><text x="${x + 14}" y="${yy}">${esc(impl)}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

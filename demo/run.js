#!/usr/bin/env node
// @ts-check
'use strict';
// `npm run demo`: several worker processes contend for one lock and update a shared counter.
// First without the lock (updates get lost), then with it (the count is exact).
// Redis: $REDIS_URL, else 127.0.0.1:6379, else a private redis-server on a free port.

const { fork, spawn, spawnSync } = require('node:child_process');
const { existsSync, readdirSync } = require('node:fs');
const net = require('node:net');
const { join } = require('node:path');

const WORKERS = 4;
const SECTIONS = 10;
const root = join(__dirname, '..');

function ensureBuilt() {
  const nativeDir = join(root, 'lib', 'native');
  if (existsSync(nativeDir) && readdirSync(nativeDir).some((f) => f.endsWith('.node'))) return;
  console.log('Building the Rust engine first (about 1-2 minutes the first time)...');
  const result = spawnSync(process.platform === 'win32' ? 'npm.cmd' : 'npm', ['run', 'build'], { cwd: root, stdio: 'inherit' });
  if (result.status !== 0) {
    console.error('The build failed. It needs Rust (https://rustup.rs) and `npm install` first.');
    process.exit(1);
  }
}

/** @param {number} port @returns {Promise<boolean>} */
function reachable(port, host = '127.0.0.1') {
  return new Promise((resolve) => {
    const socket = net.connect(port, host);
    socket.setTimeout(500);
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('timeout', () => { socket.destroy(); resolve(false); });
    socket.once('error', () => resolve(false));
  });
}

/** @returns {Promise<number>} */
function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const address = /** @type {net.AddressInfo} */ (server.address());
      server.close(() => resolve(address.port));
    });
  });
}

/** @returns {Promise<{ url: string, stop: () => void, where: string }>} */
async function findRedis() {
  if (process.env.REDIS_URL) return { url: process.env.REDIS_URL, stop() {}, where: 'REDIS_URL' };
  if (await reachable(6379)) return { url: 'redis://127.0.0.1:6379', stop() {}, where: 'the local Redis on 127.0.0.1:6379' };
  const probe = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  if (probe.status !== 0) {
    console.error(
      'No Redis found: REDIS_URL is not set, nothing answers on 127.0.0.1:6379, and `redis-server` is not installed.\n' +
        'Do one of these, then run `npm run demo` again:\n' +
        '  - start Redis locally (e.g. `docker run -p 6379:6379 redis:7` or `sudo apt-get install redis-server`)\n' +
        '  - or point the demo at a Redis: REDIS_URL=redis://host:6379 npm run demo',
    );
    process.exit(1);
  }
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  for (let i = 0; i < 100 && !(await reachable(port)); i++) await new Promise((r) => setTimeout(r, 50));
  return { url: `redis://127.0.0.1:${port}`, stop: () => child.kill(), where: `a private redis-server on port ${port}` };
}

/**
 * @param {string} url @param {'unlocked' | 'locked'} mode
 * @returns {Promise<{ holders: string[] }>}
 */
function runRound(url, mode) {
  const started = Date.now();
  /** @type {string[]} */
  const holders = [];
  const names = Array.from({ length: WORKERS }, (_, i) => `worker-${i + 1}`);
  const colours = [36, 33, 35, 32];
  return new Promise((resolve, reject) => {
    let running = names.length;
    names.forEach((name, i) => {
      const child = fork(join(__dirname, 'worker.js'), [url, name, String(SECTIONS), mode]);
      child.on('message', (/** @type {any} */ m) => {
        const t = String(Date.now() - started).padStart(5);
        const who = `\x1b[${colours[i % colours.length]}m${m.worker}\x1b[0m`;
        if (m.event === 'held') {
          holders.push(m.worker);
          console.log(`${t} ms  ${who} holds the lock   counter ${m.from} -> ${m.to}`);
        } else if (m.event === 'unlocked') {
          console.log(`${t} ms  ${who} (no lock)         counter ${m.from} -> ${m.to}`);
        } else {
          console.log(`${t} ms  ${who} failed: ${m.message}`);
        }
      });
      child.on('exit', (code) => {
        if (code !== 0) reject(new Error(`${name} exited with code ${code}`));
        else if (--running === 0) resolve({ holders });
      });
    });
  });
}

async function main() {
  ensureBuilt();
  const { Redis } = require('ioredis');
  const redis = await findRedis();
  const client = new Redis(redis.url, { maxRetriesPerRequest: 1, retryStrategy: () => null });
  client.on('error', () => {});
  try {
    await client.ping();
  } catch (err) {
    console.error(`Cannot reach Redis at ${redis.where} (${/** @type {Error} */ (err).message}). Check REDIS_URL or start Redis.`);
    redis.stop();
    process.exit(1);
  }
  const expected = WORKERS * SECTIONS;
  console.log(`Redis: ${redis.where}. ${WORKERS} worker processes, ${SECTIONS} increments each.\n`);
  try {
    await client.del('demo:counter:unlocked', 'demo:counter:locked', 'lock:demo:counter');

    console.log('Round 1: no lock. Each worker reads the counter, works, writes counter + 1.');
    await runRound(redis.url, 'unlocked');
    const unlocked = Number(await client.get('demo:counter:unlocked'));
    console.log(`\n=> without the lock: counter = ${unlocked}, expected ${expected} (${expected - unlocked} updates lost)\n`);

    console.log('Round 2: the same work inside lock.using("demo:counter", ...).');
    const { holders } = await runRound(redis.url, 'locked');
    const locked = Number(await client.get('demo:counter:locked'));
    const changes = holders.filter((h, i) => i > 0 && h !== holders[i - 1]).length;
    const ok = locked === expected;
    console.log(
      `\n=> with the lock: counter = ${locked}, expected ${expected} ${ok ? '\x1b[32m(exact)\x1b[0m' : '\x1b[31m(WRONG)\x1b[0m'}; ` +
        `the lock changed hands ${changes} times between ${new Set(holders).size} workers.`,
    );
    process.exitCode = ok ? 0 : 1;
  } finally {
    client.disconnect();
    redis.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});

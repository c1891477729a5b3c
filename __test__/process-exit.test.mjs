// @ts-check
// The process exits by itself once no lock work is pending.

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { RedisServer, freePort } from './helpers/redis-server.mjs';
import { runWorkers } from './helpers/workers.mjs';

/** @type {RedisServer} */
let server;

before(async () => {
  server = await RedisServer.start();
});
after(async () => {
  await server.stop();
});

test('exits after acquire + release without close()', async () => {
  const [output] = await runWorkers('exit-worker.mjs', [{ scenario: 'released', url: server.url }], 10000);
  assert.match(String(output), /done released/);
});

test('exits while an auto-extended lock is still held (unref semantics of v1)', async () => {
  const started = Date.now();
  const [output] = await runWorkers('exit-worker.mjs', [{ scenario: 'still-held', url: server.url }], 10000);
  assert.match(String(output), /done still-held/);
  assert.ok(Date.now() - started < 8000);
});

test('stays alive while an acquire is pending, then exits', async () => {
  const raw = server.client();
  await raw.set('lock:exit-c', 'someone', 'PX', 60000);
  setTimeout(() => void raw.del('lock:exit-c'), 700);
  const [output] = await runWorkers('exit-worker.mjs', [{ scenario: 'waiting', url: server.url }], 10000);
  assert.match(String(output), /acquired\ndone waiting/);
});

test('exits after a connection error', async () => {
  const url = `redis://127.0.0.1:${await freePort()}`;
  const [output] = await runWorkers('exit-worker.mjs', [{ scenario: 'refused', url }], 10000);
  assert.match(String(output), /ERR_LOCK_CONNECTION\ndone refused/);
});

test('worker threads that use a Lock exit or are terminated without harming the process', async () => {
  const { Worker } = await import('node:worker_threads');
  const entry = new URL('../index.js', import.meta.url).pathname;
  const body = (/** @type {string} */ resource) => `
    const { Lock } = require(${JSON.stringify(entry)});
    const lock = new Lock(${JSON.stringify(server.url)});
    (async () => {
      for (let i = 0; ; i++) {
        const token = await lock.acquire('${resource}' + (i % 20), { autoExtend: true, ttl: 500 });
        if (token) await lock.release('${resource}' + (i % 20), token);
        if (i === 50) require('node:worker_threads').parentPort.postMessage('busy');
      }
    })();`;
  for (let round = 0; round < 4; round++) {
    const worker = new Worker(body(`worker${round}:`), { eval: true });
    await new Promise((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await worker.terminate();
  }
  const finishing = new Worker(`${body('natural:').replace('for (let i = 0; ; i++)', 'for (let i = 0; i < 60; i++)')}`, { eval: true });
  const code = await new Promise((resolve) => finishing.once('exit', resolve));
  assert.equal(code, 0, 'a worker whose work is done exits by itself');
});

test('a worker terminated while its acquire waits does not bring the process down', async () => {
  const { Worker } = await import('node:worker_threads');
  const raw = server.client();
  await raw.set('lock:worker-waits', 'someone', 'PX', 30000);
  const entry = new URL('../index.js', import.meta.url).pathname;
  const code = `
    const { Lock } = require(${JSON.stringify(entry)});
    const lock = new Lock(${JSON.stringify(server.url)});
    (async () => {
      for (let i = 0; i < 5; i++) {
        const t = await lock.acquire('warm' + i);
        await lock.release('warm' + i, t);
      }
      require('node:worker_threads').parentPort.postMessage('waiting');
      await lock.acquire('worker-waits', { retryCount: Infinity, retryDelay: 20 });
    })();`;
  for (let round = 0; round < 3; round++) {
    const worker = new Worker(code, { eval: true });
    await new Promise((resolve) => worker.once('message', resolve));
    await new Promise((resolve) => setTimeout(resolve, 100));
    await worker.terminate();
  }
  await raw.del('lock:worker-waits');
});

test('a waiting acquire on a Lock nobody references any more still completes', async () => {
  const raw = server.client();
  await raw.set('lock:orphan-wait', 'someone', 'PX', 30000);
  setTimeout(() => void raw.del('lock:orphan-wait'), 600);
  const output = await new Promise((resolve, reject) => {
    const script = new URL('./fixtures/orphan-waiter.cjs', import.meta.url).pathname;
    const child = spawn(process.execPath, ['--expose-gc', script, server.url], { stdio: ['ignore', 'pipe', 'inherit'] });
    let text = '';
    child.stdout.on('data', (d) => (text += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 15000);
    // 'close', not 'exit': only then has all of its stdout been read.
    child.on('close', (code) => {
      clearTimeout(timer);
      code === 0 ? resolve(text) : reject(new Error(`exit ${code}: ${text}`));
    });
  });
  assert.match(String(output), /^acquired [0-9a-f]{32}$/m);
});

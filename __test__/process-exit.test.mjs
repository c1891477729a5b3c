// @ts-check
// The process exits by itself once no lock work is pending.

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
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

// @ts-check
// The command-line tool (bin/simple-distributed-lock.js), as real processes against a private
// redis-server: run, status, release, exit codes, signals, a lost lock, pass-through of stdio.

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { RedisServer } from './helpers/redis-server.mjs';
import lib from '../index.js';

const { Lock } = lib;
const BIN = fileURLToPath(new URL('../bin/simple-distributed-lock.js', import.meta.url));
const VERSION = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version;

/** @type {RedisServer} */
let server;
/** @type {RedisServer} */
let guarded;
before(async () => {
  [server, guarded] = await Promise.all([RedisServer.start(), RedisServer.start(['--requirepass', 'the-right-one'])]);
});
after(async () => {
  await Promise.all([server.stop(), guarded.stop()]);
});

/**
 * @typedef {object} Cli
 * @property {import('node:child_process').ChildProcessWithoutNullStreams} child
 * @property {() => string} stdout
 * @property {() => string} stderr
 * @property {Promise<{ code: number | null, signal: NodeJS.Signals | null, stdout: Buffer, stderr: Buffer, ms: number }>} done
 */

/**
 * Starts the CLI with `args`, REDIS_URL pointing at the private server, stdio piped.
 * @param {string[]} args @param {NodeJS.ProcessEnv} [env]
 * @returns {Cli}
 */
function cli(args, env = {}) {
  const started = Date.now();
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, REDIS_URL: server.url, ...env } });
  /** @type {Buffer[]} */
  const out = [];
  /** @type {Buffer[]} */
  const err = [];
  child.stdout.on('data', (chunk) => out.push(chunk));
  child.stderr.on('data', (chunk) => err.push(chunk));
  const done = new Promise((resolve) => {
    child.on('close', (code, signal) => resolve({ code, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err), ms: Date.now() - started }));
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 20000);
  void done.then(() => clearTimeout(timer));
  return { child, done, stdout: () => Buffer.concat(out).toString(), stderr: () => Buffer.concat(err).toString() };
}

/** Runs the CLI to its end. @param {string[]} args @param {NodeJS.ProcessEnv} [env] */
function cliDone(args, env) {
  const run = cli(args, env);
  run.child.stdin.end();
  return run.done;
}

/** Resolves once `read()` matches `pattern`. @param {() => string} read @param {RegExp} pattern */
async function until(read, pattern, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  while (!pattern.test(read())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${pattern}; got: ${read()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Resolves once a waiter listens for releases of the resource's lock. @param {string} resource */
async function waiting(resource) {
  const raw = server.client();
  for (;;) {
    const reply = /** @type {[string, number]} */ (await raw.call('PUBSUB', 'NUMSUB', `sdl:released:lock:${resource}`));
    if (Number(reply[1]) > 0) return;
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The --json events a run wrote on stderr. @param {string | Buffer} stderr */
function events(stderr) {
  return String(stderr)
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line));
}

/** @param {string | Buffer} stderr */
function assertOneLine(stderr) {
  const text = String(stderr);
  assert.match(text, /^simple-distributed-lock: [^\n]+\n$/, `one line expected, got: ${text}`);
  assert.doesNotMatch(text, /\n\s+at /, 'no stack trace');
}

/** A child that says "ready" and keeps running until its stdin closes. */
const HOLD = ['sh', '-c', 'echo "ready $LOCK_RESOURCE $LOCK_TOKEN $LOCK_FENCE"; cat >/dev/null'];
/** A child that says "ready", prints "got-term" on SIGTERM and keeps running. */
const STUBBORN = ['sh', '-c', `trap 'echo got-term' TERM; echo ready; while :; do sleep 0.05; done`];

test('--help and --version', async () => {
  const version = await cliDone(['--version']);
  assert.equal(version.code, 0);
  assert.equal(String(version.stdout), `${VERSION}\n`);
  for (const args of [['--help'], ['run', '--help'], ['status', '-h'], ['help', 'release']]) {
    const help = await cliDone(args);
    assert.equal(help.code, 0, args.join(' '));
    assert.match(String(help.stdout), /^Usage: simple-distributed-lock /, args.join(' '));
    assert.equal(String(help.stderr), '');
  }
  assert.match(String((await cliDone(['run', '--help'])).stdout), /--conflict-exit-code/);
});

test('bad arguments: one line on stderr, exit code 2, no password echoed', async () => {
  const cases = [
    [],
    ['frobnicate'],
    ['run'],
    ['run', 'job'],
    ['run', '--ttl', 'abc', 'job', '--', 'true'],
    ['run', '--ttl', '0', 'job', '--', 'true'],
    ['run', '--wait=soon', 'job', '--', 'true'],
    ['run', '--conflict-exit-code', '300', 'job', '--', 'true'],
    ['run', '--no-such-option', 'job', '--', 'true'],
    ['run', '--redis=redis://:hunter2@127.0.0.1:6379', '--cluster', '127.0.0.1:7000', 'job', '--', 'true'],
    ['run', '--redis', 'http://user:hunter2@127.0.0.1:6379', 'job', '--', 'true'],
    ['run', '--redis', 'redis://:hunter2@[bad', 'job', '--', 'true'],
    ['status'],
    ['status', 'a', 'b'],
    ['release', 'job'],
    ['status', '--unknown=redis://:hunter2@h', 'job'],
  ];
  await Promise.all(
    cases.map(async (args) => {
      const { code, stdout, stderr } = await cliDone(args);
      assert.equal(code, 2, `${args.join(' ')}: ${stderr}`);
      assertOneLine(stderr);
      assert.doesNotMatch(String(stderr), /hunter2/);
      assert.equal(String(stdout), '');
    }),
  );
});

test("exit codes pass through; the command gets LOCK_RESOURCE, LOCK_TOKEN and LOCK_FENCE", async () => {
  const ok = await cliDone(['run', 'cli:codes', '--', 'sh', '-c', 'echo "$LOCK_RESOURCE $LOCK_TOKEN $LOCK_FENCE"']);
  assert.equal(ok.code, 0, String(ok.stderr));
  assert.match(String(ok.stdout), /^cli:codes [0-9a-f]{32} \d+\n$/);
  assert.equal(String(ok.stderr), '', 'silent on success');
  // Without `--`, the command starts at the first word after the resource; its options stay its own.
  const three = await cliDone(['run', '--ttl', '5000', 'cli:codes', 'sh', '-c', 'exit 3']);
  assert.equal(three.code, 3);
  const killed = await cliDone(['run', 'cli:codes', '--', 'sh', '-c', 'kill -KILL $$']);
  assert.equal(killed.code, 137);
  const missing = await cliDone(['run', 'cli:codes', '--', 'no-such-command-sdl']);
  assert.equal(missing.code, 127);
  assertOneLine(missing.stderr);
  const status = await cliDone(['status', 'cli:codes']);
  assert.equal(status.code, 0, 'released after each run');
});

test('two runs at once: one runs, the other reports the holder and exits with the conflict code; --wait takes over on release', async () => {
  const resource = 'cli:two';
  const first = cli(['run', '--json', resource, '--', ...HOLD]);
  await until(first.stdout, /^ready /);
  const [, , token, fence] = first.stdout().trim().split(' ');

  const second = await cliDone(['run', resource, '--', 'sh', '-c', 'echo should-not-run']);
  assert.equal(second.code, 1);
  assert.equal(String(second.stdout), '');
  assertOneLine(second.stderr);
  assert.match(String(second.stderr), new RegExp(`held by another owner \\(token ${token}, \\d+\\.\\d s left, fence ${fence}\\)`));
  assert.ok(second.ms < 3000, `the conflict took ${second.ms} ms`);

  const coded = await cliDone(['run', '--quiet', '--conflict-exit-code', '9', resource, '--', 'true']);
  assert.equal(coded.code, 9);
  assert.equal(String(coded.stderr), '', '--quiet: no conflict line');

  const json = await cliDone(['run', '--json', '--wait', '100', resource, '--', 'true']);
  assert.equal(json.code, 1);
  const [conflict] = events(json.stderr);
  assert.equal(conflict.event, 'conflict');
  assert.equal(conflict.holder, token);
  assert.equal(conflict.fence, Number(fence));
  assert.ok(conflict.ttlMs > 0 && conflict.ttlMs <= 30000);
  assert.ok(conflict.waitedMs >= 100);

  const status = await cliDone(['status', '--json', resource]);
  assert.equal(status.code, 1);
  assert.deepEqual({ ...JSON.parse(String(status.stdout)), time: 0, ttlMs: 0 }, { event: 'status', time: 0, resource, held: true, ttlMs: 0, token, fence: Number(fence) });
  const wrongRelease = await cliDone(['release', resource, '0123456789abcdef0123456789abcdef']);
  assert.equal(wrongRelease.code, 1);
  assertOneLine(wrongRelease.stderr);

  // A waiter with a long retry delay: only the wake-up on release can get it in quickly.
  const waiter = cli(['run', '--json', '--wait', '--retry-delay', '10000', resource, '--', 'echo', 'second ran']);
  await waiting(resource);
  first.child.stdin.end(); // the first command exits
  const [firstDone, waiterDone] = await Promise.all([first.done, waiter.done]);
  assert.equal(firstDone.code, 0, String(firstDone.stderr));
  assert.equal(waiterDone.code, 0, String(waiterDone.stderr));
  assert.equal(String(waiterDone.stdout), 'second ran\n');
  const exitedAt = Date.parse(events(firstDone.stderr).find((e) => e.event === 'child-exit').time);
  const acquired = events(waiterDone.stderr).find((e) => e.event === 'acquired');
  assert.ok(acquired.fence > Number(fence));
  const handOver = Date.parse(acquired.time) - exitedAt;
  assert.ok(handOver < 200, `the waiter got the lock ${handOver} ms after the first command exited`);
  assert.deepEqual(events(firstDone.stderr).map((e) => e.event), ['acquired', 'child-exit', 'released']);
  assert.equal((await cliDone(['status', resource])).code, 0);
});

test('SIGTERM to run reaches the command; run exits with its code', async () => {
  const run = cli(['run', 'cli:sigterm', '--', 'sh', '-c', `trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.05; done`]);
  await until(run.stdout, /ready/);
  run.child.kill('SIGTERM');
  const { code, stdout } = await run.done;
  assert.match(String(stdout), /got-term/);
  assert.equal(code, 42);
  assert.equal((await cliDone(['status', 'cli:sigterm'])).code, 0);
});

test('SIGINT while waiting for the lock stops the wait: exit 130', async () => {
  const holder = cli(['run', 'cli:sigint', '--', ...HOLD]);
  await until(holder.stdout, /ready/);
  const waiter = cli(['run', '--wait', 'cli:sigint', '--', 'echo', 'should-not-run']);
  await waiting('cli:sigint');
  waiter.child.kill('SIGINT');
  const { code, stdout } = await waiter.done;
  assert.equal(code, 130);
  assert.equal(String(stdout), '');
  holder.child.stdin.end();
  assert.equal((await holder.done).code, 0);
});

test('a lock deleted from under the command: SIGTERM, SIGKILL after --kill-after, exit 75', async () => {
  const resource = 'cli:lost';
  const run = cli(['run', '--json', '--ttl', '1000', '--kill-after', '600', resource, '--', ...STUBBORN]);
  await until(run.stdout, /ready/);
  await server.client().del(`lock:${resource}`);
  const deleted = Date.now();
  const { code, stdout, stderr } = await run.done;
  assert.equal(code, 75, String(stderr));
  assert.match(String(stdout), /got-term/, 'the command got SIGTERM first');
  const log = events(stderr);
  const lost = log.find((e) => e.event === 'lost');
  assert.equal(lost.reason, 'not-owner');
  assert.match(lost.message, /cli:lost/);
  assert.ok(Date.parse(lost.time) - deleted < 3000, 'auto-extension noticed the loss');
  const exit = log.find((e) => e.event === 'child-exit');
  assert.equal(exit.signal, 'SIGKILL');
  const grace = Date.parse(exit.time) - Date.parse(lost.time);
  assert.ok(grace >= 550 && grace < 5000, `SIGKILL came ${grace} ms after SIGTERM`);
});

test('--max-hold stops the command like a lost lock, then releases: exit 75', async () => {
  const { code, stderr } = await cliDone(['run', '--max-hold', '300', '--kill-after', '2000', 'cli:max-hold', '--', 'sleep', '10']);
  assert.equal(code, 75);
  assertOneLine(stderr);
  assert.match(String(stderr), /--max-hold 300 ms/);
  assert.equal((await cliDone(['status', 'cli:max-hold'])).code, 0, 'released once the command was gone');
});

test('stdout and stderr arrive intact (1 MB each through pipes)', async () => {
  const program = `
    const out = Buffer.alloc(1 << 20); for (let i = 0; i < out.length; i++) out[i] = (i * 31 + (i >> 9)) & 255;
    process.stdout.write(out); process.stderr.write(Buffer.from(out).reverse());`;
  const { code, stdout, stderr } = await cliDone(['run', 'cli:pipes', '--', process.execPath, '-e', program]);
  assert.equal(code, 0);
  const expected = Buffer.alloc(1 << 20);
  for (let i = 0; i < expected.length; i++) expected[i] = (i * 31 + (i >> 9)) & 255;
  assert.ok(stdout.equals(expected), `stdout: ${stdout.length} bytes, differs`);
  assert.ok(stderr.equals(Buffer.from(expected).reverse()), `stderr: ${stderr.length} bytes, differs`);
});

test('a wrong password: one line without the password, exit code 69', async () => {
  const url = `redis://:wrong-pass-xyz@127.0.0.1:${guarded.port}`;
  for (const args of [['run', 'cli:auth', '--', 'echo', 'should-not-run'], ['status', 'cli:auth'], ['release', 'cli:auth', 'x']]) {
    const { code, stdout, stderr } = await cliDone(args, { REDIS_URL: url });
    assert.equal(code, 69, String(stderr));
    assert.equal(String(stdout), '');
    assertOneLine(stderr);
    assert.doesNotMatch(String(stderr), /wrong-pass-xyz/);
    assert.match(String(stderr), /credentials/);
  }
  const json = await cliDone(['run', '--json', '--redis', url, 'cli:auth', '--', 'true']);
  assert.equal(json.code, 69);
  assert.doesNotMatch(String(json.stderr), /wrong-pass-xyz/);
  assert.equal(events(json.stderr)[0].code, 'ERR_LOCK_AUTH');
  const right = await cliDone(['status', '--redis', `redis://:the-right-one@127.0.0.1:${guarded.port}/2`, 'cli:auth']);
  assert.equal(right.code, 0, String(right.stderr));
});

test('status shows the fence for names with braces; release frees a lock by its token', async () => {
  const lock = new Lock(server.url);
  try {
    for (const resource of ['cli:{tag}:x', 'cli:a}b', 'cli:x{}y']) {
      const lease = await lock.acquireLease(resource, { ttl: 20000 });
      assert.ok(lease);
      const status = await cliDone(['status', '--json', resource]);
      assert.equal(status.code, 1);
      const shown = JSON.parse(String(status.stdout));
      assert.equal(shown.fence, lease.fence, resource);
      assert.equal(shown.token, lease.token);
      assert.ok(shown.ttlMs > 15000 && shown.ttlMs <= 20000);
      const released = await cliDone(['release', resource, lease.token]);
      assert.equal(released.code, 0);
      assert.equal(String(released.stdout), `"${resource}": released\n`);
      assert.equal(await lock.isLocked(resource), false);
      assert.equal((await cliDone(['release', resource, lease.token])).code, 1, 'not twice');
      const free = await cliDone(['status', resource]);
      assert.equal(free.code, 0);
      assert.equal(String(free.stdout), `"${resource}": free (last fence ${lease.fence})\n`);
    }
  } finally {
    await lock.close();
  }
});

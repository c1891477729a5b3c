#!/usr/bin/env node
// @ts-check
'use strict';
// `npm test`: builds the addon, then runs every test suite; stops at the first failure.
//   1. the native addon (release build, incremental)
//   2. engine tests in Rust (cargo test), against redis-server processes they start
//   3. the TypeScript check of the facade, the tests and the v1 README consumer
//   4. the JS black-box tests (node --test), against real Redis; then the API tests again with
//      the event-loop transport off, and the API, lease and waiting tests over TLS, over
//      Sentinel and over a 3-master Cluster
//   5. with SDL_TEST_NODES (node binaries separated by ':'), the API, lease, fault, process-exit and
//      observability tests once more on each of those Node lines (.ci/run passes 22, 24 and 26 from
//      the npm registry)
//   6. with SDL_TEST_SERVERS (server binaries separated by ':'), the API, lease, semaphore,
//      read-write lock, Redlock and Cluster/Sentinel tests once more on each of those servers (.ci/run passes
//      Redis 8.2.3 and Valkey 9.1.2 from PyPI wheels)
// Needs: cargo, redis-server on PATH, and Redis on localhost:6379 for the README examples.

const { execFileSync, spawnSync } = require('node:child_process');
const { mkdtempSync, readdirSync, rmSync, writeFileSync } = require('node:fs');
const { tmpdir } = require('node:os');
const { join } = require('node:path');

const root = join(__dirname, '..');
const npx = process.platform === 'win32' ? 'npx.cmd' : 'npx';

/**
 * Every test file under __test__ (`*.test.mjs`, subfolders too), named one by one: Node 22 takes
 * the arguments of `--test` as globs and fails on a bare directory, Node 20 takes no globs.
 */
const testFiles = /** @type {string[]} */ (readdirSync(join(root, '__test__'), { recursive: true }))
  .map((f) => f.split('\\').join('/'))
  .filter((f) => f.endsWith('.test.mjs') && !f.split('/').includes('node_modules'))
  .sort()
  .map((f) => `__test__/${f}`);
const apiSuites = ['__test__/api.test.mjs', '__test__/connection.test.mjs', '__test__/leases.test.mjs', '__test__/faults.test.mjs', '__test__/observability.test.mjs'];
const otherNodes = (process.env.SDL_TEST_NODES ?? '').split(':').filter(Boolean);
const otherServers = (process.env.SDL_TEST_SERVERS ?? '').split(':').filter(Boolean);
// On another server (Redis 8, Valkey): the calls, the leases, the semaphore and read-write lock
// scripts, Redlock, and Cluster and Sentinel made of that server. (The hygiene and fault suites pass there too, run by
// hand with SDL_TEST_REDIS_SERVER; they are left out of CI to keep it under 15 minutes: they test
// the client side, the same on every server.)
const serverSuites = ['__test__/api.test.mjs', '__test__/leases.test.mjs', '__test__/semaphore.test.mjs', '__test__/read-write-lock.test.mjs', '__test__/redlock.test.mjs', '__test__/scale-out.test.mjs'];
// Over TLS, over Sentinel and over Cluster: the calls, the leases, waiting, exclusion and order,
// and the other primitives.
const topologySuites = ['api', 'leases', 'exclusion', 'order', 'semaphore', 'read-write-lock', 'multi'].map((name) => `__test__/${name}.test.mjs`);
// On another Node line: the calls, the leases, the faults, that nothing keeps the process alive,
// and the diagnostics channels (their API grew between Node lines).
const nodeLineSuites = ['__test__/api.test.mjs', '__test__/leases.test.mjs', '__test__/faults.test.mjs', '__test__/process-exit.test.mjs', '__test__/observability.test.mjs'];

/** @type {Array<[string, string, string[]]>} */
const steps = [
  // SDL_SKIP_BUILD=1: lib/native already holds the engine to test (CI puts the shipped build there).
  ...(process.env.SDL_SKIP_BUILD === '1'
    ? []
    : /** @type {Array<[string, string, string[]]>} */ ([
        ['build the addon', npx, ['napi', 'build', '--platform', '--release', '--no-js', '--dts', 'native.d.ts', '--output-dir', 'lib/native']],
      ])),
  ['engine tests (Rust)', 'cargo', ['test', '-p', 'sdl-engine']],
  ['type check (tsc)', npx, ['tsc', '-p', 'tsconfig.json']],
  ['black-box tests (node --test)', process.execPath, ['--test', '--test-reporter=spec', ...testFiles]],
  // The same API tests once more with every call on the runtime path (the event-loop lane off).
  ['API tests, event-loop lane off', process.execPath, ['--test', '--test-reporter=dot', ...apiSuites]],
  // The API, lease and waiting suites once more with every server TLS-only, then with every
  // server behind a sentinel of its own, then with every server a Redis Cluster of 3 masters
  // (see helpers/redis-server.mjs). Two files at a time: they mostly wait on Redis and timers.
  ['API, lease and waiting tests over TLS', process.execPath, ['--test', '--test-concurrency=2', '--test-reporter=dot', ...topologySuites]],
  ['API, lease and waiting tests over Sentinel', process.execPath, ['--test', '--test-concurrency=2', '--test-reporter=dot', ...topologySuites]],
  ['API, lease and waiting tests over Cluster', process.execPath, ['--test', '--test-concurrency=2', '--test-reporter=dot', ...topologySuites]],
  // The event-loop lane calls libuv inside the host process: check it on every Node line asked for.
  ...otherNodes.map((node) => /** @type {[string, string, string[]]} */ ([`API tests on ${node}`, node, ['--test', '--test-reporter=dot', ...nodeLineSuites]])),
  ...otherServers.map((server) => /** @type {[string, string, string[]]} */ ([`suites on the server ${server}`, process.execPath, ['--test', '--test-reporter=dot', ...serverSuites]])),
];

/** A CA and a server certificate for 127.0.0.1 / localhost, made with openssl, in a fresh directory. */
function makeTlsDir() {
  const dir = mkdtempSync(join(tmpdir(), 'sdl-tls-'));
  const at = (/** @type {string} */ name) => join(dir, name);
  const run = (/** @type {string[]} */ args) => execFileSync('openssl', args, { stdio: 'ignore' });
  run(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=sdl-test-ca', '-keyout', at('ca.key'), '-out', at('ca.crt')]);
  run(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', at('server.key'), '-out', at('server.csr')]);
  writeFileSync(at('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  run(['x509', '-req', '-in', at('server.csr'), '-CA', at('ca.crt'), '-CAkey', at('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', at('ext.cnf'), '-out', at('server.crt')]);
  return dir;
}

/** @param {string} title */
function envFor(title) {
  if (title.includes('lane off')) return { ...process.env, SDL_EVENT_LOOP_LANE: '0' };
  if (title.includes('over Sentinel')) return { ...process.env, SDL_TEST_TOPOLOGY: 'sentinel' };
  if (title.includes('over Cluster')) return { ...process.env, SDL_TEST_TOPOLOGY: 'cluster' };
  const server = otherServers.find((path) => title === `suites on the server ${path}`);
  if (server) return { ...process.env, SDL_TEST_REDIS_SERVER: server };
  if (title.includes('over TLS')) {
    const dir = makeTlsDir();
    process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
    // Node (for ioredis) and the engine both add NODE_EXTRA_CA_CERTS to their roots.
    return { ...process.env, SDL_TEST_TLS: dir, NODE_EXTRA_CA_CERTS: join(dir, 'ca.crt') };
  }
  return process.env;
}

for (const [title, command, args] of steps) {
  console.log(`\n== ${title}: ${command} ${args.join(' ')}`);
  const started = Date.now();
  const env = envFor(title);
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit', env });
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  if (result.status !== 0) {
    console.error(`\n== FAILED: ${title} (${seconds} s)`);
    process.exit(result.status ?? 1);
  }
  console.log(`== ok: ${title} (${seconds} s)`);
}
console.log('\nAll tests passed.');

#!/usr/bin/env node
// @ts-check
'use strict';
// `npm test`: builds the addon, then runs every test suite; stops at the first failure.
//   1. the native addon (release build, incremental)
//   2. engine tests in Rust (cargo test), against redis-server processes they start
//   3. the TypeScript check of the facade, the tests and the v1 README consumer
//   4. the JS black-box tests (node --test), against real Redis
// Needs: cargo, redis-server on PATH, and Redis on localhost:6379 for the README examples.

const { spawnSync } = require('node:child_process');
const { join } = require('node:path');

const root = join(__dirname, '..');
const npx = process.platform === 'win32' ? 'npx.cmd' : 'npx';

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
  ['black-box tests (node --test)', process.execPath, ['--test', '--test-reporter=spec', '__test__/']],
  // The same API tests once more with every call on the runtime path (the event-loop lane off).
  ['API tests, event-loop lane off', process.execPath, ['--test', '--test-reporter=dot', '__test__/api.test.mjs', '__test__/connection.test.mjs', '__test__/leases.test.mjs', '__test__/faults.test.mjs']],
];

for (const [title, command, args] of steps) {
  console.log(`\n== ${title}: ${command} ${args.join(' ')}`);
  const started = Date.now();
  const env = title.includes('lane off') ? { ...process.env, SDL_EVENT_LOOP_LANE: '0' } : process.env;
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit', env });
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  if (result.status !== 0) {
    console.error(`\n== FAILED: ${title} (${seconds} s)`);
    process.exit(result.status ?? 1);
  }
  console.log(`== ok: ${title} (${seconds} s)`);
}
console.log('\nAll tests passed.');

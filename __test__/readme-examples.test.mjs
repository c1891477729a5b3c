// @ts-check
// The v1 README examples, unchanged, compile with `tsc --strict` as CommonJS and as an ES module
// consumer of this package, and run against Redis on localhost:6379 (the README's address).

import './helpers/tripwire.mjs';
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = fileURLToPath(new URL('..', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'sdl-consumer-'));
after(() => rmSync(work, { recursive: true, force: true }));

/** @param {'commonjs' | 'module'} type */
function makeConsumer(type) {
  const dir = join(work, type);
  mkdirSync(join(dir, 'node_modules', '@types'), { recursive: true });
  symlinkSync(repo, join(dir, 'node_modules', 'simple-distributed-lock'), 'dir');
  symlinkSync(join(repo, 'node_modules', 'ioredis'), join(dir, 'node_modules', 'ioredis'), 'dir');
  symlinkSync(join(repo, 'node_modules', '@types', 'node'), join(dir, 'node_modules', '@types', 'node'), 'dir');
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: `consumer-${type}`, private: true, type }));
  writeFileSync(
    join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        strict: true,
        target: 'es2022',
        // ESM: ioredis 5's own typings do not allow `import Redis from "ioredis"` under
        // node16 ESM resolution (TS2351), whatever this package does, so the ES module
        // consumer resolves like a bundler (still through this package's `import` condition
        // and index.d.mts) and emits ES modules that Node runs.
        module: type === 'module' ? 'es2022' : 'node16',
        moduleResolution: type === 'module' ? 'bundler' : 'node16',
        esModuleInterop: true,
        skipLibCheck: false,
        types: ['node'],
        outDir: 'dist',
      },
      files: ['index.ts'],
    }),
  );
  copyFileSync(join(repo, '__test__', 'consumer', 'readme-examples.ts'), join(dir, 'index.ts'));
  return dir;
}

/** @param {string} dir */
function compileAndRun(dir) {
  const tsc = join(repo, 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', dir], { stdio: 'pipe' });
  return execFileSync(process.execPath, [join(dir, 'dist', 'index.js')], { encoding: 'utf8', timeout: 60000 });
}

/** tsc's diagnostics come on stdout; show them when it fails. @param {() => string} run */
function withDiagnostics(run) {
  try {
    return run();
  } catch (err) {
    const e = /** @type {{ stdout?: Buffer | string, stderr?: Buffer | string }} */ (err);
    throw new Error(`${String(e.stdout ?? '')}${String(e.stderr ?? '')}`);
  }
}

test('as CommonJS: tsc --strict, then run', () => {
  const output = withDiagnostics(() => compileAndRun(makeConsumer('commonjs')));
  assert.match(output, /v1 README examples: all ran/);
});

test('as an ES module: tsc --strict, then run', () => {
  const output = withDiagnostics(() => compileAndRun(makeConsumer('module')));
  assert.match(output, /v1 README examples: all ran/);
});

// @ts-check
// Loads a copy of the package as another platform would: node with a preload that changes
// process.platform / arch / libc, then `require` or `import` of the package's entry point.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pretend = fileURLToPath(new URL('fixtures/pretend-platform.cjs', import.meta.url));

/**
 * @typedef {{ platform?: string, arch?: string, libc?: 'glibc' | 'musl', nodePath?: string, via?: 'require' | 'import' }} Pretence
 * @param {string} packageDir
 * @param {Pretence} as
 */
export function loadAs(packageDir, as) {
  const esm = as.via === 'import';
  const entry = JSON.stringify(join(packageDir, esm ? 'index.mjs' : 'index.js'));
  const args = ['-r', pretend, ...(esm ? ['--input-type=module', '-e', `import ${entry};`] : ['-e', `require(${entry});`])];
  const result = spawnSync(process.execPath, args, {
    encoding: 'utf8',
    timeout: 20000,
    env: {
      ...process.env,
      SDL_PRETEND_PLATFORM: as.platform ?? '',
      SDL_PRETEND_ARCH: as.arch ?? '',
      SDL_PRETEND_LIBC: as.libc ?? '',
      NODE_PATH: as.nodePath ?? '',
    },
  });
  return { status: result.status, stderr: result.stderr };
}

/** A supported platform other than this machine's, whose engine is therefore not installed here. */
export function otherLinuxGnu() {
  const arch = process.platform === 'linux' && process.arch === 'arm64' ? 'x64' : 'arm64';
  return { platform: 'linux', arch, libc: /** @type {const} */ ('glibc'), name: `linux-${arch}-gnu` };
}

/**
 * The message of the uncaught loader error in node's report of it, after checking its code.
 * @param {string} stderr
 */
export function thrownMessage(stderr) {
  const line = stderr.split('\n').find((l) => l.startsWith('Error: '));
  assert.ok(line, `no error in:\n${stderr}`);
  assert.match(stderr, /code: 'ERR_LOCK_NATIVE_MISSING'/);
  return line.slice('Error: '.length);
}

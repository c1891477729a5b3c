// @ts-check
// npm/<platform>/ holds one package per napi target, exactly as `napi create-npm-dirs` writes it
// from package.json: the same targets, the root's version (`npm version` runs `napi version`),
// and os / cpu / libc so that npm installs only the matching one.

import '../helpers/tripwire.mjs';
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NapiCli } from '@napi-rs/cli';

const repo = fileURLToPath(new URL('../..', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'sdl-npm-dirs-'));
after(() => rmSync(work, { recursive: true, force: true }));

/** @param {string} npmDir */
function manifests(npmDir) {
  return Object.fromEntries(
    readdirSync(npmDir).map((name) => [name, JSON.parse(readFileSync(join(npmDir, name, 'package.json'), 'utf8'))]),
  );
}

test('npm/ is what `napi create-npm-dirs` makes of package.json', async () => {
  copyFileSync(join(repo, 'package.json'), join(work, 'package.json'));
  await new NapiCli().createNpmDirs({ cwd: work });
  assert.deepEqual(manifests(join(repo, 'npm')), manifests(join(work, 'npm')));
});

test('each platform package declares os and cpu, and libc on Linux', () => {
  const { version } = JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8'));
  for (const [name, manifest] of Object.entries(manifests(join(repo, 'npm')))) {
    const [os, cpu, abi] = name.split('-');
    assert.equal(manifest.version, version, name);
    assert.deepEqual(manifest.os, [os], name);
    assert.deepEqual(manifest.cpu, [cpu], name);
    assert.deepEqual(manifest.libc, os === 'linux' ? [abi === 'musl' ? 'musl' : 'glibc'] : undefined, name);
    assert.deepEqual(manifest.files, [`simple-distributed-lock.${name}.node`], name);
    assert.equal(manifest.scripts, undefined, name);
  }
});

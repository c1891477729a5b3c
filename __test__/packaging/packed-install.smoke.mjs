// @ts-check
// The package as users get it: prepared by the release commands (`napi artifacts`, then
// `napi pre-publish`, which writes optionalDependencies), packed with `npm pack`, installed from
// the tarballs into a fresh project without network access, then used through `require`,
// `import` and TypeScript (`tsc --strict`) to run the v1 README examples against Redis on
// localhost:6379; its command-line tool runs through `npm exec`. Anything missing from a tarball
// fails here.
//
// Not a *.test.mjs file, so `npm test` leaves it out: it needs a release build of this machine's
// engine and takes about half a minute. `.ci/run` runs it; by hand: `npm run build && npm run
// test:packed`. SDL_PACK_ARTIFACTS names a folder searched for built `.node` files (default
// lib/native/); this machine's must be among them, the others are packed and checked too.

import '../helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NapiCli, readNapiConfig } from '@napi-rs/cli';
import { loadAs, otherLinuxGnu, thrownMessage } from './load-as.mjs';

/**
 * Ceiling for the stripped engine. The goal was 2 MB; with TLS (rustls + ring + the Mozilla
 * roots, ~0.7 MB) and the Redis Cluster client it measures ~2.7 MB at opt-level "z" (about
 * 1.1 MB in its npm tarball). This keeps it from growing unnoticed.
 */
const MAX_ENGINE_BYTES = 3 * 1024 * 1024;
const PACKAGE = 'simple-distributed-lock';
const repo = fileURLToPath(new URL('../..', import.meta.url));
const artifactsDir = join(repo, process.env.SDL_PACK_ARTIFACTS || join('lib', 'native'));
const work = mkdtempSync(join(tmpdir(), 'sdl-packed-'));
const stage = join(work, 'stage');
const consumer = join(work, 'consumer');
const installed = join(consumer, 'node_modules', PACKAGE);
after(() => rmSync(work, { recursive: true, force: true }));

const { targets, packageJson } = await readNapiConfig(join(repo, 'package.json'));
const version = String(packageJson.version);
/** This machine's platform, as the loader names it: the package that gets installed and run. */
const hostPlatform = (() => {
  const glibc = /** @type {any} */ (process.report.getReport()).header.glibcVersionRuntime;
  const abi = { linux: glibc ? '-gnu' : '-musl', win32: '-msvc' }[/** @type {string} */ (process.platform)] ?? '';
  return `${process.platform}-${process.arch}${abi}`;
})();
/** The built engines, by platform name: `<package>.<platform>.node` anywhere under artifactsDir. */
const builtEngines = new Map();
for (const path of readdirSync(artifactsDir, { recursive: true, encoding: 'utf8' })) {
  const name = /simple-distributed-lock\.([\w-]+)\.node$/.exec(path)?.[1];
  if (name && targets.some((t) => t.platformArchABI === name)) builtEngines.set(name, join(artifactsDir, path));
}

/** @typedef {{ filename: string, size: number, files: Array<{ path: string, size: number }> }} PackResult */
/** @type {PackResult} */
let rootPack;
/** @type {Map<string, PackResult>} */
const platformPacks = new Map();

/** @param {string} cwd @param {string[]} args */
function npm(cwd, args) {
  // npm is a .cmd script on Windows, which only a shell runs.
  return execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], shell: process.platform === 'win32' });
}

/** @param {string} dir @returns {PackResult} */
function npmPack(dir) {
  return JSON.parse(npm(dir, ['pack', '--json', '--pack-destination', work]))[0];
}

before(async () => {
  assert.ok(builtEngines.has(hostPlatform), `no ${PACKAGE}.${hostPlatform}.node in ${artifactsDir}: run npm run build first`);
  // A copy of the checkout, without what git ignores at the top: the release commands write to it.
  cpSync(repo, stage, { recursive: true, filter: (src) => !/^(node_modules|target|artifacts|\.git|\.tmp)([/\\]|$)/.test(relative(repo, src)) });
  // `napi artifacts` and `napi pre-publish` insist on a binary for every target; this machine
  // builds one or two, so the others get empty stand-ins, which are never packed.
  const artifacts = join(work, 'artifacts');
  mkdirSync(artifacts);
  for (const { platformArchABI: name } of targets) {
    const file = join(artifacts, `${PACKAGE}.${name}.node`);
    const built = builtEngines.get(name);
    if (built) copyFileSync(built, file);
    else writeFileSync(file, '');
  }
  const napi = new NapiCli();
  await napi.artifacts({ cwd: stage, outputDir: artifacts });
  await napi.prePublish({ cwd: stage, tagStyle: 'npm', ghRelease: false, skipOptionalPublish: true });
  rootPack = npmPack(stage);
  for (const name of builtEngines.keys()) platformPacks.set(name, npmPack(join(stage, 'npm', name)));

  // A fresh project: the two tarballs from the local files only (--offline: no registry), then
  // links to the dev tools the examples compile with (ioredis, @types/node).
  mkdirSync(consumer);
  writeFileSync(join(consumer, 'package.json'), JSON.stringify({ name: 'sdl-consumer', private: true }));
  const hostTarball = join(work, /** @type {PackResult} */ (platformPacks.get(hostPlatform)).filename);
  npm(consumer, ['install', '--offline', '--no-audit', '--no-fund', join(work, rootPack.filename), hostTarball]);
  mkdirSync(join(consumer, 'node_modules', '@types'), { recursive: true });
  for (const tool of ['ioredis', '@types/node']) symlinkSync(join(repo, 'node_modules', tool), join(consumer, 'node_modules', tool), 'junction');
});

test('the root tarball holds the JS facade and its types, the command-line tool, nothing else', () => {
  const paths = rootPack.files.map((f) => f.path).sort();
  for (const path of paths) {
    assert.match(path, /^(package\.json|README\.md|LICENSE|CHANGELOG\.md|index\.(js|mjs|d\.ts|d\.mts)|lib\/(cli\/)?[\w-]+\.js|bin\/simple-distributed-lock\.js)$/, `unexpected in the root tarball: ${path}`);
  }
  for (const path of ['index.js', 'index.mjs', 'index.d.ts', 'index.d.mts', 'lib/native.js', 'lib/lock.js', 'lib/errors.js', 'bin/simple-distributed-lock.js']) {
    assert.ok(paths.includes(path), `missing from the root tarball: ${path}`);
  }
  const jsIn = (/** @type {string} */ dir) => readdirSync(join(repo, dir)).filter((f) => f.endsWith('.js')).map((f) => `${dir}/${f}`);
  assert.deepEqual(paths.filter((p) => p.startsWith('lib/')), [...jsIn('lib'), ...jsIn('lib/cli')].sort());
});

test('the command-line tool runs from the installed package (npm exec, the bin link)', () => {
  const manifest = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8'));
  assert.deepEqual(manifest.bin, { [PACKAGE]: 'bin/simple-distributed-lock.js' });
  const exec = (/** @type {string[]} */ args) => npm(consumer, ['exec', '--offline', '--no', '--', PACKAGE, ...args]);
  assert.match(exec(['--help']), /^Usage: simple-distributed-lock <command>/);
  assert.equal(exec(['--version']).trim(), version);
  assert.match(exec(['run', '--help']), /--conflict-exit-code/);
  // The engine loads from the platform package: a real run against Redis on localhost:6379.
  const program = 'console.log(`ran ${process.env.LOCK_RESOURCE} ${/^[0-9a-f]{32}$/.test(process.env.LOCK_TOKEN)}`)';
  const output = execFileSync(process.execPath, [join(installed, 'bin', 'simple-distributed-lock.js'), 'run', 'packed-cli', '--', process.execPath, '-e', program], {
    cwd: consumer,
    encoding: 'utf8',
    env: { ...process.env, REDIS_URL: 'redis://127.0.0.1:6379' },
    timeout: 60000,
  });
  assert.equal(output, 'ran packed-cli true\n');
});

test('the root package lists every platform package at its own version, and runs no install script', () => {
  const manifest = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8'));
  assert.equal(manifest.version, version);
  assert.deepEqual(manifest.optionalDependencies, Object.fromEntries(targets.map((t) => [`${PACKAGE}-${t.platformArchABI}`, version])));
  for (const script of ['preinstall', 'install', 'postinstall', 'prepare']) assert.equal(manifest.scripts?.[script], undefined, script);
  assert.equal(existsSync(join(installed, 'binding.gyp')), false);
  assert.equal(existsSync(join(installed, 'lib', 'native')), false, 'the binary belongs in the platform package only');
});

test(`each built platform tarball holds its engine, under ${MAX_ENGINE_BYTES} bytes`, () => {
  for (const [name, pack] of platformPacks) {
    const engine = `${PACKAGE}.${name}.node`;
    assert.deepEqual(pack.files.map((f) => f.path).sort(), ['README.md', engine, 'package.json'].sort(), name);
    const size = /** @type {{ size: number }} */ (pack.files.find((f) => f.path === engine)).size;
    console.log(`# ${name}: engine ${size} bytes, tarball ${pack.size} bytes; root tarball ${rootPack.size} bytes`);
    assert.ok(size < MAX_ENGINE_BYTES, `${engine} is ${size} bytes`);
  }
});

test('the installed package is the copy from the tarball, with the platform package beside it', () => {
  assert.equal(realpathSync(installed), installed);
  const platformPackage = join(consumer, 'node_modules', `${PACKAGE}-${hostPlatform}`);
  assert.ok(existsSync(join(platformPackage, `${PACKAGE}.${hostPlatform}.node`)));
  const others = readdirSync(join(consumer, 'node_modules')).filter((n) => n.startsWith(`${PACKAGE}-`));
  assert.deepEqual(others, [`${PACKAGE}-${hostPlatform}`], 'npm installs only the matching platform package');
});

/** @param {'commonjs' | 'module'} type */
function compileReadmeExamples(type) {
  const dir = join(consumer, type);
  mkdirSync(dir);
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ type }));
  copyFileSync(join(repo, '__test__', 'consumer', 'readme-examples.ts'), join(dir, 'index.ts'));
  // ES modules resolve like a bundler: ioredis 5's own typings reject `import Redis from
  // "ioredis"` under node16 ESM resolution (see __test__/readme-examples.test.mjs).
  const resolution = type === 'module' ? { module: 'es2022', moduleResolution: 'bundler' } : { module: 'node16', moduleResolution: 'node16' };
  const compilerOptions = { ...resolution, strict: true, target: 'es2022', esModuleInterop: true, types: ['node'], outDir: 'dist' };
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions, files: ['index.ts'] }));
  const tsc = join(repo, 'node_modules', 'typescript', 'bin', 'tsc');
  try {
    execFileSync(process.execPath, [tsc, '-p', dir], { encoding: 'utf8' });
  } catch (err) {
    throw new Error(`tsc --strict failed:\n${String(/** @type {{ stdout?: string }} */ (err).stdout)}`);
  }
  return join(dir, 'dist', 'index.js');
}

for (const type of /** @type {const} */ (['commonjs', 'module'])) {
  test(`the v1 README examples type-check with tsc --strict and run, as ${type === 'module' ? 'an ES module' : 'CommonJS'}`, () => {
    const program = compileReadmeExamples(type);
    const source = readFileSync(program, 'utf8');
    assert.match(source, type === 'module' ? /^import \{ Lock \} from "simple-distributed-lock";$/m : /require\("simple-distributed-lock"\)/);
    const output = execFileSync(process.execPath, [program], { cwd: consumer, encoding: 'utf8', timeout: 60000 });
    assert.match(output, /v1 README examples: all ran/);
  });
}

test('on an unsupported platform, require and import fail with the clear error', () => {
  for (const via of /** @type {const} */ (['require', 'import'])) {
    const { stderr } = loadAs(installed, { platform: 'freebsd', arch: 'x64', via });
    assert.match(thrownMessage(stderr), /^simple-distributed-lock: no prebuilt native engine for this platform \(freebsd-x64\); there is no package "simple-distributed-lock-freebsd-x64"\./);
  }
});

test('without its platform package, require fails with the clear error', () => {
  const other = otherLinuxGnu();
  const { stderr } = loadAs(installed, other);
  const expected = `simple-distributed-lock: the native engine for this platform (${other.name}) is not installed: the package "simple-distributed-lock-${other.name}" is missing.`;
  assert.ok(thrownMessage(stderr).startsWith(expected), stderr);
});

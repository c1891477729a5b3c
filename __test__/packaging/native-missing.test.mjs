// @ts-check
// When no native engine loads, `require` and `import` fail with one error that names the
// platform, the package that was expected and what to do, never a bare "Cannot find module".

import '../helpers/tripwire.mjs';
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readNapiConfig } from '@napi-rs/cli';
import { loadAs, otherLinuxGnu, thrownMessage } from './load-as.mjs';

const repo = fileURLToPath(new URL('../..', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'sdl-native-missing-'));
after(() => rmSync(work, { recursive: true, force: true }));

async function napiTargets() {
  return (await readNapiConfig(join(repo, 'package.json'))).targets;
}

test('an unsupported platform: names it, says none is prebuilt and lists the supported ones', () => {
  for (const via of /** @type {const} */ (['require', 'import'])) {
    const { status, stderr } = loadAs(repo, { platform: 'freebsd', arch: 'x64', via });
    assert.notEqual(status, 0);
    assert.equal(
      thrownMessage(stderr),
      'simple-distributed-lock: no prebuilt native engine for this platform (freebsd-x64); there is ' +
        'no package "simple-distributed-lock-freebsd-x64". Prebuilt engines exist for ' +
        'linux-x64-gnu, linux-x64-musl, linux-arm64-gnu, linux-arm64-musl, darwin-x64, ' +
        'darwin-arm64, win32-x64-msvc. On another platform, build the engine from a clone of the ' +
        'repository ("npm install && npm run build", needs Rust) and use that checkout, or ask ' +
        'for the platform in an issue.',
    );
  }
});

test('a supported platform whose package was not installed: names the package, says how to get it', async () => {
  const host = `${process.platform}-${process.arch}`;
  for (const target of await napiTargets()) {
    const name = target.platformArchABI;
    if (name.startsWith(host)) continue; // this machine's own engine loads
    const libc = target.abi === 'musl' ? 'musl' : target.abi === 'gnu' ? 'glibc' : undefined;
    const { status, stderr } = loadAs(repo, { platform: target.platform, arch: target.arch, libc });
    assert.notEqual(status, 0, name);
    assert.equal(
      thrownMessage(stderr),
      `simple-distributed-lock: the native engine for this platform (${name}) is not installed: ` +
        `the package "simple-distributed-lock-${name}" is missing. npm installs it with ` +
        'simple-distributed-lock as an optional dependency, so reinstall without --omit=optional ' +
        '/ --no-optional, and if node_modules or package-lock.json came from another platform (a ' +
        'Docker image built from a macOS checkout, say), delete both and run npm install on this one.',
    );
  }
});

test('an installed platform package that fails to load: names it and says why', () => {
  const other = otherLinuxGnu();
  const packageDir = join(work, 'node_modules', `simple-distributed-lock-${other.name}`);
  mkdirSync(packageDir, { recursive: true });
  writeFileSync(join(packageDir, 'package.json'), JSON.stringify({ main: 'engine.node' }));
  writeFileSync(join(packageDir, 'engine.node'), 'not a shared library');
  const { status, stderr } = loadAs(repo, { ...other, nodePath: join(work, 'node_modules') });
  assert.notEqual(status, 0);
  const message = thrownMessage(stderr);
  assert.ok(
    message.startsWith(
      `simple-distributed-lock: the native engine for this platform (${other.name}) is installed as ` +
        `"simple-distributed-lock-${other.name}" but failed to load: `,
    ),
    message,
  );
  assert.match(message, /engine\.node: .+\. Reinstall it with npm install on this machine; on Linux, the gnu build needs glibc 2\.17 or newer\.$/);
});

test("the loader's prebuilt platforms are exactly the napi targets", async () => {
  const loader = readFileSync(join(repo, 'lib', 'native.js'), 'utf8');
  const list = /PREBUILT_PLATFORMS = \[([^\]]*)\]/.exec(loader);
  assert.ok(list, 'PREBUILT_PLATFORMS not found in lib/native.js');
  const listed = [...list[1].matchAll(/'([^']+)'/g)].map((m) => m[1]);
  assert.deepEqual(listed.sort(), (await napiTargets()).map((t) => t.platformArchABI).sort());
});

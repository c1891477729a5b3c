'use strict';
// Loads the compiled engine: a local build (lib/native/, from `npm run build`) first, then the
// prebuilt binary of the platform package that npm installed as an optional dependency.

const { existsSync } = require('node:fs');
const { join } = require('node:path');

const PACKAGE = 'simple-distributed-lock';

function isMusl() {
  if (process.platform !== 'linux') return false;
  try {
    const report = /** @type {any} */ (process.report && process.report.getReport());
    return !(report && report.header && report.header.glibcVersionRuntime);
  } catch {
    return existsSync('/etc/alpine-release');
  }
}

/** The napi-rs platform name, e.g. `linux-x64-gnu`, `darwin-arm64`, `win32-x64-msvc`. */
function platformName() {
  const { platform, arch } = process;
  if (platform === 'linux') return `linux-${arch}-${isMusl() ? 'musl' : 'gnu'}`;
  if (platform === 'win32') return `win32-${arch}-msvc`;
  return `${platform}-${arch}`;
}

function load() {
  const name = platformName();
  const localFile = join(__dirname, 'native', `${PACKAGE}.${name}.node`);
  const platformPackage = `${PACKAGE}-${name}`;
  /** @type {unknown[]} */
  const failures = [];
  if (existsSync(localFile)) {
    try {
      return require(localFile);
    } catch (err) {
      failures.push(err);
    }
  }
  try {
    return require(platformPackage);
  } catch (err) {
    failures.push(err);
  }
  const reasons = failures
    .map((err) => (err instanceof Error ? err.message.split('\n')[0] : String(err)))
    .join('; ');
  const error = new Error(
    `${PACKAGE}: no native engine for this platform (${name}). ` +
      `Expected the package "${platformPackage}", which npm installs with ${PACKAGE} on ` +
      `supported platforms. Reinstall without --omit=optional / --no-optional, check that the ` +
      `platform is supported (see the README), or build from source with "npm run build" ` +
      `(needs Rust). Cause: ${reasons}`,
    { cause: failures[failures.length - 1] },
  );
  /** @type {any} */ (error).code = 'ERR_LOCK_NATIVE_MISSING';
  throw error;
}

/** @type {typeof import('./native/native')} */
module.exports = load();

'use strict';
// Loads the compiled engine: a local build (lib/native/, from `npm run build`) first, then the
// prebuilt binary of the platform package that npm installed as an optional dependency.
// When neither loads, it throws one error that says which platform this is, which package was
// expected, and what to do about it.

const { existsSync } = require('node:fs');
const { join } = require('node:path');

const PACKAGE = 'simple-distributed-lock';

/** The platforms with a prebuilt package: package.json `napi.targets` in napi-rs's names (a test keeps them equal). */
const PREBUILT_PLATFORMS = [
  'linux-x64-gnu',
  'linux-x64-musl',
  'linux-arm64-gnu',
  'linux-arm64-musl',
  'darwin-x64',
  'darwin-arm64',
  'win32-x64-msvc',
];

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

/** @param {unknown} err */
function firstLine(err) {
  return err instanceof Error ? err.message.split('\n')[0] : String(err);
}

/** @param {unknown} err @param {string} packageName */
function isNotInstalled(err, packageName) {
  const e = /** @type {{ code?: unknown, message?: unknown }} */ (err);
  return e.code === 'MODULE_NOT_FOUND' && String(e.message).includes(`'${packageName}'`);
}

/**
 * The message for each way of failing; the first sentence names the platform and the package.
 * @param {string} platform @param {string} platformPackage @param {unknown} packageError
 */
function explain(platform, platformPackage, packageError) {
  if (!PREBUILT_PLATFORMS.includes(platform)) {
    return (
      `${PACKAGE}: no prebuilt native engine for this platform (${platform}); there is no package ` +
      `"${platformPackage}". Prebuilt engines exist for ${PREBUILT_PLATFORMS.join(', ')}. ` +
      `On another platform, build the engine from a clone of the repository ("npm install && ` +
      `npm run build", needs Rust) and use that checkout, or ask for the platform in an issue.`
    );
  }
  if (isNotInstalled(packageError, platformPackage)) {
    return (
      `${PACKAGE}: the native engine for this platform (${platform}) is not installed: the ` +
      `package "${platformPackage}" is missing. npm installs it with ${PACKAGE} as an optional ` +
      `dependency, so reinstall without --omit=optional / --no-optional, and if node_modules or ` +
      `package-lock.json came from another platform (a Docker image built from a macOS checkout, ` +
      `say), delete both and run npm install on this one.`
    );
  }
  return (
    `${PACKAGE}: the native engine for this platform (${platform}) is installed as ` +
    `"${platformPackage}" but failed to load: ${firstLine(packageError)}. Reinstall it with ` +
    `npm install on this machine; on Linux, the gnu build needs glibc 2.17 or newer.`
  );
}

function load() {
  const platform = platformName();
  const localFile = join(__dirname, 'native', `${PACKAGE}.${platform}.node`);
  const platformPackage = `${PACKAGE}-${platform}`;
  /** @type {unknown} */
  let localError;
  if (existsSync(localFile)) {
    try {
      return require(localFile);
    } catch (err) {
      localError = err;
    }
  }
  try {
    return require(platformPackage);
  } catch (packageError) {
    let message = explain(platform, platformPackage, packageError);
    if (localError) message += ` (The local build ${localFile} failed too: ${firstLine(localError)}.)`;
    const error = new Error(message, { cause: packageError });
    /** @type {any} */ (error).code = 'ERR_LOCK_NATIVE_MISSING';
    throw error;
  }
}

/** @type {typeof import('./native/native')} */
module.exports = load();

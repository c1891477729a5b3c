'use strict';
// Turns what the caller hands to `new Lock(...)` into the engine's connection settings.
// The engine opens its own connection; it only reads the caller's ioredis options.
// Nothing here may put a password into an error message.

const { LockUnsupportedError } = require('./errors');
const { typeError, milliseconds } = require('./validate');

/** ioredis's own default connectTimeout; we replace it by ours so a dead server shows in ~1 s. */
const IOREDIS_DEFAULT_CONNECT_TIMEOUT = 10000;
const DEFAULT_TIMEOUT_MS = 1000;

const EXPECTED = 'an ioredis instance, a redis:// or rediss:// URL, or an options object';

/**
 * @typedef {import('./native/native').ConnectionSettings} ConnectionSettings
 * @typedef {{ settings: ConnectionSettings, keyPrefix: string }} Connection
 */

/**
 * @param {unknown} redis what the caller passed as the first argument
 * @param {{ connectTimeout?: unknown, commandTimeout?: unknown }} lockOptions
 * @returns {Connection}
 */
function resolveConnection(redis, lockOptions) {
  /** @type {Connection} */
  let resolved;
  if (typeof redis === 'string') {
    resolved = fromUrl(redis);
  } else if (redis !== null && typeof redis === 'object' && !Array.isArray(redis)) {
    const candidate = /** @type {Record<string, any>} */ (redis);
    if (candidate.isCluster === true || candidate.constructor?.name === 'Cluster') {
      throw new LockUnsupportedError(
        'Redis Cluster (an ioredis Cluster) is not supported yet; pass a single-server ioredis ' +
          'instance, URL or options object.',
      );
    }
    const isIoredisInstance =
      candidate.options !== null &&
      typeof candidate.options === 'object' &&
      (typeof candidate.sendCommand === 'function' || 'status' in candidate);
    resolved = fromOptions(isIoredisInstance ? candidate.options : candidate);
  } else if (Array.isArray(redis)) {
    throw new LockUnsupportedError(
      'Redlock over several Redis servers is not supported yet; pass one server.',
    );
  } else {
    throw typeError('redis', EXPECTED, redis);
  }
  const settings = resolved.settings;
  settings.connectTimeoutMs = milliseconds(
    'connectTimeout',
    lockOptions.connectTimeout,
    settings.connectTimeoutMs ?? DEFAULT_TIMEOUT_MS,
  );
  settings.commandTimeoutMs = milliseconds(
    'commandTimeout',
    lockOptions.commandTimeout,
    settings.commandTimeoutMs ?? DEFAULT_TIMEOUT_MS,
  );
  return resolved;
}

/**
 * Options as ioredis holds them (or a plain object of the same shape).
 * @param {Record<string, any>} options
 * @returns {Connection}
 */
function fromOptions(options) {
  if (Array.isArray(options.sentinels) && options.sentinels.length > 0) {
    throw new LockUnsupportedError(
      'Redis Sentinel (ioredis `sentinels`) is not supported yet; pass the master directly.',
    );
  }
  /** @type {ConnectionSettings} */
  const settings = {};
  const field = (/** @type {string} */ name, /** @type {string} */ type) => {
    const value = options[name];
    if (value == null || value === '') return undefined;
    if (typeof value !== type) throw typeError(`redis.${name}`, `a ${type}`, value);
    return value;
  };
  settings.host = field('host', 'string');
  const port = options.port == null || options.port === '' ? undefined : Number(options.port);
  if (port !== undefined && (!Number.isInteger(port) || port < 1 || port > 65535)) {
    throw typeError('redis.port', 'an integer from 1 to 65535', options.port);
  }
  settings.port = port;
  settings.path = field('path', 'string');
  settings.username = field('username', 'string');
  if (options.password != null && typeof options.password !== 'string') {
    throw new TypeError('redis.password must be a string (value not shown)');
  }
  settings.password = options.password || undefined;
  const db = options.db == null ? undefined : Number(options.db);
  if (db !== undefined && (!Number.isInteger(db) || db < 0)) {
    throw typeError('redis.db', 'a non-negative integer', options.db);
  }
  settings.db = db;
  if (options.tls) settings.tls = tlsSettings(options.tls);
  const connectTimeout = options.connectTimeout;
  if (typeof connectTimeout === 'number' && connectTimeout > 0 && connectTimeout !== IOREDIS_DEFAULT_CONNECT_TIMEOUT) {
    settings.connectTimeoutMs = Math.min(Math.ceil(connectTimeout), 2 ** 31 - 1);
  }
  if (typeof options.commandTimeout === 'number' && options.commandTimeout > 0) {
    settings.commandTimeoutMs = Math.min(Math.ceil(options.commandTimeout), 2 ** 31 - 1);
  }
  const keyPrefix = options.keyPrefix == null ? '' : options.keyPrefix;
  if (typeof keyPrefix !== 'string') throw typeError('redis.keyPrefix', 'a string', keyPrefix);
  return { settings, keyPrefix };
}

/**
 * ioredis's `tls` option (Node's tls.connect options) to the engine's.
 * @param {any} tls
 * @returns {NonNullable<ConnectionSettings['tls']>}
 */
function tlsSettings(tls) {
  if (tls === true) return {};
  if (typeof tls !== 'object') throw typeError('redis.tls', 'an object or true', tls);
  return {
    ca: pem('redis.tls.ca', tls.ca),
    cert: pem('redis.tls.cert', tls.cert),
    key: pem('redis.tls.key', tls.key),
    rejectUnauthorized: tls.rejectUnauthorized !== false,
  };
}

/**
 * @param {string} name @param {unknown} value
 * @returns {string | undefined}
 */
function pem(name, value) {
  if (value == null) return undefined;
  const parts = Array.isArray(value) ? value : [value];
  return parts
    .map((part) => {
      if (typeof part === 'string') return part;
      if (Buffer.isBuffer(part)) return part.toString('utf8');
      throw new TypeError(`${name} must be a PEM string or Buffer, or an array of them (value not shown)`);
    })
    .join('\n');
}

/**
 * `redis://[[user]:password@]host[:port][/db]`, `rediss://...` (TLS), `unix:///path[?db=n]`.
 * @param {string} url
 * @returns {Connection}
 */
function fromUrl(url) {
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    // The input may hold a password: never echo it.
    throw new TypeError(`redis must be ${EXPECTED}; the string given is not a valid URL (not shown)`);
  }
  const protocol = parsed.protocol;
  /** @type {ConnectionSettings} */
  const settings = {};
  if (protocol === 'unix:' || protocol === 'redis+unix:') {
    settings.path = decodeURIComponent(parsed.pathname);
  } else if (protocol === 'redis:' || protocol === 'rediss:') {
    settings.host = parsed.hostname.replace(/^\[(.*)\]$/, '$1') || undefined;
    settings.port = parsed.port ? Number(parsed.port) : undefined;
    const dbPath = parsed.pathname.replace(/^\//, '');
    if (dbPath) settings.db = urlDb(dbPath);
    if (protocol === 'rediss:') settings.tls = {};
  } else {
    throw new TypeError(`redis must be ${EXPECTED}; the URL scheme "${protocol}" is not supported`);
  }
  if (parsed.username) settings.username = decodeURIComponent(parsed.username);
  if (parsed.password) settings.password = decodeURIComponent(parsed.password);
  const dbParam = parsed.searchParams.get('db');
  if (dbParam) settings.db = urlDb(dbParam);
  return { settings, keyPrefix: '' };
}

/** @param {string} text */
function urlDb(text) {
  const db = Number(text);
  if (!Number.isInteger(db) || db < 0) {
    throw new TypeError(`redis URL database must be a non-negative integer, got "${text}"`);
  }
  return db;
}

module.exports = { resolveConnection, fromUrl };

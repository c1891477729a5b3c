'use strict';
// Turns what the caller hands to `new Lock(...)` into the engine's topology settings: one
// server, a Sentinel group, a Redis Cluster, or Redlock masters. The engine opens its own
// connections; it only reads the caller's ioredis options.
// Nothing here may put a password into an error message.

const { LockUnsupportedError } = require('./errors');
const { typeError, rangeError, milliseconds } = require('./validate');

/** ioredis's own default connectTimeout; we replace it by ours so a dead server shows in ~1 s. */
const IOREDIS_DEFAULT_CONNECT_TIMEOUT = 10000;
const DEFAULT_TIMEOUT_MS = 1000;

const EXPECTED =
  'an ioredis instance (Redis or Cluster), a redis:// / rediss:// / redis+sentinel:// URL, an options object, or an array of them for Redlock';

/**
 * @typedef {import('./native/native').ConnectionSettings} ConnectionSettings
 * @typedef {import('./native/native').TopologySettings} TopologySettings
 * @typedef {{ settings: ConnectionSettings, keyPrefix: string }} Connection
 * @typedef {{ topology: TopologySettings, keyPrefix: string }} Resolved
 * @typedef {{ connectTimeout?: unknown, commandTimeout?: unknown }} TimeoutOptions
 */

/**
 * The deployment the caller describes: one server, a Sentinel group, a cluster, or (an array)
 * independent masters for Redlock.
 * @param {unknown} redis what the caller passed as the first argument
 * @param {TimeoutOptions} lockOptions
 * @returns {Resolved}
 */
function resolveConnection(redis, lockOptions) {
  if (Array.isArray(redis)) return redlock(redis, lockOptions);
  const described = describe(redis, 'redis');
  if ('topology' in described) {
    for (const server of described.topology.servers) withTimeouts(server, lockOptions);
    if (described.topology.master) withTimeouts(described.topology.master, lockOptions);
    return described;
  }
  return {
    topology: { kind: 'single', servers: [withTimeouts(described.settings, lockOptions)] },
    keyPrefix: described.keyPrefix,
  };
}

/**
 * One element: a single server (`Connection`) or a whole deployment (`Resolved`).
 * @param {unknown} redis @param {string} name
 * @returns {Connection | Resolved}
 */
function describe(redis, name) {
  if (typeof redis === 'string') {
    return /^redis(s)?\+sentinel:/.test(redis) ? fromSentinelUrl(redis) : fromUrl(redis);
  }
  if (redis === null || typeof redis !== 'object' || Array.isArray(redis)) throw typeError(name, EXPECTED, redis);
  const candidate = /** @type {Record<string, any>} */ (redis);
  if (candidate.isCluster === true && Array.isArray(candidate.startupNodes)) {
    return fromIoredisCluster(candidate);
  }
  const isIoredisInstance =
    candidate.options !== null &&
    typeof candidate.options === 'object' &&
    (typeof candidate.sendCommand === 'function' || 'status' in candidate);
  const options = isIoredisInstance ? candidate.options : candidate;
  if (Array.isArray(options.sentinels) && options.sentinels.length > 0) return fromSentinelOptions(options);
  if (!isIoredisInstance && Array.isArray(options.cluster)) return fromClusterOptions(options);
  return fromOptions(options);
}

/**
 * @param {unknown[]} masters @param {TimeoutOptions} lockOptions
 * @returns {Resolved}
 */
function redlock(masters, lockOptions) {
  if (masters.length < 2) {
    throw rangeError('redis', 'an array of at least 2 independent masters for Redlock (3 or 5 are usual)', masters);
  }
  const servers = masters.map((master, index) => {
    const described = describe(master, `redis[${index}]`);
    if ('topology' in described) {
      throw new LockUnsupportedError(`redis[${index}]: each Redlock master must be a single server, not a cluster or a Sentinel group.`);
    }
    return described;
  });
  const prefixes = new Set(servers.map((s) => s.keyPrefix));
  if (prefixes.size > 1) throw new TypeError('redis: the Redlock masters must share one keyPrefix');
  return {
    topology: { kind: 'redlock', servers: servers.map((s) => withTimeouts(s.settings, lockOptions)) },
    keyPrefix: servers[0].keyPrefix,
  };
}

/**
 * Lock options win; else what the connection said; else our defaults.
 * @param {ConnectionSettings} settings @param {TimeoutOptions} lockOptions
 */
function withTimeouts(settings, lockOptions) {
  settings.connectTimeoutMs = milliseconds('connectTimeout', lockOptions.connectTimeout, settings.connectTimeoutMs ?? DEFAULT_TIMEOUT_MS);
  settings.commandTimeoutMs = milliseconds('commandTimeout', lockOptions.commandTimeout, settings.commandTimeoutMs ?? DEFAULT_TIMEOUT_MS);
  return settings;
}

/**
 * An ioredis `Cluster`: its startup nodes and its redisOptions (credentials, TLS, timeouts).
 * @param {Record<string, any>} cluster
 * @returns {Resolved}
 */
function fromIoredisCluster(cluster) {
  const options = cluster.options ?? {};
  return clusterOf(cluster.startupNodes, options.redisOptions ?? {}, options.keyPrefix ?? options.redisOptions?.keyPrefix);
}

/**
 * `{ cluster: [nodes...], password, username, tls, keyPrefix, ... }`.
 * @param {Record<string, any>} options
 * @returns {Resolved}
 */
function fromClusterOptions(options) {
  const { cluster, ...shared } = options;
  return clusterOf(cluster, shared, shared.keyPrefix);
}

/**
 * @param {unknown[]} nodes startup nodes: ports, "host:port", URLs or `{ host, port }`
 * @param {Record<string, any>} shared credentials, TLS and timeouts for every node
 * @param {unknown} keyPrefix
 * @returns {Resolved}
 */
function clusterOf(nodes, shared, keyPrefix) {
  if (nodes.length === 0) throw new TypeError('redis: a cluster needs at least one startup node');
  const base = fromOptions({ ...shared, host: undefined, port: undefined, path: undefined, keyPrefix: undefined });
  if (base.settings.db) throw new TypeError('redis.db: Redis Cluster has only database 0');
  const servers = nodes.map((node, index) => {
    const own = nodeSettings(node, `redis.startupNodes[${index}]`);
    return { ...base.settings, ...own };
  });
  return { topology: { kind: 'cluster', servers }, keyPrefix: prefixOf(keyPrefix) };
}

/**
 * A node spec as ioredis takes it: a port, "host:port", a URL, or `{ host, port }`.
 * @param {unknown} node @param {string} name
 * @returns {ConnectionSettings}
 */
function nodeSettings(node, name) {
  if (typeof node === 'number') return { host: '127.0.0.1', port: portOf(node, name) };
  if (typeof node === 'string') {
    if (node.includes('://')) {
      const { settings } = fromUrl(node);
      return settings;
    }
    const match = /^\[?([^\]]*?)\]?:(\d+)$/.exec(node);
    if (!match) throw new TypeError(`${name} must be "host:port", a URL or { host, port }`);
    return { host: match[1], port: portOf(Number(match[2]), name) };
  }
  if (node !== null && typeof node === 'object') {
    const spec = /** @type {Record<string, unknown>} */ (node);
    return {
      host: typeof spec.host === 'string' && spec.host ? spec.host : '127.0.0.1',
      port: spec.port == null ? undefined : portOf(Number(spec.port), `${name}.port`),
    };
  }
  throw typeError(name, 'a port, "host:port", a URL or { host, port }', node);
}

/**
 * ioredis's Sentinel options: `sentinels`, `name`, `sentinelUsername`/`sentinelPassword`
 * (for the sentinels), and username/password/db/tls (for the master).
 * @param {Record<string, any>} options
 * @returns {Resolved}
 */
function fromSentinelOptions(options) {
  const name = options.name;
  if (typeof name !== 'string' || name === '') throw typeError('redis.name', "the Sentinel master's name", name);
  const master = fromOptions({ ...options, host: undefined, port: undefined, path: undefined });
  const sentinelTls = options.enableTLSForSentinelMode ? options.sentinelTLS ?? options.tls : options.sentinelTLS;
  const sentinels = options.sentinels.map((/** @type {unknown} */ sentinel, /** @type {number} */ index) => {
    const node = nodeSettings(sentinel, `redis.sentinels[${index}]`);
    /** @type {ConnectionSettings} */
    const settings = { ...node, port: node.port ?? 26379 };
    if (typeof options.sentinelUsername === 'string' && options.sentinelUsername) settings.username = options.sentinelUsername;
    if (typeof options.sentinelPassword === 'string' && options.sentinelPassword) settings.password = options.sentinelPassword;
    if (sentinelTls) settings.tls = tlsSettings(sentinelTls);
    if (master.settings.connectTimeoutMs) settings.connectTimeoutMs = master.settings.connectTimeoutMs;
    return settings;
  });
  return {
    topology: { kind: 'sentinel', servers: sentinels, masterName: name, master: master.settings },
    keyPrefix: master.keyPrefix,
  };
}

/**
 * `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/masterName[/db]`
 * (`rediss+sentinel://` for TLS to the master). Credentials are the master's; the sentinels'
 * go in `?sentinelPassword=` / `?sentinelUsername=`.
 * @param {string} url
 * @returns {Resolved}
 */
function fromSentinelUrl(url) {
  const match = /^(rediss?)\+sentinel:\/\/(?:([^@/]*)@)?([^/?#@]+)\/([^/?#]+)(?:\/(\d+))?\/?(?:\?([^#]*))?$/.exec(url);
  if (!match) {
    throw new TypeError(`redis must be ${EXPECTED}; the redis+sentinel:// URL is malformed (not shown)`);
  }
  const [, scheme, userinfo, hosts, name, db, query] = match;
  const params = new URLSearchParams(query ?? '');
  /** @type {Record<string, unknown>} */
  const options = {
    sentinels: hosts.split(',').map((hostPort) => {
      const parsed = /^\[?([^\]]+?)\]?(?::(\d+))?$/.exec(hostPort);
      if (!parsed) throw new TypeError('redis: a sentinel address in the redis+sentinel:// URL is malformed');
      return { host: parsed[1], port: parsed[2] ? Number(parsed[2]) : 26379 };
    }),
    name: decodeURIComponent(name),
    db: db ? Number(db) : undefined,
    tls: scheme === 'rediss' ? {} : undefined,
    sentinelPassword: params.get('sentinelPassword') ?? undefined,
    sentinelUsername: params.get('sentinelUsername') ?? undefined,
  };
  if (userinfo) {
    const [user, ...rest] = userinfo.split(':');
    if (user) options.username = decodeURIComponent(user);
    if (rest.length) options.password = decodeURIComponent(rest.join(':'));
  }
  return fromSentinelOptions(options);
}

/** @param {number} port @param {string} name */
function portOf(port, name) {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw typeError(name, 'an integer from 1 to 65535', port);
  return port;
}

/** @param {unknown} keyPrefix */
function prefixOf(keyPrefix) {
  if (keyPrefix == null) return '';
  if (typeof keyPrefix !== 'string') throw typeError('redis.keyPrefix', 'a string', keyPrefix);
  return keyPrefix;
}

/**
 * Options as ioredis holds them (or a plain object of the same shape).
 * @param {Record<string, any>} options
 * @returns {Connection}
 */
function fromOptions(options) {
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
  return { settings, keyPrefix: prefixOf(options.keyPrefix) };
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
    servername: servername(tls.servername),
  };
}

/** `tls.servername`: the name the certificate must carry (SNI), if not the host. @param {unknown} value */
function servername(value) {
  if (value == null || value === '') return undefined;
  if (typeof value !== 'string') throw typeError('redis.tls.servername', 'a string', value);
  return value;
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

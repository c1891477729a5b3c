// @ts-check
// Private redis-server processes on free ports, for tests that stop, kill or configure Redis.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Cluster, Redis } from 'ioredis';

/** @returns {Promise<number>} */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** @param {number} port @param {number} timeoutMs */
async function waitForPort(port, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const open = await new Promise((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => { socket.destroy(); resolve(true); });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`redis-server did not start on port ${port}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * `SDL_TEST_REDIS_SERVER=<path>`: the server binary every helper starts (default `redis-server` on
 * PATH), so the same suites run on Redis 8 and Valkey (`npm test` does this for the servers that
 * `SDL_TEST_SERVERS` names).
 */
export const SERVER_BINARY = process.env.SDL_TEST_REDIS_SERVER || 'redis-server';

/**
 * `SDL_TEST_TLS=<dir>` (with ca.crt, server.crt, server.key in it, and NODE_EXTRA_CA_CERTS naming
 * the CA): every server speaks TLS only, `url` is `rediss://`, and `client()` uses TLS, so the same
 * suites run over TLS (`npm test` does this for the API and lease suites).
 */
const TLS_DIR = process.env.SDL_TEST_TLS;

/** redis-server arguments that make it TLS-only on `port`. @param {number} port */
function tlsArgs(port) {
  if (!TLS_DIR) return [];
  return [
    '--port', '0', '--tls-port', String(port),
    '--tls-cert-file', `${TLS_DIR}/server.crt`, '--tls-key-file', `${TLS_DIR}/server.key`,
    '--tls-ca-cert-file', `${TLS_DIR}/ca.crt`, '--tls-auth-clients', 'no',
  ];
}

/**
 * `SDL_TEST_TOPOLOGY=sentinel`: a server a test starts with `RedisServer.start()` is a master
 * behind a sentinel of its own; `url` is `redis+sentinel://` and `client()` asks the sentinel,
 * so a Lock made from either finds the master through Sentinel, and the same suites run over
 * Sentinel (`npm test` does this for the API, lease and waiting suites).
 *
 * `SDL_TEST_TOPOLOGY=cluster`: `RedisServer.start()` starts a Redis Cluster of 3 masters instead
 * (helpers/topology.mjs); `url` is then `{ cluster: [node URLs] }` (what a Lock takes for a
 * cluster, and what rawClient() opens), `client()` is an ioredis `Cluster`, `port` is the first
 * master's, and kill / restart / stop act on every node. Commands without a key go to one node
 * of a Cluster client, so the tests ask every master through `everyMaster()` and `keys()`.
 *
 * Servers the topology helpers start are left alone in both.
 */
const TOPOLOGY = process.env.SDL_TEST_TOPOLOGY ?? 'single';
const SENTINEL_MASTER = 'sdl-test';
/** Sentinels still running, killed when the test process exits however it ends. */
const liveSentinels = new Set();
process.on('exit', () => {
  for (const child of liveSentinels) child.kill('SIGKILL');
});

/** `--requirepass x` among redis-server arguments: x, else null. @param {string[]} args */
function passwordIn(args) {
  const at = args.indexOf('--requirepass');
  return at >= 0 && at + 1 < args.length ? args[at + 1] : null;
}

export class RedisServer {
  /** @param {number} port @param {string[]} args */
  constructor(port, args) {
    this.port = port;
    this.args = args;
    /** @type {import('node:child_process').ChildProcess | null} */
    this.child = null;
    /** @type {Redis[]} */
    this.clients = [];
    /** SDL_TEST_TOPOLOGY=sentinel: the sentinel in front of it. @type {{ port: number, child: import('node:child_process').ChildProcess, dir: string } | null} */
    this.sentinel = null;
    /** SDL_TEST_TOPOLOGY=cluster: the cluster it stands for. @type {import('./topology.mjs').ClusterTopology | null} */
    this.cluster = null;
    /** Plain clients of single masters, for everyMaster(). @type {Map<number, Redis>} */
    this.direct = new Map();
  }

  /** @param {string[]} [args] extra redis-server arguments, e.g. ['--requirepass', 'x'] */
  static async start(args = []) {
    if (TOPOLOGY === 'cluster') {
      // Imported here: topology.mjs builds its nodes from this module.
      const { startCluster } = await import('./topology.mjs');
      const cluster = await startCluster({ masters: 3, serverArgs: args });
      const server = new RedisServer(cluster.nodes[0].port, args);
      server.cluster = cluster;
      return server;
    }
    const server = new RedisServer(await freePort(), args);
    await server.spawn();
    if (TOPOLOGY === 'sentinel') await server.startSentinel();
    return server;
  }

  /** A sentinel monitoring this server, and ready to name it. */
  async startSentinel() {
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'sdl-front-sentinel-'));
    const configFile = join(dir, 'sentinel.conf');
    const password = passwordIn(this.args);
    writeFileSync(
      configFile,
      [
        `port ${port}`,
        'bind 127.0.0.1',
        `dir ${dir}`,
        `sentinel monitor ${SENTINEL_MASTER} 127.0.0.1 ${this.port} 1`,
        ...(password === null ? [] : [`sentinel auth-pass ${SENTINEL_MASTER} ${password}`]),
        '',
      ].join('\n'),
    );
    const child = spawn(SERVER_BINARY, [configFile, '--sentinel'], { stdio: 'ignore' });
    this.sentinel = { port, child, dir };
    liveSentinels.add(child);
    await waitForPort(port, 10000);
    const ask = new Redis({ port, host: '127.0.0.1', lazyConnect: false, maxRetriesPerRequest: 1 });
    ask.on('error', () => {});
    try {
      for (let tries = 0; ; tries++) {
        const master = /** @type {string[] | null} */ (await ask.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', SENTINEL_MASTER).catch(() => null));
        if (master && Number(master[1]) === this.port) break;
        if (tries > 200) throw new Error(`sentinel ${port} does not name the master ${this.port}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    } finally {
      ask.disconnect();
    }
  }

  async spawn() {
    const child = spawn(
      SERVER_BINARY,
      ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...tlsArgs(this.port), ...this.args],
      { stdio: 'ignore' },
    );
    this.child = child;
    await Promise.race([
      waitForPort(this.port, 10000),
      new Promise((_, reject) => child.once('error', (err) => reject(new Error(`cannot start redis-server: ${err.message}`)))),
    ]);
  }

  /**
   * What a Lock, a Semaphore or rawClient() takes to reach this server: a URL, or over a cluster
   * the `{ cluster: [...] }` options a Lock takes.
   * @returns {any} typed loosely: a string, except over a cluster
   */
  get url() {
    if (this.cluster) return { cluster: this.cluster.nodes.map((node) => node.url) };
    if (this.sentinel) return `redis+sentinel://127.0.0.1:${this.sentinel.port}/${SENTINEL_MASTER}`;
    return `${TLS_DIR ? 'rediss' : 'redis'}://127.0.0.1:${this.port}`;
  }

  /** Stops the server (over a cluster, every node) at once (SIGKILL): its data is gone, like a crash. */
  async kill() {
    if (this.cluster) {
      await Promise.all(this.cluster.servers.map((node) => node.kill()));
      return;
    }
    const child = this.child;
    this.child = null;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  }

  async restart() {
    await this.kill();
    if (this.cluster) {
      // Each node finds its slots and peers again in its nodes.conf, then the cluster is ok.
      await Promise.all(this.cluster.servers.map((node) => node.spawn()));
      await this.cluster.ready(20000);
      return;
    }
    await this.spawn();
  }

  /**
   * `command` on every master (one here; behind Sentinel, the master; over a cluster, each
   * master): commands without a key, like SCRIPT FLUSH, INFO, DBSIZE, PUBSUB NUMSUB.
   * @param {string} command @param {...(string | number)} args
   * @returns {Promise<unknown[]>} one reply per master
   */
  async everyMaster(command, ...args) {
    const ports = this.cluster
      ? (await this.cluster.view()).nodes.filter((node) => node.flags.includes('master') && !node.flags.includes('fail')).map((node) => node.port)
      : [this.port];
    return Promise.all(ports.map((port) => this.directClient(port).call(command, ...args)));
  }

  /** Every key matching `pattern`, on every master, sorted. @param {string} pattern */
  async keys(pattern) {
    const replies = /** @type {string[][]} */ (await this.everyMaster('KEYS', pattern));
    return replies.flat().sort();
  }

  /** @param {number} port */
  directClient(port) {
    let client = this.direct.get(port);
    if (!client) {
      const password = passwordIn(this.args);
      client = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 1, ...(TLS_DIR ? { tls: {} } : {}), ...(password === null ? {} : { password }) });
      client.on('error', () => {});
      this.direct.set(port, client);
    }
    return client;
  }

  /**
   * A plain ioredis client for checking state behind the library's back (over a cluster, an
   * ioredis `Cluster`, typed as a `Redis`: the tests use commands both have).
   * @param {import('ioredis').RedisOptions} [options]
   * @returns {Redis}
   */
  client(options = {}) {
    if (this.cluster) {
      // A Cluster takes keyPrefix and lazyConnect itself, the rest for each node.
      const { keyPrefix, lazyConnect, ...redisOptions } = options;
      if (redisOptions.db) throw new RangeError('client(): a cluster has only database 0');
      const cluster = new Cluster(this.cluster.startupNodes, { keyPrefix, lazyConnect, redisOptions: { maxRetriesPerRequest: 1, ...redisOptions } });
      cluster.on('error', () => {});
      this.clients.push(/** @type {any} */ (cluster));
      return /** @type {any} */ (cluster);
    }
    const tls = TLS_DIR ? { tls: {} } : {};
    const where = this.sentinel ? { sentinels: [{ host: '127.0.0.1', port: this.sentinel.port }], name: SENTINEL_MASTER } : { port: this.port, host: '127.0.0.1' };
    const client = new Redis({ ...where, lazyConnect: false, maxRetriesPerRequest: 1, ...tls, ...options });
    client.on('error', () => {});
    this.clients.push(client);
    return client;
  }

  async stop() {
    for (const client of this.clients) client.disconnect();
    this.clients = [];
    for (const client of this.direct.values()) client.disconnect();
    this.direct.clear();
    if (this.cluster) {
      await this.cluster.stop();
      this.cluster = null;
      return;
    }
    await this.kill();
    if (this.sentinel) {
      this.sentinel.child.kill('SIGKILL');
      liveSentinels.delete(this.sentinel.child);
      rmSync(this.sentinel.dir, { recursive: true, force: true });
      this.sentinel = null;
    }
  }
}

/**
 * Multi-key commands sent one key at a time, as a cluster needs for keys in several slots (it
 * refuses them in one command with CROSSSLOT): `del` and `exists` count, `mget` lists values.
 */
export const eachKey = {
  /** @param {Redis} client @param {...string} keys */
  del: async (client, ...keys) => (await Promise.all(keys.map((key) => client.del(key)))).reduce((a, b) => a + b, 0),
  /** @param {Redis} client @param {...string} keys */
  exists: async (client, ...keys) => (await Promise.all(keys.map((key) => client.exists(key)))).reduce((a, b) => a + b, 0),
  /** @param {Redis} client @param {...string} keys */
  mget: (client, ...keys) => Promise.all(keys.map((key) => client.get(key))),
};

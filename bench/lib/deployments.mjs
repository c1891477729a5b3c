// @ts-check
// The redis-server deployments behind each transport, started by the bench on free ports (never
// 6379), each data server without persistence (--save "" --appendonly no), files in a temporary
// directory, every process pinned like the plain server (taskset) and stopped with the bench.
//
//   tcp       one plain server, and 3 independent masters when scenario 5 (Redlock) runs
//   tls       one server with TLS only: --port 0 --tls-port P, a CA and a leaf made with openssl
//   cluster   3 masters, no replicas: --cluster-enabled yes, slots by redis-cli --cluster create
//             (CLUSTER ADDSLOTS / MEET by hand where redis-cli is missing)
//   sentinel  a master, a replica (--replicaof) and one sentinel (sentinel monitor ... 1)

import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { RedisServer, freePort, plainArgs, removeDir, tempDir } from './servers.mjs';

/**
 * @typedef {import('./transports.mjs').Target} Target
 * @typedef {object} Deployment
 * @property {string} transport
 * @property {Target} target what the clients are given
 * @property {number[]} redlockPorts tcp only: the 3 masters of scenario 5 (else empty)
 * @property {RedisServer[]} servers every process of the deployment (sentinel included)
 * @property {string} about how it was started, for results.md
 * @property {() => Promise<void>} stop
 */

const HOST = '127.0.0.1';
const MASTER_NAME = 'mymaster';
/** Long enough that a node or master busy on a shared CPU is never taken for dead mid-run. */
const NODE_TIMEOUT_MS = 15000;

/**
 * Starts the deployment of one transport.
 * @param {string} transport @param {{ cpu: number | null, redlock: boolean }} options redlock: also
 *   the 3 masters of scenario 5 (tcp)
 * @returns {Promise<Deployment>}
 */
export async function startDeployment(transport, { cpu, redlock }) {
  switch (transport) {
    case 'tcp':
      return startTcp(cpu, redlock);
    case 'tls':
      return startTls(cpu);
    case 'cluster':
      return startCluster(cpu);
    case 'sentinel':
      return startSentinel(cpu);
    default:
      throw new Error(`unknown transport "${transport}"`);
  }
}

/**
 * A Deployment's stop: every server, then its directory.
 * @param {RedisServer[]} servers @param {string | null} dir
 */
function stopper(servers, dir) {
  return async () => {
    await Promise.all(servers.map((s) => s.stop()));
    if (dir) removeDir(dir);
  };
}

/** @param {number | null} cpu @param {boolean} redlock @returns {Promise<Deployment>} */
async function startTcp(cpu, redlock) {
  const main = await RedisServer.start({ cpu });
  const masters = redlock ? await Promise.all([0, 1, 2].map(() => RedisServer.start({ cpu }))) : [];
  const servers = [main, ...masters];
  return {
    transport: 'tcp',
    target: { transport: 'tcp', ports: [main.port] },
    redlockPorts: masters.map((m) => m.port),
    servers,
    about: `one \`redis-server --port ${main.port} --save "" --appendonly no\` on 127.0.0.1${masters.length ? `; scenario 5's Redlock masters on ${masters.map((m) => m.port).join(', ')}` : ''}`,
    stop: stopper(servers, null),
  };
}

// ---------------------------------------------------------------------------------------------
// TLS

/**
 * A private CA and a leaf certificate for localhost / 127.0.0.1 signed by it (EC P-256). The
 * leaf is not a CA (basicConstraints=CA:FALSE, extendedKeyUsage=serverAuth): rustls refuses a
 * self-signed certificate used as both CA and leaf.
 * @param {string} dir
 * @returns {{ ca: string, cert: string, key: string }} paths
 */
export function makeCertificates(dir) {
  const path = (/** @type {string} */ name) => join(dir, name);
  const openssl = (/** @type {string[]} */ args) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(['req', '-x509', ...ec, '-days', '2', '-subj', '/CN=sdl-bench-ca', '-keyout', path('ca.key'), '-out', path('ca.crt'),
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  openssl(['req', ...ec, '-subj', '/CN=localhost', '-keyout', path('server.key'), '-out', path('server.csr')]);
  writeFileSync(
    path('leaf.ext'),
    ['basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature', 'extendedKeyUsage=serverAuth', 'subjectAltName=DNS:localhost,IP:127.0.0.1', ''].join('\n'),
  );
  openssl(['x509', '-req', '-in', path('server.csr'), '-CA', path('ca.crt'), '-CAkey', path('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', path('leaf.ext'), '-out', path('server.crt')]);
  return { ca: path('ca.crt'), cert: path('server.crt'), key: path('server.key') };
}

/**
 * What Node's TLS client negotiates with the server (protocol and cipher), for the report.
 * @param {number} port @param {string} caPath
 * @returns {Promise<string>}
 */
function negotiated(port, caPath) {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: HOST, port, ca: readFileSync(caPath) }, () => {
      const text = `${socket.getProtocol()} ${socket.getCipher().standardName}`;
      socket.end();
      resolve(text);
    });
    socket.once('error', reject);
  });
}

/** @param {number | null} cpu @returns {Promise<Deployment>} */
async function startTls(cpu) {
  const dir = tempDir('tls');
  const certs = makeCertificates(dir);
  const server = await RedisServer.start({
    cpu,
    args: (port) => [
      ...plainArgs(0), '--dir', dir, '--tls-port', String(port),
      '--tls-cert-file', certs.cert, '--tls-key-file', certs.key, '--tls-ca-cert-file', certs.ca, '--tls-auth-clients', 'no',
    ],
  });
  const cipher = await negotiated(server.port, certs.ca);
  return {
    transport: 'tls',
    target: { transport: 'tls', port: server.port, ca: certs.ca },
    redlockPorts: [],
    servers: [server],
    about:
      `one \`redis-server --port 0 --tls-port ${server.port} --tls-auth-clients no\` (TLS only), its certificate for localhost/127.0.0.1 signed by a private CA (EC P-256, made with openssl); ` +
      `both clients get \`tls: { ca }\` (v2: \`new Lock(new Redis({ host: '127.0.0.1', port, tls: { ca }, lazyConnect: true }))\`); Node's client negotiates ${cipher}`,
    stop: stopper([server], dir),
  };
}

// ---------------------------------------------------------------------------------------------
// Cluster

/**
 * Polls `check` (which throws while the condition does not hold) until it returns.
 * @template T @param {string} what @param {number} timeoutMs @param {() => Promise<T>} check
 * @returns {Promise<T>}
 */
async function waitFor(what, timeoutMs, check) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${err instanceof Error ? err.message : err}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** `key:value` lines of INFO / CLUSTER INFO. @param {unknown} reply */
function fields(reply) {
  return new Map(String(reply).split(/\r?\n/).map((line) => /** @type {[string, string]} */ (line.split(':', 2))).filter(([, v]) => v !== undefined));
}

/**
 * Runs `fn` with a plain admin client on each port, then disconnects them.
 * @template T @param {number[]} ports @param {(clients: Redis[]) => Promise<T>} fn
 */
async function withAdmins(ports, fn) {
  const clients = ports.map((port) => new Redis({ host: HOST, port, maxRetriesPerRequest: 1 }));
  try {
    return await fn(clients);
  } finally {
    clients.forEach((c) => c.disconnect());
  }
}

/** @returns {boolean} whether redis-cli is on PATH */
function haveRedisCli() {
  return spawnSync('redis-cli', ['--version'], { stdio: 'ignore' }).status === 0;
}

/**
 * The slots split in 3 and the nodes introduced to each other, by hand: what redis-cli
 * --cluster create does for masters without replicas.
 * @param {Redis[]} clients @param {Array<{ port: number, bus: number }>} nodes
 */
async function joinByHand(clients, nodes) {
  const SLOTS = 16384;
  await Promise.all(
    clients.map((client, i) => {
      const from = Math.floor((i * SLOTS) / clients.length);
      const to = Math.floor(((i + 1) * SLOTS) / clients.length);
      return client.call('CLUSTER', 'ADDSLOTS', ...Array.from({ length: to - from }, (_, k) => String(from + k)));
    }),
  );
  for (const node of nodes.slice(1)) await clients[0].call('CLUSTER', 'MEET', HOST, String(node.port), String(node.bus));
}

/** @param {number | null} cpu @returns {Promise<Deployment>} */
async function startCluster(cpu) {
  const dir = tempDir('cluster');
  /** @type {RedisServer[]} */
  const servers = [];
  /** @type {Array<{ port: number, bus: number }>} */
  const nodes = [];
  try {
    for (let i = 0; i < 3; i++) {
      // An explicit bus port: the default, port + 10000, may be taken or beyond 65535.
      const bus = await freePort();
      const server = await RedisServer.start({
        cpu,
        args: (port) => [
          ...plainArgs(port), '--dir', dir, '--cluster-enabled', 'yes', '--cluster-config-file', join(dir, `nodes-${port}.conf`),
          '--cluster-port', String(bus), '--cluster-node-timeout', String(NODE_TIMEOUT_MS),
        ],
      });
      servers.push(server);
      nodes.push({ port: server.port, bus });
    }
    const ports = nodes.map((n) => n.port);
    const cli = haveRedisCli();
    if (cli) {
      execFileSync('redis-cli', ['--cluster', 'create', ...ports.map((p) => `${HOST}:${p}`), '--cluster-replicas', '0', '--cluster-yes'], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 30000 });
    }
    await withAdmins(ports, async (clients) => {
      if (!cli) await joinByHand(clients, nodes);
      await waitFor('the cluster to be ready on every node', 30000, async () => {
        for (const [i, client] of clients.entries()) {
          const info = fields(await client.call('CLUSTER', 'INFO'));
          const state = ['cluster_state', 'cluster_slots_ok', 'cluster_known_nodes'].map((f) => info.get(f)).join(' ');
          if (state !== 'ok 16384 3') throw new Error(`node ${ports[i]}: state, slots ok, known nodes = ${state}`);
        }
      });
    });
    return {
      transport: 'cluster',
      target: { transport: 'cluster', ports },
      redlockPorts: [],
      servers,
      about:
        `3 masters, no replicas, on ports ${ports.join(', ')} (\`redis-server --cluster-enabled yes --cluster-node-timeout ${NODE_TIMEOUT_MS}\`, own bus ports), ` +
        `slots split by ${cli ? '`redis-cli --cluster create ... --cluster-replicas 0`' : 'CLUSTER ADDSLOTS and CLUSTER MEET (no redis-cli on PATH)'}; ` +
        `ioredis \`new Cluster(nodes)\` with the release script loaded on every master (EVALSHA), v2 \`new Lock(new Cluster(nodes, { lazyConnect: true }))\`. Redis CPU is summed over the masters`,
      stop: stopper(servers, dir),
    };
  } catch (err) {
    await stopper(servers, dir)();
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// Sentinel

/**
 * A sentinel's configuration file (it rewrites it, so one file per sentinel, in `dir`).
 * @param {string} dir @param {number} port @param {number} masterPort
 */
function sentinelConfig(dir, port, masterPort) {
  const file = join(dir, `sentinel-${port}.conf`);
  writeFileSync(
    file,
    [
      `port ${port}`,
      `bind ${HOST}`,
      'daemonize no',
      'loglevel warning',
      `dir ${dir}`,
      `sentinel monitor ${MASTER_NAME} ${HOST} ${masterPort} 1`,
      // Never a failover in a run: a master busy on a shared CPU is not down.
      `sentinel down-after-milliseconds ${MASTER_NAME} 60000`,
      `sentinel failover-timeout ${MASTER_NAME} 180000`,
      '',
    ].join('\n'),
  );
  return file;
}

/** @param {number | null} cpu @returns {Promise<Deployment>} */
async function startSentinel(cpu) {
  const dir = tempDir('sentinel');
  /** @type {RedisServer[]} */
  const servers = [];
  try {
    // No diskless-sync delay: the replica's first full sync starts at once (the default waits 5 s).
    const master = await RedisServer.start({ cpu, args: (port) => [...plainArgs(port), '--dir', dir, '--repl-diskless-sync-delay', '0'] });
    servers.push(master);
    const replica = await RedisServer.start({ cpu, args: (port) => [...plainArgs(port), '--dir', dir, '--replicaof', HOST, String(master.port)] });
    servers.push(replica);
    await withAdmins([replica.port], ([admin]) =>
      waitFor('the replica to sync', 15000, async () => {
        const link = fields(await admin.info('replication')).get('master_link_status');
        if (link !== 'up') throw new Error(`master_link_status:${link}`);
      }),
    );
    const sentinel = await RedisServer.start({ cpu, args: (port) => [sentinelConfig(dir, port, master.port), '--sentinel'] });
    servers.push(sentinel);
    await withAdmins([sentinel.port], ([admin]) =>
      waitFor('the sentinel to know the master and its replica', 15000, async () => {
        const flat = /** @type {string[]} */ (await admin.call('SENTINEL', 'MASTER', MASTER_NAME));
        const state = new Map(flat.flatMap((v, i) => (i % 2 ? [] : [[v, flat[i + 1]]])));
        if (state.get('flags') !== 'master' || state.get('num-slaves') !== '1') throw new Error(`flags ${state.get('flags')}, num-slaves ${state.get('num-slaves')}`);
      }),
    );
    return {
      transport: 'sentinel',
      target: { transport: 'sentinel', sentinels: [sentinel.port], name: MASTER_NAME, master: master.port, replica: replica.port },
      redlockPorts: [],
      servers,
      about:
        `a master (port ${master.port}), a replica (\`--replicaof\`, port ${replica.port}) and one sentinel (\`redis-server sentinel.conf --sentinel\`, port ${sentinel.port}, \`sentinel monitor ${MASTER_NAME} 127.0.0.1 ${master.port} 1\`); ` +
        `both clients are given \`{ sentinels: [{ host, port }], name: '${MASTER_NAME}' }\` (v2 through a lazy ioredis instance), ask the sentinel for the master and talk to it. Redis CPU is the master's`,
      stop: stopper(servers, dir),
    };
  } catch (err) {
    await stopper(servers, dir)();
    throw err;
  }
}

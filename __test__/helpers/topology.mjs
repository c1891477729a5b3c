// @ts-check
// Redis Cluster, Sentinel and independent-master topologies of real redis-server processes on free
// ports, for the tests of the Cluster, Sentinel and Redlock modes. Each topology lives in its own temp
// dir; stop() kills its processes (SIGKILL) and removes the dir, so call it from `after` or `finally`.
// If a test process dies without stopping a topology, an 'exit' hook kills what is left.

import { execFile, spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { Cluster, Redis } from 'ioredis';
import { RedisServer, SERVER_BINARY, freePort } from './redis-server.mjs';

const HOST = '127.0.0.1';
const SLOT_COUNT = 16384;
const POLL_MS = 50;

const execFileAsync = promisify(execFile);

/** Synchronous kills of the topologies still running, for the 'exit' hook. @type {Set<() => void>} */
const unstopped = new Set();
process.on('exit', () => {
  for (const killNow of unstopped) killNow();
});

/**
 * Polls `probe` until it resolves. A rejection means "not yet"; the last one explains a timeout.
 * @template T
 * @param {string} what what is awaited, for the timeout message
 * @param {number} timeoutMs
 * @param {() => Promise<T>} probe
 * @returns {Promise<T>}
 */
export async function waitFor(what, timeoutMs, probe) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await probe();
    } catch (err) {
      if (Date.now() >= deadline) {
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}: ${err instanceof Error ? err.message : err}`);
      }
    }
    await sleep(POLL_MS);
  }
}

/** @param {number} count */
async function distinctFreePorts(count) {
  // freePort() releases its port at once, so two calls may return the same one.
  /** @type {Set<number>} */
  const ports = new Set();
  while (ports.size < count) ports.add(await freePort());
  return [...ports];
}

/**
 * redis-server arguments of a node that may replicate or be replicated.
 * @param {string} dir @param {number} port
 */
function dataNodeArgs(dir, port) {
  return [
    // A replica stores the RDB it receives: keep it in the temp dir, one file per node.
    '--dir', dir,
    '--dbfilename', `dump-${port}.rdb`,
    // The default 5 s delay before a full sync would dominate every start and failover.
    '--repl-diskless-sync-delay', '0',
  ];
}

/** `key:value` lines of INFO and CLUSTER INFO. @param {unknown} reply */
function parseInfo(reply) {
  /** @type {Map<string, string>} */
  const fields = new Map();
  for (const line of String(reply).split('\r\n')) {
    const colon = line.indexOf(':');
    if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1));
  }
  return fields;
}

/**
 * One line of CLUSTER NODES: the view of the node that was asked.
 * @typedef {object} NodeEntry
 * @property {string} id
 * @property {number} port
 * @property {string[]} flags e.g. myself, master, slave, fail, fail?
 * @property {string | null} masterId for a replica
 * @property {Array<[number, number]>} slotRanges first and last slot, for a master
 */

/** @param {unknown} reply @returns {NodeEntry[]} */
function parseClusterNodes(reply) {
  return String(reply)
    .trim()
    .split('\n')
    .map((line) => {
      // <id> <ip:port@busport[,hostname]> <flags> <master> <ping-sent> <pong-recv> <epoch> <link> <slot>...
      const [id, address, flags, master, , , , , ...slots] = line.trim().split(' ');
      /** @type {Array<[number, number]>} */
      const slotRanges = slots
        .filter((slot) => !slot.startsWith('[')) // slots being migrated: none in these topologies
        .map((slot) => {
          const [first, last = first] = slot.split('-').map(Number);
          return [first, last];
        });
      return {
        id,
        port: Number(address.slice(address.indexOf(':') + 1, address.indexOf('@'))),
        flags: flags.split(','),
        masterId: master === '-' ? null : master,
        slotRanges,
      };
    });
}

/** @param {NodeEntry[]} view @param {number} slot */
function servingMaster(view, slot) {
  return view.find(
    (node) =>
      node.flags.includes('master') &&
      !node.flags.includes('fail') &&
      node.slotRanges.some(([first, last]) => first <= slot && slot <= last),
  );
}

/** A flat [field, value, ...] reply of SENTINEL MASTER / REPLICAS as a map. @param {unknown} reply */
function fieldMap(reply) {
  const list = /** @type {unknown[]} */ (reply);
  /** @type {Map<string, string>} */
  const fields = new Map();
  for (let i = 0; i + 1 < list.length; i += 2) fields.set(String(list[i]), String(list[i + 1]));
  return fields;
}

/** One client per port for the harness's own commands; never handed to tests. */
class AdminClients {
  constructor() {
    /** @type {Map<number, Redis>} */
    this.byPort = new Map();
  }

  /** @param {number} port @param {string} command @param {...(string | number)} args */
  call(port, command, ...args) {
    let client = this.byPort.get(port);
    if (!client) {
      client = new Redis({
        port,
        host: HOST,
        connectTimeout: 1000,
        commandTimeout: 2000, // a stalled node must not hold a poll past its deadline
        // Fail a command after one lost connection: polls retry it, and a killed node must not hang them.
        maxRetriesPerRequest: 0,
        retryStrategy: () => 100,
      });
      client.on('error', () => {});
      this.byPort.set(port, client);
    }
    return client.call(command, ...args);
  }

  disconnectAll() {
    for (const client of this.byPort.values()) client.disconnect();
    this.byPort.clear();
  }
}

/**
 * @typedef {object} ClusterNode
 * @property {number} port
 * @property {string} url
 * @property {string} id cluster node id
 * @property {'master' | 'replica'} role at start; failovers change the live roles
 * @property {number | null} masterPort for a replica, the port of its master at start
 */

/**
 * Starts a Redis Cluster: `masters` masters sharing the 16384 slots, each with `replicasPerMaster`
 * replicas, all in sync when this resolves. `nodes` lists the masters first; roles and the
 * replica-to-master assignment (`masterPort`) are read back from CLUSTER NODES.
 * Measured on 2 cores: 3 masters + 3 replicas ready in ~2.3 s (Redis keeps a new master out of
 * `cluster_state:ok` for its first 2 s); waitForFailover() after killMaster() takes ~2-3 s with
 * nodeTimeoutMs 1000.
 * `serverArgs` go to every node (e.g. `--enable-debug-command yes`).
 * @param {{ masters?: number, replicasPerMaster?: number, nodeTimeoutMs?: number, serverArgs?: string[] }} [options]
 */
export async function startCluster({ masters = 3, replicasPerMaster = 0, nodeTimeoutMs = 1000, serverArgs = [] } = {}) {
  if (masters < 3) throw new RangeError('redis-cli --cluster create needs at least 3 masters');
  if (serverArgs.includes('--requirepass')) throw new RangeError('startCluster: the harness does not pass a password to redis-cli or its admin clients');
  const cluster = new ClusterTopology(nodeTimeoutMs);
  try {
    await cluster.start(masters, replicasPerMaster, serverArgs);
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}

/** What startCluster() resolves with; exported for JSDoc types. */
export class ClusterTopology {
  /** @param {number} nodeTimeoutMs */
  constructor(nodeTimeoutMs) {
    this.nodeTimeoutMs = nodeTimeoutMs;
    /** @type {string | null} */
    this.dir = null;
    /** @type {RedisServer[]} */
    this.servers = [];
    /** @type {ClusterNode[]} */
    this.nodes = [];
    /** @type {Array<{ host: string, port: number }>} */
    this.startupNodes = [];
    /** @type {Cluster[]} */
    this.clients = [];
    this.admin = new AdminClients();
    /** Slots of each killed master, to recognise their new owner. @type {Map<number, Array<[number, number]>>} */
    this.killedMasterSlots = new Map();
    this.killNow = () => {
      for (const server of this.servers) server.child?.kill('SIGKILL');
      if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    };
    unstopped.add(this.killNow);
  }

  /** @param {number} masters @param {number} replicasPerMaster @param {string[]} serverArgs */
  async start(masters, replicasPerMaster, serverArgs) {
    const dir = await mkdtemp(join(tmpdir(), 'sdl-cluster-'));
    this.dir = dir;
    const nodeCount = masters * (1 + replicasPerMaster);
    // An explicit bus port per node: the default, port + 10000, may be taken or beyond 65535.
    const ports = await distinctFreePorts(2 * nodeCount);
    for (let i = 0; i < nodeCount; i++) {
      const [port, busPort] = [ports[2 * i], ports[2 * i + 1]];
      this.servers.push(
        new RedisServer(port, [
          '--cluster-enabled', 'yes',
          '--cluster-config-file', join(dir, `nodes-${port}.conf`),
          '--cluster-port', String(busPort),
          '--cluster-node-timeout', String(this.nodeTimeoutMs),
          ...dataNodeArgs(dir, port),
          ...serverArgs,
        ]),
      );
    }
    await Promise.all(this.servers.map((server) => server.spawn()));

    // redis-cli makes masters of the first `masters` addresses and spreads the others as replicas.
    const addresses = this.servers.map((server) => `${HOST}:${server.port}`);
    try {
      await execFileAsync(
        'redis-cli',
        ['--cluster', 'create', ...addresses, '--cluster-replicas', String(replicasPerMaster), '--cluster-yes'],
        { timeout: 30000 },
      );
    } catch (err) {
      const { stdout = '', stderr = '' } = /** @type {{ stdout?: string, stderr?: string }} */ (err);
      throw new Error(`redis-cli --cluster create failed: ${err instanceof Error ? err.message : err}\n${stdout}${stderr}`);
    }

    const view = await this.ready(20000);

    this.nodes = this.servers.map((server) => {
      const entry = view.find((node) => node.port === server.port);
      if (!entry) throw new Error(`node ${server.port} is missing from CLUSTER NODES`);
      const master = entry.masterId ? view.find((node) => node.id === entry.masterId) : undefined;
      return {
        port: server.port,
        url: server.url,
        id: entry.id,
        role: entry.flags.includes('master') ? 'master' : 'replica',
        masterPort: master ? master.port : null,
      };
    });
    this.nodes.sort((a, b) => Number(a.role === 'replica') - Number(b.role === 'replica'));
    this.startupNodes = this.servers.map((server) => ({ host: HOST, port: server.port }));
  }

  /**
   * Resolves with the CLUSTER NODES view once every node reports `cluster_state:ok`, all slots
   * served, every node known, and every replica in sync.
   * @param {number} timeoutMs
   */
  async ready(timeoutMs) {
    const nodeCount = this.servers.length;
    return waitFor('every cluster node to be ready', timeoutMs, async () => {
      for (const server of this.servers) {
        const info = parseInfo(await this.admin.call(server.port, 'CLUSTER', 'INFO'));
        const [state, slotsOk, known] = ['cluster_state', 'cluster_slots_ok', 'cluster_known_nodes'].map((f) => info.get(f));
        if (state !== 'ok' || slotsOk !== String(SLOT_COUNT) || known !== String(nodeCount)) {
          throw new Error(`node ${server.port}: cluster_state:${state} cluster_slots_ok:${slotsOk} cluster_known_nodes:${known}`);
        }
      }
      const view = parseClusterNodes(await this.admin.call(this.servers[0].port, 'CLUSTER', 'NODES'));
      // A replica that never synced refuses to fail over (its data counts as infinitely old).
      for (const node of view.filter((entry) => entry.flags.includes('slave'))) {
        const replication = parseInfo(await this.admin.call(node.port, 'INFO', 'replication'));
        if (replication.get('master_link_status') !== 'up') throw new Error(`replica ${node.port} is not in sync`);
      }
      return view;
    });
  }

  /**
   * An ioredis Cluster client on the startup nodes, disconnected by stop().
   * @param {import('ioredis').ClusterOptions} [options]
   */
  ioredisCluster(options = {}) {
    const client = new Cluster(this.startupNodes, options);
    client.on('error', () => {}); // connection errors are expected while nodes are killed
    this.clients.push(client);
    return client;
  }

  /** The CLUSTER NODES view of the first node still running. */
  async view() {
    const live = this.servers.find((server) => server.child !== null);
    if (!live) throw new Error('no cluster node is running');
    return { port: live.port, nodes: parseClusterNodes(await this.admin.call(live.port, 'CLUSTER', 'NODES')) };
  }

  /** Port of the master serving `slot`, as seen by a running node. @param {number} slot */
  async masterForSlot(slot) {
    const view = await this.view();
    const master = servingMaster(view.nodes, slot);
    if (!master) throw new Error(`no master serves slot ${slot} according to node ${view.port}`);
    return master.port;
  }

  /** Port of the master serving `key` (hash tags included), as seen by a running node. @param {string} key */
  async masterForKey(key) {
    const { port } = await this.view();
    return this.masterForSlot(Number(await this.admin.call(port, 'CLUSTER', 'KEYSLOT', key)));
  }

  /** Kills a master with SIGKILL, like a crash. @param {number} port */
  async killMaster(port) {
    const server = this.servers.find((candidate) => candidate.port === port && candidate.child !== null);
    if (!server) throw new Error(`no running cluster node on port ${port}`);
    const self = parseClusterNodes(await this.admin.call(port, 'CLUSTER', 'NODES')).find((node) => node.flags.includes('myself'));
    if (!self?.flags.includes('master') || self.slotRanges.length === 0) throw new Error(`node ${port} is not a master serving slots`);
    this.killedMasterSlots.set(port, self.slotRanges);
    await server.kill();
  }

  /**
   * Resolves with the port of the node that took over all slots of a master killed by killMaster(),
   * once every running node agrees on it and reports `cluster_state:ok`.
   * @param {number} oldMasterPort @param {number} [timeoutMs]
   */
  async waitForFailover(oldMasterPort, timeoutMs = 10000) {
    const slotRanges = this.killedMasterSlots.get(oldMasterPort);
    if (!slotRanges) throw new Error(`no master on port ${oldMasterPort} was killed by killMaster()`);
    // A failover moves the slots of a master as a whole: the ends of its ranges tell the new owner.
    const probeSlots = slotRanges.flat();
    return waitFor(`a replica to take over the slots of ${oldMasterPort}`, timeoutMs, async () => {
      /** @type {Set<number>} */
      const owners = new Set();
      for (const server of this.servers.filter((candidate) => candidate.child !== null)) {
        const state = parseInfo(await this.admin.call(server.port, 'CLUSTER', 'INFO')).get('cluster_state');
        if (state !== 'ok') throw new Error(`node ${server.port}: cluster_state:${state}`);
        const view = parseClusterNodes(await this.admin.call(server.port, 'CLUSTER', 'NODES'));
        for (const slot of probeSlots) owners.add(servingMaster(view, slot)?.port ?? oldMasterPort);
      }
      const [owner] = owners;
      if (owners.size !== 1 || owner === oldMasterPort) throw new Error(`owners of its slots: ${[...owners].join(', ')}`);
      return owner;
    });
  }

  async stop() {
    for (const client of this.clients) client.disconnect();
    this.clients = [];
    this.admin.disconnectAll();
    await Promise.all(this.servers.map((server) => server.stop()));
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
    unstopped.delete(this.killNow);
  }
}

/**
 * Starts a master, `replicas` replicas in sync with it and `sentinels` sentinels (quorum: a majority)
 * that know the master, the replicas and each other when this resolves, so a failover can start at once.
 * Measured on 2 cores: 1 sentinel + 1 replica ready in ~0.3 s; 3 sentinels in ~2.2 s, as they find
 * each other through hello messages sent every 2 s; a forced failover() takes ~1.2 s.
 * @param {{ sentinels?: number, replicas?: number, masterName?: string, downAfterMs?: number, failoverTimeoutMs?: number }} [options]
 */
export async function startSentinelGroup({
  sentinels = 1,
  replicas = 1,
  masterName = 'mymaster',
  downAfterMs = 1000,
  failoverTimeoutMs = 3000,
} = {}) {
  if (replicas < 1) throw new RangeError('a failover needs at least one replica');
  const group = new SentinelGroup(masterName);
  try {
    await group.start(sentinels, replicas, downAfterMs, failoverTimeoutMs);
  } catch (err) {
    await group.stop();
    throw err;
  }
  return group;
}

/** What startSentinelGroup() resolves with; exported for JSDoc types. */
export class SentinelGroup {
  /** @param {string} masterName */
  constructor(masterName) {
    this.masterName = masterName;
    /** @type {string | null} */
    this.dir = null;
    /** Port started as master; after a failover ask currentMaster(). */
    this.master = 0;
    /** @type {number[]} ports started as replicas */
    this.replicas = [];
    /** @type {Array<{ host: string, port: number }>} */
    this.sentinels = [];
    /** @type {RedisServer[]} master first, then the replicas */
    this.servers = [];
    /** @type {import('node:child_process').ChildProcess[]} */
    this.sentinelProcesses = [];
    /** @type {Redis[]} */
    this.clients = [];
    this.admin = new AdminClients();
    this.killNow = () => {
      for (const server of this.servers) server.child?.kill('SIGKILL');
      for (const child of this.sentinelProcesses) child.kill('SIGKILL');
      if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    };
    unstopped.add(this.killNow);
  }

  /** @param {number} sentinels @param {number} replicas @param {number} downAfterMs @param {number} failoverTimeoutMs */
  async start(sentinels, replicas, downAfterMs, failoverTimeoutMs) {
    const dir = await mkdtemp(join(tmpdir(), 'sdl-sentinel-'));
    this.dir = dir;
    const [masterPort, ...otherPorts] = await distinctFreePorts(1 + replicas + sentinels);
    this.master = masterPort;
    this.replicas = otherPorts.slice(0, replicas);
    this.sentinels = otherPorts.slice(replicas).map((port) => ({ host: HOST, port }));

    this.servers = [
      new RedisServer(masterPort, dataNodeArgs(dir, masterPort)),
      ...this.replicas.map(
        (port) => new RedisServer(port, [...dataNodeArgs(dir, port), '--replicaof', HOST, String(masterPort)]),
      ),
    ];
    await Promise.all(this.servers.map((server) => server.spawn()));
    // Started before the sentinels, the replicas are in the master's first INFO reply to them.
    await waitFor('the replicas to sync', 10000, async () => {
      for (const port of this.replicas) {
        const replication = parseInfo(await this.admin.call(port, 'INFO', 'replication'));
        if (replication.get('master_link_status') !== 'up') throw new Error(`replica ${port} is not in sync`);
      }
    });

    const quorum = Math.floor(sentinels / 2) + 1;
    for (const { port } of this.sentinels) {
      // Sentinels rewrite their config file, and Redis takes it only as the first argument:
      // hence a file per sentinel and no RedisServer.
      const configFile = join(dir, `sentinel-${port}.conf`);
      await writeFile(
        configFile,
        [
          `port ${port}`,
          `bind ${HOST}`,
          `dir ${dir}`,
          `sentinel monitor ${this.masterName} ${HOST} ${masterPort} ${quorum}`,
          `sentinel down-after-milliseconds ${this.masterName} ${downAfterMs}`,
          `sentinel failover-timeout ${this.masterName} ${failoverTimeoutMs}`,
          '',
        ].join('\n'),
      );
      const child = spawn(SERVER_BINARY, [configFile, '--sentinel'], { stdio: 'ignore' });
      child.on('error', () => {}); // a sentinel that did not start fails the wait below, with its port
      this.sentinelProcesses.push(child);
    }

    await waitFor('the sentinels to know the master, its replicas and each other', 15000, async () => {
      for (const { port } of this.sentinels) {
        const master = fieldMap(await this.admin.call(port, 'SENTINEL', 'MASTER', this.masterName));
        const [flags, replicaCount, otherSentinels] = ['flags', 'num-slaves', 'num-other-sentinels'].map((f) => master.get(f));
        if (flags !== 'master' || replicaCount !== String(replicas) || otherSentinels !== String(sentinels - 1)) {
          throw new Error(`sentinel ${port}: flags ${flags}, num-slaves ${replicaCount}, num-other-sentinels ${otherSentinels}`);
        }
        // The link status comes from the replica's own INFO: once 'ok', the sentinel may promote it.
        const replicaEntries = /** @type {unknown[]} */ (await this.admin.call(port, 'SENTINEL', 'REPLICAS', this.masterName));
        for (const replica of replicaEntries.map(fieldMap)) {
          if (replica.get('flags') !== 'slave' || replica.get('master-link-status') !== 'ok') {
            throw new Error(`sentinel ${port}: replica ${replica.get('port')} flags ${replica.get('flags')}, link ${replica.get('master-link-status')}`);
          }
        }
      }
    });
  }

  /** @param {number} sentinelPort */
  async masterReportedBy(sentinelPort) {
    const [, port] = /** @type {[string, string]} */ (
      await this.admin.call(sentinelPort, 'SENTINEL', 'GET-MASTER-ADDR-BY-NAME', this.masterName)
    );
    return Number(port);
  }

  /** Port of the master according to the first sentinel. */
  currentMaster() {
    return this.masterReportedBy(this.sentinels[0].port);
  }

  /**
   * Forces a failover (SENTINEL FAILOVER) and resolves with the new master's port once every sentinel
   * reports it and it answers ROLE as a master. The old master stays up, still a master, until the
   * sentinels turn it into a replica several seconds later; a second failover has to wait for that.
   * @param {number} [timeoutMs]
   */
  async failover(timeoutMs = 10000) {
    const oldMaster = await this.currentMaster();
    await this.admin.call(this.sentinels[0].port, 'SENTINEL', 'FAILOVER', this.masterName);
    return waitFor(`the sentinels to replace master ${oldMaster}`, timeoutMs, async () => {
      const reported = new Set(await Promise.all(this.sentinels.map(({ port }) => this.masterReportedBy(port))));
      const [newMaster] = reported;
      if (reported.size !== 1 || newMaster === oldMaster) throw new Error(`sentinels report masters ${[...reported].join(', ')}`);
      const [role] = /** @type {unknown[]} */ (await this.admin.call(newMaster, 'ROLE'));
      if (role !== 'master') throw new Error(`${newMaster} answers ROLE ${role}`);
      return newMaster;
    });
  }

  /**
   * An ioredis client that finds the master through the sentinels, disconnected by stop().
   * `failoverDetector` is on by default: after a forced failover the old master is still up,
   * and without it ioredis would keep writing there.
   * @param {import('ioredis').RedisOptions} [options]
   */
  ioredisSentinel(options = {}) {
    const client = new Redis({ sentinels: this.sentinels, name: this.masterName, failoverDetector: true, ...options });
    client.on('error', () => {}); // connection errors are expected during failovers
    this.clients.push(client);
    return client;
  }

  async stop() {
    for (const client of this.clients) client.disconnect();
    this.clients = [];
    this.admin.disconnectAll();
    await Promise.all([
      ...this.servers.map((server) => server.stop()),
      ...this.sentinelProcesses.map(async (child) => {
        if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGKILL');
        await exited;
      }),
    ]);
    this.sentinelProcesses = [];
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
    unstopped.delete(this.killNow);
  }
}

/**
 * Independent masters for Redlock: plain RedisServer instances on distinct free ports.
 * Stop them with stopAll(); each starts in ~10 ms.
 * @param {number} count
 * @param {string[]} [args] extra redis-server arguments for every master
 */
export async function startIndependentMasters(count, args = []) {
  const servers = (await distinctFreePorts(count)).map((port) => new RedisServer(port, args));
  try {
    await Promise.all(servers.map((server) => server.spawn()));
  } catch (err) {
    await stopAll(servers);
    throw err;
  }
  return servers;
}

/** @param {RedisServer[]} servers */
export async function stopAll(servers) {
  await Promise.all(servers.map((server) => server.stop()));
}

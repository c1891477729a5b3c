// @ts-check
// The transport axis (issue #11): how the clients reach Redis. A Target is plain JSON (it goes to
// the child processes in their job) and says where the bench's servers are; the functions here
// build, from a Target, the ioredis client a user would build, and the bench's own admin clients.
//
//   tcp       one redis-server over plain TCP (or, with several ports, Redlock's masters)
//   tls       one redis-server with TLS only (--port 0 --tls-port), a private CA made by the bench
//   cluster   a Redis Cluster of 3 masters, no replicas
//   sentinel  one master, one replica, one sentinel watching them as "mymaster"

import { readFileSync } from 'node:fs';
import { Cluster, Redis } from 'ioredis';

/**
 * @typedef {{ transport: 'tcp', ports: number[] }} TcpTarget ports: one server, or Redlock's masters
 * @typedef {{ transport: 'tls', port: number, ca: string }} TlsTarget ca: the CA certificate's path
 * @typedef {{ transport: 'cluster', ports: number[] }} ClusterTarget ports: the masters
 * @typedef {{ transport: 'sentinel', sentinels: number[], name: string, master: number, replica: number }} SentinelTarget
 * @typedef {TcpTarget | TlsTarget | ClusterTarget | SentinelTarget} Target
 * @typedef {Redis | Cluster} Client
 */

/** The transports, in run and report order. */
export const TRANSPORTS = /** @type {const} */ (['tcp', 'tls', 'cluster', 'sentinel']);

/** @type {Record<string, string>} */
export const TRANSPORT_LABELS = {
  tcp: 'plain TCP',
  tls: 'TLS',
  cluster: 'Cluster (3 masters)',
  sentinel: 'Sentinel (1 master, 1 replica, 1 sentinel)',
};

const HOST = '127.0.0.1';

/** The CA certificate (PEM) of a TLS target, read once per process. @type {Map<string, Buffer>} */
const cas = new Map();
/** @param {TlsTarget} target */
function tlsOptions(target) {
  let ca = cas.get(target.ca);
  if (!ca) cas.set(target.ca, (ca = readFileSync(target.ca)));
  return { ca };
}

/** @param {number} port @param {boolean} lazy @param {Record<string, unknown>} [extra] */
function redisAt(port, lazy, extra = {}) {
  return new Redis({ host: HOST, port, lazyConnect: lazy, maxRetriesPerRequest: 3, ...extra });
}

/**
 * The ioredis client a user of this deployment would build: `Redis` on one server (with
 * `tls: { ca }` over TLS, with `sentinels` and `name` for Sentinel), `Cluster` on the masters.
 * `lazy`: do not connect (v2 only reads the client's options).
 * @param {Target} target @param {{ lazy?: boolean }} [options]
 * @returns {Client}
 */
export function userClient(target, { lazy = false } = {}) {
  switch (target.transport) {
    case 'tcp':
      if (target.ports.length !== 1) throw new Error(`userClient: ${target.ports.length} Redlock masters are not one client`);
      return redisAt(target.ports[0], lazy);
    case 'tls':
      return redisAt(target.port, lazy, { tls: tlsOptions(target) });
    case 'cluster':
      return new Cluster(nodes(target.ports), { lazyConnect: lazy, redisOptions: { maxRetriesPerRequest: 3 } });
    case 'sentinel':
      return new Redis({ sentinels: nodes(target.sentinels), name: target.name, lazyConnect: lazy, maxRetriesPerRequest: 3 });
  }
}

/** @param {number[]} ports */
function nodes(ports) {
  return ports.map((port) => ({ host: HOST, port }));
}

/**
 * The bench's admin clients, one per data server the calls go to (INFO cpu, FLUSHALL): every
 * Redlock master or Cluster master; over Sentinel, the master only (the replica's replication
 * work is not in "Redis CPU").
 * @param {Target} target
 * @returns {Redis[]}
 */
export function serverClients(target) {
  switch (target.transport) {
    case 'tcp':
    case 'cluster':
      return target.ports.map((port) => redisAt(port, false));
    case 'tls':
      return [redisAt(target.port, false, { tls: tlsOptions(target) })];
    case 'sentinel':
      return [redisAt(target.master, false)];
  }
}

/**
 * Where the bench checks lock keys and keeps its own (the exclusion counter): one client per
 * Redlock master, else one client that reaches every key (a `Cluster` on a cluster).
 * @param {Target} target
 * @returns {Client[]}
 */
export function keyClients(target) {
  switch (target.transport) {
    case 'tcp':
      return target.ports.map((port) => redisAt(port, false));
    case 'tls':
      return [redisAt(target.port, false, { tls: tlsOptions(target) })];
    case 'cluster':
      return [userClient(target)];
    case 'sentinel':
      return [redisAt(target.master, false)];
  }
}

/**
 * A plain client to the one server that holds `key` (for the round trip of the contention
 * floor): on a cluster, the master of the key's slot.
 * @param {Target} target @param {string} key
 * @returns {Promise<Redis>}
 */
export async function clientForKey(target, key) {
  if (target.transport !== 'cluster') return serverClients(target)[0];
  const probe = redisAt(target.ports[0], false);
  try {
    const slot = Number(await probe.call('CLUSTER', 'KEYSLOT', key));
    const ranges = /** @type {Array<[number, number, [string, number, ...unknown[]], ...unknown[]]>} */ (await probe.call('CLUSTER', 'SLOTS'));
    const range = ranges.find(([from, to]) => from <= slot && slot <= to);
    if (!range) throw new Error(`no master serves slot ${slot} of ${key}`);
    return redisAt(Number(range[2][1]), false);
  } finally {
    probe.disconnect();
  }
}

/**
 * Loads a Lua script where `client` will run it by EVALSHA: on the server, or on every master of
 * a cluster (a key's slot decides which master runs it).
 * @param {Client} client @param {string} script
 * @returns {Promise<string>} its sha1
 */
export async function loadScript(client, script) {
  if (client instanceof Cluster) {
    await client.ping(); // queued until the slot map is read: then every master is known
    const shas = await Promise.all(client.nodes('master').map((node) => node.script('LOAD', script)));
    return /** @type {string} */ (shas[0]);
  }
  return /** @type {string} */ (await client.script('LOAD', script));
}

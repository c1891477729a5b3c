// @ts-check
// An ioredis client for what a test hands to a Lock as `server.url` (see redis-server.mjs):
// `redis://`, `rediss://`, `redis+sentinel://host:port/name` (SDL_TEST_TOPOLOGY=sentinel; ioredis
// does not parse it itself), or `{ cluster: [node URLs] }` (SDL_TEST_TOPOLOGY=cluster; an ioredis
// `Cluster`, typed as a `Redis`: the fixtures use commands both have).

import { Cluster, Redis } from 'ioredis';

/**
 * @param {string | { cluster: string[] }} url
 * @param {{ keyPrefix?: string }} [options]
 * @returns {Redis}
 */
export function rawClient(url, options = {}) {
  if (typeof url === 'object') {
    const nodes = url.cluster.map((node) => new URL(node)).map((node) => ({ host: node.hostname, port: Number(node.port) }));
    return /** @type {any} */ (new Cluster(nodes, { keyPrefix: options.keyPrefix }));
  }
  const parsed = new URL(url);
  if (parsed.protocol !== 'redis+sentinel:') return new Redis(url, options);
  return new Redis({ sentinels: [{ host: parsed.hostname, port: Number(parsed.port) }], name: decodeURIComponent(parsed.pathname.slice(1)), ...options });
}

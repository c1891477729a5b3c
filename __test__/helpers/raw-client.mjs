// @ts-check
// An ioredis client for a URL a test hands to a Lock: `redis://`, `rediss://`, or (with
// SDL_TEST_TOPOLOGY=sentinel, see redis-server.mjs) `redis+sentinel://host:port/name`, which
// ioredis does not parse itself.

import { Redis } from 'ioredis';

/** @param {string} url */
export function rawClient(url) {
  const parsed = new URL(url);
  if (parsed.protocol !== 'redis+sentinel:') return new Redis(url);
  return new Redis({ sentinels: [{ host: parsed.hostname, port: Number(parsed.port) }], name: decodeURIComponent(parsed.pathname.slice(1)) });
}

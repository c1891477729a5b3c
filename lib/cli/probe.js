// @ts-check
'use strict';
// A tiny Redis client for what the library cannot tell yet: a lock's remaining TTL, its
// holder's token and its fencing counter (for `status`, and for the line printed on a conflict).
// One server only, as `redis://`, `rediss://` or `unix://` URLs describe it (parsed by the
// library's own URL reader); Sentinel, Cluster and Redlock get held/free from the library alone.
// RESP2, one connection, one pipelined round trip, then closed. Nothing here echoes credentials.

const net = require('node:net');
const tls = require('node:tls');
const { fromUrl } = require('../connection');
const { fenceKey } = require('./keys');

/** @typedef {string | number | null | Error} Reply */
/** @typedef {{ ttlMs: number | null, token: string | null, fence: number | null }} Details */

/**
 * PTTL and holder of the lock on `resource`, and its slot's fencing counter (the holder's fence is
 * at most that); null if `url` is not one server.
 * @param {string} url @param {string} prefix @param {string} resource @param {number} [timeoutMs]
 * @returns {Promise<Details | null>}
 */
async function lockDetails(url, prefix, resource, timeoutMs = 1000) {
  if (/^rediss?\+sentinel:/.test(url)) return null;
  const key = prefix + resource;
  const [pttl, token, fence] = await query(fromUrl(url).settings, [['PTTL', key], ['GET', key], ['GET', fenceKey(key, prefix)]], timeoutMs);
  for (const reply of [pttl, token, fence]) if (reply instanceof Error) throw reply;
  const ttl = Number(pttl);
  return {
    ttlMs: ttl >= 0 ? ttl : null, // -1: no expiry; -2: no key
    token: typeof token === 'string' ? token : null,
    fence: fence === null || Number.isNaN(Number(fence)) ? null : Number(fence),
  };
}

/**
 * Sends AUTH and SELECT as the settings ask, then `commands`; resolves with the commands' replies.
 * @param {import('../native/native').ConnectionSettings} s @param {string[][]} commands @param {number} timeoutMs
 * @returns {Promise<Reply[]>}
 */
function query(s, commands, timeoutMs) {
  /** @type {string[][]} */
  const setup = [];
  if (s.password) setup.push(s.username ? ['AUTH', s.username, s.password] : ['AUTH', s.password]);
  if (s.db) setup.push(['SELECT', String(s.db)]);
  const all = [...setup, ...commands];
  const host = s.host ?? '127.0.0.1';
  const port = s.port ?? 6379;
  return new Promise((resolve, reject) => {
    const socket = s.path
      ? net.connect({ path: s.path })
      : s.tls
        ? tls.connect({ host, port, servername: net.isIP(host) ? undefined : host, ca: s.tls.ca, cert: s.tls.cert, key: s.tls.key, rejectUnauthorized: s.tls.rejectUnauthorized !== false })
        : net.connect({ host, port });
    const where = s.path ?? `${host}:${port}`;
    /** @param {Error | null} err @param {Reply[]} [replies] */
    const finish = (err, replies) => {
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(/** @type {Reply[]} */ (replies).slice(setup.length));
    };
    const timer = setTimeout(() => finish(new Error(`Redis at ${where} did not answer within ${timeoutMs} ms`)), timeoutMs);
    socket.once(s.tls && !s.path ? 'secureConnect' : 'connect', () => socket.end(all.map(encode).join('')));
    socket.on('error', (err) => finish(new Error(`Cannot query Redis at ${where}: ${/** @type {NodeJS.ErrnoException} */ (err).code ?? err.message}`)));
    /** @type {Reply[]} */
    const replies = [];
    let buffer = Buffer.alloc(0);
    socket.on('close', () => finish(new Error(`Redis at ${where} closed the connection before answering`)));
    socket.on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      try {
        for (let parsed = parse(buffer); parsed; parsed = parse(buffer)) {
          replies.push(parsed.value);
          buffer = buffer.subarray(parsed.end);
        }
      } catch (err) {
        return finish(/** @type {Error} */ (err));
      }
      const refused = replies.slice(0, setup.length).find((r) => r instanceof Error);
      if (refused) finish(new Error(`Redis at ${where} refused the setup: ${String(refused.message).split(' ')[0]}`));
      else if (replies.length >= all.length) finish(null, replies);
    });
  });
}

/** A command as a RESP array of bulk strings. @param {string[]} args */
function encode(args) {
  return `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;
}

/**
 * One reply from the front of `buffer`, or null if it is not complete yet. Simple strings,
 * errors, integers and bulk strings: what PTTL, GET, AUTH and SELECT answer.
 * @param {Buffer} buffer
 * @returns {{ value: Reply, end: number } | null}
 */
function parse(buffer) {
  const eol = buffer.indexOf('\r\n');
  if (eol < 0) return null;
  const line = buffer.toString('utf8', 1, eol);
  switch (String.fromCharCode(buffer[0])) {
    case '+': return { value: line, end: eol + 2 };
    case '-': return { value: new Error(line), end: eol + 2 };
    case ':': return { value: Number(line), end: eol + 2 };
    case '$': {
      const length = Number(line);
      if (length < 0) return { value: null, end: eol + 2 };
      if (buffer.length < eol + 2 + length + 2) return null;
      return { value: buffer.toString('utf8', eol + 2, eol + 2 + length), end: eol + 2 + length + 2 };
    }
    default: throw new Error('unexpected reply from Redis');
  }
}

module.exports = { lockDetails };

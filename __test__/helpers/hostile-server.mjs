// @ts-check
// A TCP server that looks like Redis (just enough RESP for the library's commands) and can be
// switched to hostile replies, or to forwarding to a real redis-server.
//
//   const server = await HostileServer.start();
//   const lock = new Lock(server.url);
//   server.hostile('bulk-len-max');     // every data command from now on gets `$9223372036854775807\r\n`
//   server.proxyTo(redis.port);          // new connections go to the real Redis
//
// Modes:
//   friendly (the start): an in-memory Redis. The library's Lua scripts (by what their source
//     does: SET NX + INCR, compare-and-DEL, compare-and-PEXPIRE, the batched extend) run against
//     it; SCRIPT LOAD answers the script's SHA1 as Redis does; EVALSHA of an unknown SHA answers
//     NOSCRIPT; GET/SET/DEL/EXISTS/PEXPIRE/PTTL/INCR/PUBLISH/SUBSCRIBE/WAIT, AUTH/SELECT/CLIENT/
//     READONLY/PING/QUIT/INFO/ROLE answer plausibly; anything else is `-ERR unknown command`.
//   hostile(kind, { once }): the reply to the next data command — any command but the handshake
//     and bookkeeping ones (AUTH, HELLO, SELECT, CLIENT, PING, SCRIPT, INFO, ROLE, SUBSCRIBE, ...)
//     — is replaced by the hostile bytes of `kind` (see HOSTILE_KINDS); sticky unless `once`, so
//     a library that retries meets it again. After a reply that leaves the stream unparseable (a
//     length prefix with nothing behind it, garbage, ...) that connection answers nothing more;
//     'truncated-close' closes it. The commands are still executed against the in-memory store.
//   friendly(): back to friendly for every connection.
//   proxyTo(port): connections opened from now on are forwarded to a real Redis. Connections
//     opened before keep the mode they had, so a library recovers only if it drops a bad socket
//     and opens a new one.

import { createServer, connect } from 'node:net';
import { createHash } from 'node:crypto';

/**
 * The hostile replies.
 * - 'array-len-max'        `*9223372036854775807\r\n`, then silence
 * - 'array-len-2g'         `*2000000000\r\n`, then silence
 * - 'bulk-len-2g'          `$2000000000\r\n`, then silence
 * - 'bulk-len-max'         `$9223372036854775807\r\n`, then silence
 * - 'array-len-negative'   `*-5\r\n`
 * - 'bulk-len-negative'    `$-7\r\n`
 * - 'integer-minus'        `:-\r\n`
 * - 'integer-unicode'      `:−1\r\n` (U+2212 MINUS SIGN, 3 bytes of UTF-8)
 * - 'integer-overflow'     `:99999999999999999999999\r\n`
 * - 'deep-nesting'         200,000 × `*1\r\n`, then `:1\r\n` (a complete, 200,000-deep reply)
 * - 'bad-type'             `?hello\r\n`
 * - 'nul-byte'             `\0\r\n`
 * - 'truncated-close'      `$10\r\nabc`, then the server closes the connection (FIN)
 * - 'unsolicited-on-connect' `+OK\r\n` on each new connection before anything was asked; then
 *                          friendly replies
 * - 'extra-reply'          the genuine reply, then an extra one nobody asked for, in the same
 *                          write (`:0` after a reply that is not `:0`, `:1` after `:0`); errors
 *                          get no extra
 * - 'slowloris'            the genuine reply, trickled one byte per second (and everything after
 *                          it on that connection, behind it)
 */
export const HOSTILE_KINDS = /** @type {const} */ ([
  'array-len-max',
  'array-len-2g',
  'bulk-len-2g',
  'bulk-len-max',
  'array-len-negative',
  'bulk-len-negative',
  'integer-minus',
  'integer-unicode',
  'integer-overflow',
  'deep-nesting',
  'bad-type',
  'nul-byte',
  'truncated-close',
  'unsolicited-on-connect',
  'extra-reply',
  'slowloris',
]);

/** @typedef {typeof HOSTILE_KINDS[number]} HostileKind */

/**
 * @typedef {{ kind: 'friendly' }
 *   | { kind: 'hostile', hostile: HostileKind, once: boolean }
 *   | { kind: 'proxy', port: number, host: string }} Mode
 */

/** Replies that leave nothing parseable behind them: the connection answers nothing more. */
const POISON = /** @type {Record<string, Buffer>} */ ({
  'array-len-max': Buffer.from('*9223372036854775807\r\n'),
  'array-len-2g': Buffer.from('*2000000000\r\n'),
  'bulk-len-2g': Buffer.from('$2000000000\r\n'),
  'bulk-len-max': Buffer.from('$9223372036854775807\r\n'),
  'array-len-negative': Buffer.from('*-5\r\n'),
  'bulk-len-negative': Buffer.from('$-7\r\n'),
  'integer-minus': Buffer.from(':-\r\n'),
  'integer-unicode': Buffer.from(':\u22121\r\n', 'utf8'),
  'integer-overflow': Buffer.from(':99999999999999999999999\r\n'),
  'deep-nesting': Buffer.concat([Buffer.from('*1\r\n'.repeat(200000)), Buffer.from(':1\r\n')]),
  'bad-type': Buffer.from('?hello\r\n'),
  'nul-byte': Buffer.from('\0\r\n'),
  'truncated-close': Buffer.from('$10\r\nabc'),
});

/** Commands that are never given a hostile reply: connection set-up and bookkeeping. */
const HANDSHAKE = new Set([
  'AUTH', 'HELLO', 'SELECT', 'CLIENT', 'PING', 'ECHO', 'QUIT', 'READONLY', 'READWRITE', 'SCRIPT',
  'INFO', 'ROLE', 'COMMAND', 'SUBSCRIBE', 'UNSUBSCRIBE', 'PSUBSCRIBE', 'PUNSUBSCRIBE', 'SSUBSCRIBE',
]);

// RESP encoders
/** @param {string} s */
const simple = (s) => Buffer.from(`+${s}\r\n`);
/** @param {string} s */
const error = (s) => Buffer.from(`-${s}\r\n`);
/** @param {number} n */
const integer = (n) => Buffer.from(`:${n}\r\n`);
/** @param {string | null} s */
const bulk = (s) => (s === null ? Buffer.from('$-1\r\n') : Buffer.concat([Buffer.from(`$${Buffer.byteLength(s)}\r\n`), Buffer.from(s), Buffer.from('\r\n')]));
/** @param {Buffer[]} items */
const array = (items) => Buffer.concat([Buffer.from(`*${items.length}\r\n`), ...items]);

/**
 * Parses complete RESP command arrays (and inline commands) off the front of `buffer`.
 * @param {Buffer} buffer
 * @returns {{ commands: string[][], rest: Buffer }}
 */
export function parseCommands(buffer) {
  /** @type {string[][]} */
  const commands = [];
  let at = 0;
  for (;;) {
    if (at >= buffer.length) break;
    const lineEnd = buffer.indexOf('\r\n', at);
    if (lineEnd < 0) break;
    if (buffer[at] !== 0x2a /* '*' */) {
      const words = buffer.toString('utf8', at, lineEnd).trim().split(/\s+/).filter(Boolean);
      if (words.length > 0) commands.push(words);
      at = lineEnd + 2;
      continue;
    }
    const count = Number(buffer.toString('latin1', at + 1, lineEnd));
    let p = lineEnd + 2;
    /** @type {string[]} */
    const args = [];
    let complete = true;
    for (let i = 0; i < count; i++) {
      const end = buffer.indexOf('\r\n', p);
      if (end < 0 || buffer[p] !== 0x24 /* '$' */) {
        complete = false;
        break;
      }
      const length = Number(buffer.toString('latin1', p + 1, end));
      if (end + 2 + length + 2 > buffer.length) {
        complete = false;
        break;
      }
      args.push(buffer.toString('utf8', end + 2, end + 2 + length));
      p = end + 2 + length + 2;
    }
    if (!complete) break;
    commands.push(args);
    at = p;
  }
  return { commands, rest: buffer.subarray(at) };
}

/** @param {string} source */
function sha1(source) {
  return createHash('sha1').update(source).digest('hex');
}

/** @param {string} source @returns {'acquire' | 'release' | 'extend' | 'extend-many' | 'unknown'} */
function scriptKind(source) {
  if (/"set"/.test(source) && /incr/.test(source)) return 'acquire';
  if (/"del"/.test(source)) return 'release';
  if (/#KEYS/.test(source) && /pexpire/.test(source)) return 'extend-many';
  if (/pexpire/.test(source)) return 'extend';
  return 'unknown';
}

/** One client connection. */
class Connection {
  /** @param {number} id @param {import('node:net').Socket} socket */
  constructor(id, socket) {
    this.id = id;
    this.socket = socket;
    /** bytes received and not yet parsed into commands @type {Buffer} */
    this.input = Buffer.alloc(0);
    /** answers nothing more (after a reply that poisons the stream) */
    this.muted = false;
    /** the mode it keeps after the server switched to proxying; null: follows the server */
    /** @type {Mode | null} */
    this.frozen = null;
    /** slowloris: bytes still to trickle, one a second @type {Buffer[]} */
    this.trickle = [];
    /** @type {NodeJS.Timeout | null} */
    this.trickleTimer = null;
    this.subscribed = 0;
  }

  /** @param {Buffer} data */
  write(data) {
    if (this.socket.destroyed) return;
    if (this.trickleTimer || this.trickle.length > 0) {
      this.trickle.push(data);
      return;
    }
    this.socket.write(data);
  }

  /** @param {Buffer} data */
  writeSlowly(data) {
    this.trickle.push(data);
    if (this.trickleTimer) return;
    const tick = () => {
      this.trickleTimer = null;
      if (this.socket.destroyed) {
        this.trickle = [];
        return;
      }
      const head = this.trickle[0];
      if (!head) return;
      this.socket.write(head.subarray(0, 1));
      if (head.length > 1) this.trickle[0] = head.subarray(1);
      else this.trickle.shift();
      if (this.trickle.length > 0) this.trickleTimer = setTimeout(tick, 1000);
    };
    tick();
  }

  close() {
    if (this.trickleTimer) clearTimeout(this.trickleTimer);
    this.trickleTimer = null;
    this.trickle = [];
    this.socket.destroy();
  }
}

export class HostileServer {
  /** @param {{ port?: number }} [options] */
  static async start(options = {}) {
    const server = new HostileServer();
    await new Promise((resolve, reject) => {
      server.server.once('error', reject);
      server.server.listen(options.port ?? 0, '127.0.0.1', () => {
        server.server.off('error', reject);
        resolve(undefined);
      });
    });
    const address = server.server.address();
    server.#port = typeof address === 'object' && address ? address.port : 0;
    return server;
  }

  #port = 0;
  /** @type {Mode} */
  #mode = { kind: 'friendly' };
  #nextId = 1;
  /** @type {Set<Connection>} */
  #open = new Set();
  /** @type {Set<import('node:net').Socket>} */
  #proxied = new Set();
  /** SHA1 → script source, from SCRIPT LOAD and EVAL @type {Map<string, string>} */
  #scripts = new Map();
  /** the in-memory keyspace: key → value and expiry (ms epoch, 0: none) @type {Map<string, { value: string, expiresAt: number }>} */
  #keys = new Map();

  /** connections accepted so far */
  connections = 0;
  /** hostile replies sent so far */
  hostileSent = 0;
  /** the commands received (connection id, arguments; at most the last 10,000) @type {Array<{ conn: number, args: string[] }>} */
  commands = [];

  constructor() {
    this.server = createServer((socket) => this.#accept(socket));
  }

  get port() {
    return this.#port;
  }

  /** redis://127.0.0.1:<port> */
  get url() {
    return `redis://127.0.0.1:${this.#port}`;
  }

  /** the current mode's name: 'friendly', 'proxy' or the hostile kind */
  get mode() {
    return this.#mode.kind === 'hostile' ? this.#mode.hostile : this.#mode.kind;
  }

  /**
   * Replaces the reply to the next data command (every one from now on unless `once`).
   * @param {HostileKind} kind
   * @param {{ once?: boolean }} [options]
   */
  hostile(kind, options = {}) {
    if (!HOSTILE_KINDS.includes(kind)) throw new TypeError(`unknown hostile kind ${kind}`);
    this.#mode = { kind: 'hostile', hostile: kind, once: options.once === true };
    return this;
  }

  /** Back to friendly replies, on every connection not already poisoned. */
  friendly() {
    this.#mode = { kind: 'friendly' };
    for (const conn of this.#open) conn.frozen = null;
    return this;
  }

  /**
   * New connections are forwarded to a real Redis; open ones keep their mode.
   * @param {number} port
   * @param {string} [host]
   */
  proxyTo(port, host = '127.0.0.1') {
    for (const conn of this.#open) conn.frozen ??= this.#mode;
    this.#mode = { kind: 'proxy', port, host };
    return this;
  }

  /**
   * Puts a key into the in-memory keyspace (friendly mode's Redis).
   * @param {string} key @param {string} value @param {number} [ttlMs]
   */
  set(key, value, ttlMs = 0) {
    this.#keys.set(key, { value, expiresAt: ttlMs > 0 ? Date.now() + ttlMs : 0 });
  }

  /** @param {string} key @returns {string | null} */
  get(key) {
    const entry = this.#keys.get(key);
    if (!entry) return null;
    if (entry.expiresAt && entry.expiresAt <= Date.now()) {
      this.#keys.delete(key);
      return null;
    }
    return entry.value;
  }

  /** Closes the listener and every connection. */
  async stop() {
    for (const conn of this.#open) conn.close();
    for (const socket of this.#proxied) socket.destroy();
    this.#open.clear();
    this.#proxied.clear();
    await new Promise((resolve) => this.server.close(() => resolve(undefined)));
  }

  /** @param {import('node:net').Socket} socket */
  #accept(socket) {
    this.connections++;
    socket.on('error', () => {});
    socket.setNoDelay(true);
    const mode = this.#mode;
    if (mode.kind === 'proxy') {
      const upstream = connect({ port: mode.port, host: mode.host });
      upstream.setNoDelay(true);
      upstream.on('error', () => socket.destroy());
      socket.on('error', () => upstream.destroy());
      socket.on('close', () => upstream.destroy());
      upstream.on('close', () => socket.destroy());
      socket.pipe(upstream);
      upstream.pipe(socket);
      this.#proxied.add(socket);
      socket.on('close', () => this.#proxied.delete(socket));
      return;
    }
    const conn = new Connection(this.#nextId++, socket);
    this.#open.add(conn);
    socket.on('close', () => {
      conn.close();
      this.#open.delete(conn);
    });
    if (mode.kind === 'hostile' && mode.hostile === 'unsolicited-on-connect') {
      this.hostileSent++;
      if (mode.once) this.#mode = { kind: 'friendly' };
      socket.write(simple('OK'));
    }
    socket.on('data', (data) => {
      conn.input = conn.input.length === 0 ? data : Buffer.concat([conn.input, data]);
      const { commands, rest } = parseCommands(conn.input);
      conn.input = rest;
      for (const args of commands) this.#command(conn, args);
    });
  }

  /** @param {Connection} conn @param {string[]} args */
  #command(conn, args) {
    if (this.commands.length >= 10000) this.commands.shift();
    this.commands.push({ conn: conn.id, args: args.map((a) => (a.length > 80 ? `${a.slice(0, 77)}...` : a)) });
    const name = (args[0] ?? '').toUpperCase();
    const genuine = this.#execute(conn, name, args.slice(1));
    if (conn.muted) return;
    const mode = conn.frozen ?? this.#mode;
    if (mode.kind !== 'hostile' || HANDSHAKE.has(name) || mode.hostile === 'unsolicited-on-connect') {
      conn.write(genuine);
      if (name === 'QUIT') conn.socket.end();
      return;
    }
    this.hostileSent++;
    if (mode.once && mode === this.#mode) this.#mode = { kind: 'friendly' };
    const kind = mode.hostile;
    if (kind === 'extra-reply') {
      // In the same write as the genuine reply: a client reading it sees a reply too many.
      const extra = genuine[0] === 0x2d /* '-' */ ? Buffer.alloc(0) : genuine.equals(integer(0)) ? integer(1) : integer(0);
      conn.write(Buffer.concat([genuine, extra]));
      return;
    }
    if (kind === 'slowloris') {
      conn.writeSlowly(genuine);
      return;
    }
    conn.write(POISON[kind]);
    conn.muted = true;
    if (kind === 'truncated-close') conn.socket.end();
  }

  /**
   * Runs a command against the in-memory Redis and returns the genuine reply.
   * @param {Connection} conn @param {string} name @param {string[]} args
   * @returns {Buffer}
   */
  #execute(conn, name, args) {
    switch (name) {
      case 'AUTH':
      case 'SELECT':
      case 'CLIENT':
      case 'READONLY':
      case 'READWRITE':
      case 'QUIT':
        return simple('OK');
      case 'PING':
        return conn.subscribed > 0 ? array([bulk('pong'), bulk('')]) : simple('PONG');
      case 'ECHO':
        return bulk(args[0] ?? '');
      case 'INFO':
        return bulk('# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n# Replication\r\nrole:master\r\nconnected_slaves:0\r\n');
      case 'ROLE':
        return array([bulk('master'), integer(0), array([])]);
      case 'SCRIPT': {
        const sub = (args[0] ?? '').toUpperCase();
        if (sub === 'LOAD') {
          const source = args[1] ?? '';
          const sha = sha1(source);
          this.#scripts.set(sha, source);
          return bulk(sha);
        }
        if (sub === 'EXISTS') return array(args.slice(1).map((sha) => integer(this.#scripts.has(sha) ? 1 : 0)));
        if (sub === 'FLUSH') {
          this.#scripts.clear();
          return simple('OK');
        }
        return error(`ERR unknown subcommand '${args[0] ?? ''}'`);
      }
      case 'EVAL': {
        const source = args[0] ?? '';
        this.#scripts.set(sha1(source), source);
        return this.#script(source, args.slice(1));
      }
      case 'EVALSHA': {
        const source = this.#scripts.get((args[0] ?? '').toLowerCase());
        if (source === undefined) return error('NOSCRIPT No matching script. Please use EVAL.');
        return this.#script(source, args.slice(1));
      }
      case 'GET':
        return bulk(this.get(args[0] ?? ''));
      case 'SET': {
        const [key = '', value = ''] = args;
        const flags = args.slice(2).map((a) => a.toUpperCase());
        const px = flags.indexOf('PX');
        const ttl = px >= 0 ? Number(args[2 + px + 1]) : 0;
        if (flags.includes('NX') && this.get(key) !== null) return bulk(null);
        this.set(key, value, ttl);
        return simple('OK');
      }
      case 'DEL':
      case 'UNLINK': {
        let n = 0;
        for (const key of args) if (this.get(key) !== null && this.#keys.delete(key)) n++;
        return integer(n);
      }
      case 'EXISTS':
        return integer(args.filter((key) => this.get(key) !== null).length);
      case 'PEXPIRE': {
        const entry = this.get(args[0] ?? '') === null ? undefined : this.#keys.get(args[0] ?? '');
        if (!entry) return integer(0);
        entry.expiresAt = Date.now() + Number(args[1]);
        return integer(1);
      }
      case 'PTTL': {
        const key = args[0] ?? '';
        if (this.get(key) === null) return integer(-2);
        const entry = this.#keys.get(key);
        return integer(entry && entry.expiresAt ? entry.expiresAt - Date.now() : -1);
      }
      case 'INCR': {
        const key = args[0] ?? '';
        const n = Number(this.get(key) ?? '0') + 1;
        this.set(key, String(n));
        return integer(n);
      }
      case 'PUBLISH':
        return integer(0);
      case 'WAIT':
        return integer(0);
      case 'SUBSCRIBE':
      case 'PSUBSCRIBE':
      case 'SSUBSCRIBE': {
        const kind = name.toLowerCase();
        return Buffer.concat(args.map((channel) => array([bulk(kind), bulk(channel), integer(++conn.subscribed)])));
      }
      case 'UNSUBSCRIBE':
      case 'PUNSUBSCRIBE': {
        const kind = name.toLowerCase();
        if (args.length === 0) {
          conn.subscribed = 0;
          return array([bulk(kind), bulk(null), integer(0)]);
        }
        return Buffer.concat(args.map((channel) => array([bulk(kind), bulk(channel), integer((conn.subscribed = Math.max(0, conn.subscribed - 1)))])));
      }
      default:
        return error(`ERR unknown command '${name}'`);
    }
  }

  /**
   * The library's scripts, by what they do. args: numkeys, keys..., argv...
   * @param {string} source @param {string[]} args
   */
  #script(source, args) {
    const numKeys = Number(args[0] ?? '0');
    const keys = args.slice(1, 1 + numKeys);
    const argv = args.slice(1 + numKeys);
    switch (scriptKind(source)) {
      case 'acquire': {
        const [lock = '', fence = ''] = keys;
        if (this.get(lock) !== null) return integer(0);
        this.set(lock, argv[0] ?? '', Number(argv[1]));
        const n = Number(this.get(fence) ?? '0') + 1;
        this.set(fence, String(n));
        return integer(n);
      }
      case 'release': {
        const lock = keys[0] ?? '';
        if (this.get(lock) !== (argv[0] ?? '')) return integer(0);
        this.#keys.delete(lock);
        return integer(1);
      }
      case 'extend': {
        const lock = keys[0] ?? '';
        if (this.get(lock) !== (argv[0] ?? '')) return integer(0);
        this.set(lock, argv[0] ?? '', Number(argv[1]));
        return integer(1);
      }
      case 'extend-many':
        return array(keys.map((lock, i) => {
          if (this.get(lock) !== argv[2 * i]) return integer(0);
          this.set(lock, argv[2 * i] ?? '', Number(argv[2 * i + 1]));
          return integer(1);
        }));
      default:
        return error('ERR hostile-server: unknown script');
    }
  }
}

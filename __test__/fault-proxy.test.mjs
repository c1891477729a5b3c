// @ts-check
// The fault proxy itself (helpers/fault-proxy.mjs), with plain sockets speaking RESP to a real
// Redis: each fault does what its documentation says, so the tests built on it can be trusted.

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { RedisServer } from './helpers/redis-server.mjs';
import { FaultProxy } from './helpers/fault-proxy.mjs';

/** @type {RedisServer} */
let server;
/** @type {import('ioredis').Redis} */
let raw;
before(async () => {
  server = await RedisServer.start();
  raw = server.client();
});
after(async () => {
  await server.stop();
});

/** @param {string[]} args */
function resp(args) {
  return `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;
}

/** A bare RESP connection: what arrived so far, and how it ended. @param {number} port */
async function client(port) {
  const socket = connect(port, '127.0.0.1');
  const c = {
    socket,
    data: '',
    /** @type {string | null} */
    error: null,
    closed: false,
    /** @param {...string} args */
    send: (...args) => socket.write(resp(args)),
    /** Resolves true once `text` arrived (then forgets what arrived), false after `ms`. @param {string} text @param {number} ms */
    async waitFor(text, ms) {
      const deadline = Date.now() + ms;
      while (!c.data.includes(text)) {
        if (Date.now() >= deadline || c.closed) return false;
        await sleep(5);
      }
      c.data = c.data.slice(c.data.indexOf(text) + text.length);
      return true;
    },
    /** Resolves once the connection closed, false after `ms`. @param {number} ms */
    async waitClosed(ms) {
      const deadline = Date.now() + ms;
      while (!c.closed) {
        if (Date.now() >= deadline) return false;
        await sleep(5);
      }
      return true;
    },
  };
  socket.on('data', (d) => (c.data += d.toString('latin1')));
  socket.on('error', (err) => (c.error = /** @type {any} */ (err).code ?? err.message));
  socket.on('close', () => (c.closed = true));
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return c;
}

/** @param {(proxy: FaultProxy) => Promise<void>} body */
async function withProxy(body) {
  const proxy = await FaultProxy.start({ port: server.port });
  try {
    await body(proxy);
  } finally {
    await proxy.stop();
  }
}

test('forwards both ways; url, port and connections', () =>
  withProxy(async (proxy) => {
    assert.equal(proxy.url, `redis://127.0.0.1:${proxy.port}`);
    const a = await client(proxy.port);
    a.send('SET', 'proxy:plain', 'v');
    assert.ok(await a.waitFor('+OK\r\n', 2000));
    a.send('GET', 'proxy:plain');
    assert.ok(await a.waitFor('$1\r\nv\r\n', 2000));
    await client(proxy.port);
    await sleep(50);
    assert.equal(proxy.connections, 2);
    assert.equal(proxy.open, 2);
  }));

test('latency: set before the first connection, each direction is delayed; order is kept when it drops', () =>
  withProxy(async (proxy) => {
    proxy.latency(100);
    const a = await client(proxy.port);
    const started = Date.now();
    a.send('PING');
    assert.ok(await a.waitFor('+PONG\r\n', 3000));
    const rtt = Date.now() - started;
    assert.ok(rtt >= 190, `a round trip through 100 ms each way took ${rtt} ms`);
    // A slow chunk, then latency 0 for the next: the second must not overtake the first.
    proxy.latency(300);
    a.send('SET', 'proxy:order', 'first');
    await sleep(20);
    proxy.latency(0);
    a.send('SET', 'proxy:order', 'second');
    assert.ok(await a.waitFor('+OK\r\n+OK\r\n', 3000));
    assert.equal(await raw.get('proxy:order'), 'second', 'commands reached Redis in the order they were sent');
  }));

test('bandwidth: bytes trickle at the set rate', () =>
  withProxy(async (proxy) => {
    const a = await client(proxy.port);
    proxy.bandwidth(4000);
    const started = Date.now();
    a.send('SET', 'proxy:big', 'x'.repeat(2000));
    assert.ok(await a.waitFor('+OK\r\n', 5000));
    const took = Date.now() - started;
    assert.ok(took >= 400, `2 KB at 4000 B/s took ${took} ms`);
    proxy.heal();
    const quick = Date.now();
    a.send('GET', 'proxy:big');
    assert.ok(await a.waitFor('x'.repeat(2000), 2000));
    assert.ok(Date.now() - quick < 400, 'heal lifts the limit');
  }));

test("blackhole('down'): the server executes, the reply is lost for good; heal closes that connection", () =>
  withProxy(async (proxy) => {
    const a = await client(proxy.port);
    const b = await client(proxy.port);
    proxy.blackhole('down');
    a.send('SET', 'proxy:down', 'executed');
    assert.equal(await a.waitFor('+OK', 300), false, 'no reply');
    assert.equal(await raw.get('proxy:down'), 'executed');
    proxy.heal();
    // A stream with a hole does not go on (TCP would not): a is closed, b (which lost nothing) works.
    assert.ok(await a.waitClosed(2000), 'the connection that lost a reply is closed');
    assert.ok(!a.data.includes('+OK'), 'the lost reply never arrives');
    b.send('PING');
    assert.ok(await b.waitFor('+PONG\r\n', 2000));
    const c = await client(proxy.port);
    c.send('PING');
    assert.ok(await c.waitFor('+PONG\r\n', 2000), 'new connections work');
  }));

test("blackhole('up'): client bytes are held, and forwarded on heal", () =>
  withProxy(async (proxy) => {
    const a = await client(proxy.port);
    proxy.blackhole('up');
    a.send('SET', 'proxy:up', 'late');
    await sleep(300);
    assert.equal(await raw.get('proxy:up'), null, 'held: the server has not seen it');
    const b = await client(proxy.port);
    b.send('SET', 'proxy:up-new', 'late');
    await sleep(100);
    assert.equal(await raw.get('proxy:up-new'), null, 'new connections are held too');
    proxy.heal();
    assert.ok(await a.waitFor('+OK\r\n', 2000), 'the reply of the held command');
    assert.ok(await b.waitFor('+OK\r\n', 2000));
    assert.equal(await raw.get('proxy:up'), 'late');
  }));

test("blackhole('both'): nothing either way; a client's clean close still lets held bytes reach the server on heal", () =>
  withProxy(async (proxy) => {
    const a = await client(proxy.port);
    proxy.blackhole('both');
    a.send('SET', 'proxy:both', 'after-heal');
    assert.equal(await a.waitFor('+OK', 300), false);
    assert.equal(await raw.get('proxy:both'), null);
    a.socket.end();
    await sleep(50);
    proxy.heal();
    await sleep(200);
    assert.equal(await raw.get('proxy:both'), 'after-heal', 'like TCP retransmission after a partition');
  }));

test('drop: new connections are reset at once, open ones go on', () =>
  withProxy(async (proxy) => {
    const a = await client(proxy.port);
    proxy.drop();
    const b = await client(proxy.port).catch((err) => err);
    if (!(b instanceof Error)) {
      b.send('PING');
      assert.ok(await b.waitClosed(2000), 'a new connection is closed');
      assert.equal(b.data, '', 'and never answered');
    }
    a.send('PING');
    assert.ok(await a.waitFor('+PONG\r\n', 2000), 'the open connection still works');
    proxy.heal();
    const c = await client(proxy.port);
    c.send('PING');
    assert.ok(await c.waitFor('+PONG\r\n', 2000), 'after heal new connections work');
  }));

test('cut: every open connection is reset; new ones work', () =>
  withProxy(async (proxy) => {
    const a = await client(proxy.port);
    a.send('PING');
    assert.ok(await a.waitFor('+PONG\r\n', 2000));
    proxy.cut();
    assert.ok(await a.waitClosed(2000));
    assert.equal(a.error, 'ECONNRESET');
    assert.equal(proxy.open, 0);
    const b = await client(proxy.port);
    b.send('PING');
    assert.ok(await b.waitFor('+PONG\r\n', 2000));
  }));

test('halfOpen: a silent peer that closes nothing; heal delivers what was held', () =>
  withProxy(async (proxy) => {
    const a = await client(proxy.port);
    proxy.halfOpen();
    a.send('SET', 'proxy:half', 'v');
    assert.equal(await a.waitFor('+OK', 400), false, 'no reply');
    assert.equal(a.closed, false, 'not closed');
    assert.equal(await raw.get('proxy:half'), null, 'not forwarded');
    proxy.heal();
    assert.ok(await a.waitFor('+OK\r\n', 2000));
    assert.equal(await raw.get('proxy:half'), 'v');
  }));

test('stop closes the listener and every connection', async () => {
  const proxy = await FaultProxy.start({ port: server.port });
  const a = await client(proxy.port);
  await proxy.stop();
  assert.ok(await a.waitClosed(2000));
  await assert.rejects(client(proxy.port));
});

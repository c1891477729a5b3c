// @ts-check
// Where the engine connects and what happens when Redis is down, slow, killed or refuses us.

import './helpers/tripwire.mjs';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { inspect } from 'node:util';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import {
  Lock,
  LockAuthError,
  LockConnectionError,
  LockError,
  LockTimeoutError,
} from 'simple-distributed-lock';
import { RedisServer, freePort } from './helpers/redis-server.mjs';

/** @type {RedisServer} */
let server;
/** @type {import('ioredis').Redis} */
let raw;
const dir = mkdtempSync(join(tmpdir(), 'sdl-conn-'));

before(async () => {
  server = await RedisServer.start(['--unixsocket', join(dir, 'redis.sock'), '--unixsocketperm', '700']);
  raw = server.client();
});
after(async () => {
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** An ioredis instance that never connects: the Lock only reads its options. @param {import('ioredis').RedisOptions} options */
function ioredis(options) {
  return new Redis({ lazyConnect: true, ...options });
}

test('ioredis db and keyPrefix: the key is keyPrefix + prefix + resource in that db', async () => {
  const lock = new Lock(ioredis({ port: server.port, db: 3, keyPrefix: 'app:' }), { prefix: 'locks/' });
  const token = await lock.acquire('order:1');
  assert.ok(token);
  const db3 = server.client({ db: 3 });
  assert.equal(await db3.get('app:locks/order:1'), token);
  assert.equal(await raw.exists('app:locks/order:1'), 0, 'not in db 0');
  assert.equal(await lock.isLocked('order:1'), true);
  assert.equal(await lock.release('order:1', token), true);
  assert.equal(await db3.exists('app:locks/order:1'), 0);
});

test('an ioredis instance built from a URL string is read the same way', async () => {
  const lock = new Lock(new Redis(`redis://127.0.0.1:${server.port}/4`, { lazyConnect: true }));
  const token = await lock.acquire('from-url-instance');
  assert.equal(await server.client({ db: 4 }).get('lock:from-url-instance'), token);
});

test('URLs and plain options objects', async () => {
  const byUrl = new Lock(`redis://127.0.0.1:${server.port}/5`);
  const t1 = await byUrl.acquire('u1');
  assert.equal(await server.client({ db: 5 }).get('lock:u1'), t1);

  const byQuery = new Lock(`redis://127.0.0.1:${server.port}?db=6`);
  const t2 = await byQuery.acquire('u2');
  assert.equal(await server.client({ db: 6 }).get('lock:u2'), t2);

  const byOptions = new Lock({ host: '127.0.0.1', port: server.port, db: 7, keyPrefix: 'p:' });
  const t3 = await byOptions.acquire('u3');
  assert.equal(await server.client({ db: 7 }).get('p:lock:u3'), t3);

  const localhost = new Lock({ host: 'localhost', port: server.port });
  assert.ok(await localhost.acquire('via-localhost'));
});

test('a unix socket path, from ioredis options and from a unix:// URL', async () => {
  const socket = join(dir, 'redis.sock');
  const byPath = new Lock(ioredis({ path: socket }));
  const t1 = await byPath.acquire('sock1');
  assert.equal(await raw.get('lock:sock1'), t1);
  const byUrl = new Lock(`unix://${socket}?db=2`);
  const t2 = await byUrl.acquire('sock2');
  assert.equal(await server.client({ db: 2 }).get('lock:sock2'), t2);
});

test('a refused port rejects with LockConnectionError in about a second, not ten', async () => {
  const port = await freePort();
  // ioredis's own default connectTimeout (10 s) is not inherited.
  const lock = new Lock(ioredis({ port }));
  const started = Date.now();
  const err = await lock.acquire('down').then(() => null, (e) => e);
  const elapsed = Date.now() - started;
  assert.ok(err instanceof LockConnectionError, String(err));
  assert.ok(err instanceof LockError);
  assert.equal(err.code, 'ERR_LOCK_CONNECTION');
  assert.equal(err.name, 'LockConnectionError');
  assert.match(err.message, new RegExp(`^Cannot connect to Redis at localhost:${port}: connection refused$`));
  assert.ok(elapsed < 2000, `took ${elapsed} ms`);
  // And again: every call settles, none hangs.
  await assert.rejects(lock.isLocked('down'), LockConnectionError);
  await assert.rejects(lock.release('down', 'x'), LockConnectionError);
});

test('a server that stops answering: LockTimeoutError within commandTimeout, then recovery', async () => {
  const paused = await RedisServer.start();
  try {
    const lock = new Lock(paused.url, { commandTimeout: 300 });
    const token = await lock.acquire('slow');
    assert.ok(token);
    const pid = /** @type {number} */ (paused.child?.pid);
    process.kill(pid, 'SIGSTOP');
    const started = Date.now();
    const err = await lock.extend('slow', token, 5000).then(() => null, (e) => e);
    const elapsed = Date.now() - started;
    process.kill(pid, 'SIGCONT');
    assert.ok(err instanceof LockTimeoutError, String(err));
    assert.equal(err.code, 'ERR_LOCK_TIMEOUT');
    assert.match(err.message, /did not answer within 300 ms/);
    assert.ok(err instanceof LockConnectionError, 'a timeout is a kind of connection error');
    assert.ok(elapsed < 2500, `took ${elapsed} ms`);
    assert.equal(await lock.release('slow', token), true, 'works again once the server answers');
  } finally {
    await paused.stop();
  }
});

test('killed and restarted while an auto-extended lock is held: the Lock works again', async () => {
  const victim = await RedisServer.start();
  try {
    const lock = new Lock(victim.url);
    const token = await lock.acquire('phoenix', { ttl: 600, autoExtend: true });
    assert.ok(token);
    await victim.kill();
    await assert.rejects(lock.isLocked('phoenix'), LockConnectionError);
    await sleep(400); // auto-extend fails meanwhile: no crash, no unhandled rejection
    await victim.restart();
    // The restarted server has no data: the lock is gone and can be taken again.
    const again = await lock.acquire('phoenix', { ttl: 5000, retryCount: 20, retryDelay: 50 });
    assert.ok(again && again !== token);
    assert.equal(await lock.isLocked('phoenix'), true);
    assert.equal(await lock.release('phoenix', again), true, 'the scripts load again after NOSCRIPT');
    assert.equal(await lock.release('phoenix', token), false);
  } finally {
    await victim.stop();
  }
});

test('a wrong password: LockAuthError, and the password appears nowhere', async () => {
  const guarded = await RedisServer.start(['--requirepass', 'right-horse-battery']);
  try {
    const secret = 'wr0ng-staple-9731';
    const lock = new Lock(ioredis({ port: guarded.port, password: secret }));
    const err = await lock.acquire('auth').then(() => null, (e) => e);
    assert.ok(err instanceof LockAuthError, String(err));
    assert.equal(err.code, 'ERR_LOCK_AUTH');
    for (const text of [err.message, String(err.stack), inspect(err, { depth: 5, showHidden: true }), inspect(lock, { showHidden: true })]) {
      assert.ok(!text.includes(secret), text);
      assert.ok(!text.includes('right-horse-battery'), text);
    }

    const byUrl = new Lock(`redis://:${secret}@127.0.0.1:${guarded.port}`);
    const urlErr = await byUrl.isLocked('x').then(() => null, (e) => e);
    assert.ok(urlErr instanceof LockAuthError);
    assert.ok(!inspect(urlErr, { showHidden: true }).includes(secret));

    const right = new Lock(ioredis({ port: guarded.port, password: 'right-horse-battery' }));
    assert.ok(await right.acquire('auth'));
  } finally {
    await guarded.stop();
  }
});

test('ACL username and password from ioredis options', async () => {
  await raw.call('ACL', 'SETUSER', 'locker', 'on', '>locker-pass', '~*', '+@all');
  try {
    const lock = new Lock(ioredis({ port: server.port, username: 'locker', password: 'locker-pass' }));
    const token = await lock.acquire('acl');
    assert.equal(await raw.get('lock:acl'), token);
    const wrongUser = new Lock(ioredis({ port: server.port, username: 'nobody', password: 'locker-pass' }));
    await assert.rejects(wrongUser.acquire('acl2'), LockAuthError);
  } finally {
    await raw.call('ACL', 'DELUSER', 'locker');
  }
});

test('TLS: ioredis tls options with a private CA, and rediss:// with rejectUnauthorized false', async () => {
  const certs = makeCertificates(dir);
  const tlsPort = await freePort();
  const tlsServer = new RedisServer(tlsPort, [
    '--port', '0', '--tls-port', String(tlsPort),
    '--tls-cert-file', certs.cert, '--tls-key-file', certs.key, '--tls-ca-cert-file', certs.ca,
    '--tls-auth-clients', 'no',
  ]);
  // RedisServer.spawn passes --port itself; the later --port 0 wins and disables plain TCP.
  tlsServer.port = tlsPort;
  await tlsServer.spawn();
  try {
    const ca = readFileSync(certs.ca);
    const lock = new Lock(ioredis({ host: '127.0.0.1', port: tlsPort, tls: { ca } }));
    const token = await lock.acquire('tls');
    assert.ok(token);
    assert.equal(await lock.release('tls', token), true);

    const untrusted = new Lock(`rediss://127.0.0.1:${tlsPort}`);
    await assert.rejects(untrusted.acquire('tls'), LockConnectionError, 'an unknown CA is refused');

    const insecure = new Lock(ioredis({ host: '127.0.0.1', port: tlsPort, tls: { rejectUnauthorized: false } }));
    assert.ok(await insecure.acquire('tls-insecure'));

    // tls.servername: the name checked against the certificate instead of the host.
    const named = new Lock(ioredis({ host: '127.0.0.1', port: tlsPort, tls: { ca, servername: 'localhost' } }));
    assert.ok(await named.acquire('tls-named'));
    const misnamed = new Lock(ioredis({ host: '127.0.0.1', port: tlsPort, tls: { ca, servername: 'not-this-server.example' } }));
    await assert.rejects(misnamed.acquire('tls-misnamed'), LockConnectionError, 'a certificate for another name is refused');
    // Many calls at once over TLS, each with its own answer (the runtime transport, pipelined).
    const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => lock.acquire(`tls-many-${i}`, { ttl: 5000 })));
    assert.equal(new Set(answers).size, 200);
    assert.ok(answers.every((t) => typeof t === 'string'));

    // Killed and restarted while an auto-extended lease is held: the Lock works again over TLS.
    const held = await lock.acquire('tls-phoenix', { ttl: 600, autoExtend: true });
    assert.ok(held);
    await tlsServer.kill();
    await assert.rejects(lock.isLocked('tls-phoenix'), LockConnectionError);
    await tlsServer.restart();
    const again = await lock.acquire('tls-phoenix', { ttl: 5000, retryCount: 20, retryDelay: 50 });
    assert.ok(again && again !== held, 'the restarted server had no data');
    assert.equal(await lock.release('tls-phoenix', again), true);
  } finally {
    await tlsServer.stop();
  }
});

/** A CA and a server certificate for 127.0.0.1, made with openssl. @param {string} where */
function makeCertificates(where) {
  const path = (/** @type {string} */ name) => join(where, name);
  const run = (/** @type {string[]} */ args) => execFileSync('openssl', args, { stdio: 'ignore' });
  run(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=sdl-test-ca', '-keyout', path('ca.key'), '-out', path('ca.crt')]);
  run(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', path('server.key'), '-out', path('server.csr')]);
  const ext = path('ext.cnf');
  execFileSync('sh', ['-c', `printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > '${ext}'`]);
  run(['x509', '-req', '-in', path('server.csr'), '-CA', path('ca.crt'), '-CAkey', path('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', ext, '-out', path('server.crt')]);
  return { ca: path('ca.crt'), cert: path('server.crt'), key: path('server.key') };
}

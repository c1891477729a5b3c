// @ts-check
// Redis Cluster (an ioredis Cluster handed in) and Sentinel through the public API, on real
// topologies the tests start: exclusion across processes, many slots, failovers while locks are
// in use. Correctness with generous bounds.

import './helpers/tripwire.mjs';
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Cluster } from 'ioredis';
import { setTimeout as sleep } from 'node:timers/promises';
import { Lock, LockError, ReadWriteLock, Semaphore } from 'simple-distributed-lock';
import { RedisServer } from './helpers/redis-server.mjs';
import { startCluster, startSentinelGroup } from './helpers/topology.mjs';
import { runWorkers } from './helpers/workers.mjs';
import { fenceKey, slot } from './helpers/fences.mjs';

describe('Redis Cluster', () => {
  /** @type {import('./helpers/topology.mjs').ClusterTopology} */
  let cluster;
  /** @type {RedisServer} */
  let counterServer;

  before(async () => {
    cluster = await startCluster({ masters: 3, replicasPerMaster: 1 });
    counterServer = await RedisServer.start();
  });
  after(async () => {
    await cluster?.stop();
    await counterServer?.stop();
  });

  test('4 processes with an ioredis Cluster each keep a shared counter exact', async () => {
    await runWorkers(
      'counter-worker.mjs',
      Array.from({ length: 4 }, () => ({
        impl: 'v2',
        port: counterServer.port,
        resource: 'cluster-counter',
        iterations: 25,
        prefix: 'cluster:',
        clusterNodes: cluster.startupNodes,
      })),
    );
    const raw = counterServer.client();
    assert.equal(Number((await raw.get('cluster:violations')) ?? 0), 0);
    assert.equal(Number(await raw.get('cluster:counter')), 100);
  });

  test('resources spread over many slots on every master; keyPrefix and fences per slot', async () => {
    const ioredis = new Cluster(cluster.startupNodes, { lazyConnect: true, keyPrefix: 'app:' });
    const lock = new Lock(ioredis);
    ioredis.disconnect(); // the Lock only read its options
    const check = cluster.ioredisCluster();
    const resources = Array.from({ length: 60 }, (_, i) => (i % 5 === 0 ? `{tenant${i}}:job` : `order:${i}`));
    /** @type {Set<number>} */
    const masters = new Set();
    for (const resource of resources) {
      const lease = await lock.acquireLease(resource, { ttl: 5000 });
      assert.ok(lease, resource);
      assert.ok(/** @type {number} */ (lease.fence) >= 1, resource);
      assert.equal(await check.get(`app:lock:${resource}`), lease.token);
      // The fencing counter of the lock key's slot, on its master, holds the fence just taken.
      const counter = fenceKey(`app:lock:${resource}`, 'app:lock:');
      assert.equal(slot(counter), slot(`app:lock:${resource}`));
      assert.equal(Number(await check.get(counter)), lease.fence, resource);
      masters.add(await cluster.masterForKey(`app:lock:${resource}`));
      assert.equal(await lock.acquire(resource), null);
      assert.equal(await lease.release(), true);
    }
    assert.equal(masters.size, 3);
    await lock.close();
  });

  test('2,000 using() on distinct resources leave nothing per resource: at most one counter per slot', async () => {
    const lock = new Lock({ cluster: cluster.startupNodes.map((n) => `redis://${n.host}:${n.port}`) }, { prefix: 'hygiene:' });
    const ttl = 300;
    for (let i = 0; i < 2000; i += 100) {
      await Promise.all(Array.from({ length: 100 }, (_, j) => lock.using(`order:${i + j}`, async () => {}, { ttl })));
    }
    await sleep(2 * ttl);
    const check = cluster.ioredisCluster();
    await check.get('connect'); // the slot map, so that nodes() lists every master
    const keys = (await Promise.all(check.nodes('master').map((node) => node.keys('*')))).flat();
    const perResource = keys.filter((k) => k.includes('order:'));
    assert.deepEqual(perResource, [], 'no key left per resource');
    const counters = keys.filter((k) => k.endsWith(':fence:hygiene:'));
    assert.ok(counters.length > 0 && counters.length <= 2000, `${counters.length} counters`);
    for (const counter of counters) assert.match(counter, /^\{[0-9a-f]+\}:fence:hygiene:$/);
    await lock.close();
  });

  test('Semaphore: permits on resources spread over every master, counted, given back, waking a waiter', async () => {
    const sem = new Semaphore({ cluster: cluster.startupNodes.map((n) => `redis://${n.host}:${n.port}`) }, { permits: 2, ttl: 5000 });
    const check = cluster.ioredisCluster();
    /** @type {Set<number>} */
    const masters = new Set();
    for (let i = 0; i < 12; i++) {
      const resource = `pool:${i}`;
      const [a, b] = [await sem.acquire(resource), await sem.acquire(resource)];
      assert.ok(a && b, resource);
      assert.equal(await sem.acquire(resource), null, `${resource}: 2 permits`);
      assert.equal(await sem.count(resource), 2);
      assert.equal(await check.zcard(`semaphore:${resource}`), 2);
      masters.add(await cluster.masterForKey(`semaphore:${resource}`));
      assert.equal(await sem.release(resource, /** @type {string} */ (a)), true);
      assert.equal(await sem.release(resource, /** @type {string} */ (b)), true);
      assert.equal(await check.exists(`semaphore:${resource}`), 0, `${resource}: nothing left`);
    }
    assert.equal(masters.size, 3, 'the semaphores lived on every master');
    const held = await sem.acquire('pool:wake');
    const held2 = await sem.acquire('pool:wake');
    const waiter = sem.acquire('pool:wake', { retryCount: Infinity, retryDelay: 5000 });
    await sleep(200);
    const releasedAt = Date.now();
    await sem.release('pool:wake', /** @type {string} */ (held));
    assert.ok(await waiter);
    assert.ok(Date.now() - releasedAt < 2000, 'woken by the release, not its 5 s poll');
    await sem.release('pool:wake', /** @type {string} */ (held2));
    await sem.close();
  });

  test('ReadWriteLock: every key of a resource on its one master, on every master; readers share, a writer waits and is woken', async () => {
    const rw = new ReadWriteLock({ cluster: cluster.startupNodes.map((n) => `redis://${n.host}:${n.port}`) }, { ttl: 5000 });
    const check = cluster.ioredisCluster();
    /** @type {Set<number>} */
    const masters = new Set();
    for (let i = 0; i < 12; i++) {
      const resource = `doc:{${i}}:x`; // a hash tag of the user's own, too
      const [a, b] = [await rw.acquireRead(resource), await rw.acquireRead(resource)];
      assert.ok(a && b, resource);
      const writing = rw.acquireWrite(resource, { retryCount: Infinity, retryDelay: 5000 });
      await sleep(50);
      assert.equal(await rw.acquireRead(resource), null, `${resource}: a waiting writer keeps new readers out`);
      const master = await cluster.masterForKey(`rwlock:${resource}`);
      masters.add(master);
      // The readers' set, the writer's key and the waiting mark: one node holds them all.
      const onNode = /** @type {string[]} */ (await cluster.admin.call(master, 'KEYS', `*rwlock:${resource}`));
      assert.equal(onNode.length, 2, `${resource}: ${onNode}`);
      const releasedAt = Date.now();
      await a.release();
      await b.release();
      const w = await writing;
      assert.ok(w && Date.now() - releasedAt < 2000, `${resource}: the writer was woken by the last reader out`);
      assert.equal(await rw.count(resource), 1);
      assert.equal(await w.release(), true);
      assert.equal(await check.exists(`rwlock:${resource}`), 0, `${resource}: nothing left`);
    }
    assert.equal(masters.size, 3, 'the read-write locks lived on every master');
    await rw.close();
  });

  test('a lock over resources on every master: all or none, rolled back when a later slot is held; [a, b] and [b, a] from two processes never overlap', async () => {
    const nodes = cluster.startupNodes.map((n) => `redis://${n.host}:${n.port}`);
    const lock = new Lock({ cluster: nodes }, { ttl: 5000 });
    const other = new Lock({ cluster: nodes });
    const check = cluster.ioredisCluster();
    // Resources until every master serves one.
    /** @type {Map<number, string>} */
    const byMaster = new Map();
    for (let i = 0; byMaster.size < 3; i++) {
      const master = await cluster.masterForKey(`lock:multi:${i}`);
      if (!byMaster.has(master)) byMaster.set(master, `multi:${i}`);
    }
    const resources = [...byMaster.values()];
    const token = await lock.acquire(resources);
    assert.ok(token);
    for (const r of resources) assert.equal(await check.get(`lock:${r}`), token, `${r} on its master`);
    assert.equal(await lock.extend(resources, token, 8000), true);
    for (const r of resources) assert.ok((await check.pttl(`lock:${r}`)) > 7000, r);
    assert.equal(await lock.release(resources, token), true);
    // Hold each resource in turn: the lock over all of them is refused and leaves nothing.
    for (const held of resources) {
      const h = await other.acquire(held);
      assert.ok(h);
      assert.equal(await lock.acquire(resources), null, `${held} held`);
      for (const r of resources.filter((x) => x !== held)) assert.equal(await check.exists(`lock:${r}`), 0, `${r} rolled back (${held} held)`);
      await other.release(held, /** @type {string} */ (h));
    }
    await Promise.all([lock.close(), other.close()]);
    const [a, b] = resources;
    for (const key of [`multi:inside:${a}`, `multi:inside:${b}`, '{multi}:breaches', '{multi}:sections']) await check.del(key);
    await runWorkers('multi-worker.mjs', [
      { url: { cluster: nodes }, resources: [a, b], sections: 25 },
      { url: { cluster: nodes }, resources: [b, a], sections: 25 },
    ]);
    assert.equal(Number(await check.get('{multi}:sections')), 50, 'every section ran');
    assert.equal(Number(await check.get('{multi}:breaches')), 0, 'no two sections shared a resource');
  });

  test('a master killed during a burst on every master: no call hangs, the other masters keep granting, the promoted replica takes over', async () => {
    const lock = new Lock({ cluster: cluster.startupNodes.map((n) => `redis://${n.host}:${n.port}`) });
    const resources = Array.from({ length: 24 }, (_, i) => `burst:${i}`);
    const masterOf = new Map(await Promise.all(resources.map(async (r) => /** @type {[string, number]} */ ([r, await cluster.masterForKey(`lock:${r}`)]))));
    const victim = masterOf.get(resources[0]);
    assert.ok(victim !== undefined && cluster.nodes.some((n) => n.masterPort === victim));
    assert.ok(resources.some((r) => masterOf.get(r) !== victim), 'some resources live on the other masters');

    /** @type {Array<{ resource: string, at: number, ms: number, outcome: string }>} */
    const calls = [];
    let stop = false;
    // 24 loops, one per resource, acquire + release as fast as they go.
    const loops = resources.map(async (resource) => {
      while (!stop) {
        const at = Date.now();
        /** @param {unknown} err */
        const code = (err) => {
          assert.ok(err instanceof LockError, `a clear LockError, got ${err}`);
          return `${err.code}: ${err.message}`;
        };
        const outcome = await lock.acquire(resource, { ttl: 2000 }).then(
          (token) => (token ? lock.release(resource, token).then((released) => (released ? 'acquired' : 'lost'), code) : 'held'),
          code,
        );
        calls.push({ resource, at, ms: Date.now() - at, outcome });
        if (outcome !== 'acquired') await sleep(50);
      }
    });
    await sleep(500); // the burst is on
    const killedAt = Date.now();
    await cluster.killMaster(victim);
    await cluster.waitForFailover(victim, 20000);
    const failedOverAt = Date.now();
    await sleep(1500);
    stop = true;
    await Promise.all(loops);
    for (const call of calls) assert.ok(call.ms < 8000, `a call took ${call.ms} ms (${call.resource}: ${call.outcome})`);
    const during = calls.filter((c) => c.at > killedAt && c.at + c.ms < failedOverAt);
    assert.ok(
      during.some((c) => masterOf.get(c.resource) !== victim && c.outcome === 'acquired'),
      'the other masters kept granting while the victim was down',
    );
    const onVictim = resources.filter((r) => masterOf.get(r) === victim);
    for (const resource of onVictim) {
      assert.ok(
        calls.some((c) => c.resource === resource && c.at > failedOverAt && c.outcome === 'acquired'),
        `${resource} is granted again by the promoted replica`,
      );
    }
    const errors = calls.filter((c) => c.outcome.startsWith('ERR'));
    console.log(`burst: ${calls.length} calls, ${during.length} during the failover (${failedOverAt - killedAt} ms), ${errors.length} errors: ${[...new Set(errors.map((c) => c.outcome))].join(' | ')}`);
    await lock.close();
  });
});

describe('Sentinel', () => {
  /** @type {import('./helpers/topology.mjs').SentinelGroup} */
  let group;

  before(async () => {
    group = await startSentinelGroup({ sentinels: 1, replicas: 1 });
  });
  after(async () => {
    await group?.stop();
  });

  test('a forced failover while locks are in use: the Lock follows the new master', async () => {
    const ioredis = group.ioredisSentinel({ lazyConnect: true });
    const lock = new Lock(ioredis, { ttl: 5000 });
    /** @type {import('ioredis').Redis | undefined} */
    let direct;
    try {
      const oldMaster = await group.currentMaster();

      // Replica acknowledgement: the lock is on the replica before the failover can happen.
      const held = await lock.acquireLease('sentinel-held', { replicas: { count: 1, timeout: 2000 }, autoExtend: true });
      assert.ok(held);

      let running = true;
      let sections = 0;
      /** @type {string[]} */
      const errors = [];
      const worker = (async () => {
        while (running) {
          await lock
            .using('sentinel-busy', async () => void sections++, { retryCount: 20, retryDelay: 50 })
            .catch((err) => errors.push(err.code));
          await sleep(20);
        }
      })();
      await sleep(200);
      const newMaster = await group.failover(20000);
      assert.notEqual(newMaster, oldMaster);
      await sleep(1500);
      running = false;
      await worker;
      assert.ok(sections > 0);
      // Clear errors only. A section whose release met the failover leaves its lock held until
      // the release is sent again to the new master (or its ttl): a using meanwhile may run out
      // of retries (ERR_LOCK_NOT_ACQUIRED).
      for (const code of errors) assert.match(code, /^ERR_LOCK_(CONNECTION|TIMEOUT|REDIS|NOT_ACQUIRED)$/);

      // New acquisitions land on the new master, and the replicated lock survived there.
      const after = await lock.acquire('sentinel-after');
      assert.ok(after);
      direct = new RedisServer(newMaster, []).client();
      assert.equal(await direct.get('lock:sentinel-after'), after);
      assert.equal(await direct.get('lock:sentinel-held'), held.token);
      assert.equal(held.signal.aborted, false, 'the auto-extended lease was kept across the failover');
      assert.equal(await held.release(), true);
    } finally {
      direct?.disconnect();
      ioredis.disconnect();
      await lock.close();
    }
  });

  test('Semaphore behind Sentinel: at most its permits, given back', async () => {
    const [sentinel] = group.sentinels;
    const sem = new Semaphore(`redis+sentinel://${sentinel.host}:${sentinel.port}/${group.masterName}`, { permits: 2 });
    const tokens = [await sem.acquire('sentinel-pool'), await sem.acquire('sentinel-pool')];
    assert.ok(tokens.every(Boolean));
    assert.equal(await sem.acquire('sentinel-pool'), null);
    assert.equal(await sem.count('sentinel-pool'), 2);
    for (const token of tokens) assert.equal(await sem.release('sentinel-pool', /** @type {string} */ (token)), true);
    assert.equal(await sem.count('sentinel-pool'), 0);
    await sem.close();
  });

  test('ReadWriteLock behind Sentinel: readers share, a writer is alone', async () => {
    const [sentinel] = group.sentinels;
    const rw = new ReadWriteLock(`redis+sentinel://${sentinel.host}:${sentinel.port}/${group.masterName}`);
    const readers = [await rw.acquireRead('sentinel-rw'), await rw.acquireRead('sentinel-rw')];
    assert.ok(readers.every(Boolean));
    assert.equal(await rw.acquireWrite('sentinel-rw'), null);
    for (const lease of readers) assert.equal(await lease?.release(), true);
    const writer = await rw.acquireWrite('sentinel-rw');
    assert.ok(writer);
    assert.equal(await rw.acquireRead('sentinel-rw'), null);
    assert.equal(await writer.release(), true);
    assert.equal(await rw.count('sentinel-rw'), 0);
    await rw.close();
  });

  test('a lock over several resources behind Sentinel: all or none, released together', async () => {
    const [sentinel] = group.sentinels;
    const url = `redis+sentinel://${sentinel.host}:${sentinel.port}/${group.masterName}`;
    const lock = new Lock(url);
    const other = new Lock(url);
    const held = await other.acquire('sentinel-multi:b');
    assert.ok(held);
    assert.equal(await lock.acquire(['sentinel-multi:a', 'sentinel-multi:b']), null);
    assert.equal(await lock.isLocked('sentinel-multi:a'), false, 'nothing taken');
    await other.release('sentinel-multi:b', held);
    const token = await lock.acquire(['sentinel-multi:a', 'sentinel-multi:b']);
    assert.ok(token);
    assert.equal(await other.acquire('sentinel-multi:a'), null);
    assert.equal(await lock.release(['sentinel-multi:a', 'sentinel-multi:b'], token), true);
    assert.equal(await lock.isLocked('sentinel-multi:b'), false);
    await Promise.all([lock.close(), other.close()]);
  });

  test('a redis+sentinel:// URL', async () => {
    const [sentinel] = group.sentinels;
    const lock = new Lock(`redis+sentinel://${sentinel.host}:${sentinel.port}/${group.masterName}`);
    const token = await lock.acquire('sentinel-url');
    assert.ok(token);
    assert.equal(await lock.release('sentinel-url', token), true);
    await lock.close();
  });
});

// @ts-check
'use strict';
// One demo worker: does `sections` read-modify-write increments of a shared counter in Redis,
// each inside `lock.using()` (or without a lock, to show what goes wrong). Reports to the parent.

const { Redis } = require('ioredis');
const { Lock } = require('..');

const [url, name, sectionsText, mode] = process.argv.slice(2);
const sections = Number(sectionsText);
const sleep = (/** @type {number} */ ms) => new Promise((r) => setTimeout(r, ms));

/** @param {Record<string, unknown>} message */
function report(message) {
  if (process.send) process.send({ worker: name, ...message });
}

async function main() {
  const redis = new Redis(url, { maxRetriesPerRequest: 1 });
  const lock = new Lock(redis, { ttl: 5000 });
  const counterKey = `demo:counter:${mode}`;

  const increment = async () => {
    const before = Number((await redis.get(counterKey)) ?? 0);
    await sleep(5 + Math.random() * 10); // the work in the middle of a read-modify-write
    await redis.set(counterKey, String(before + 1));
    return before;
  };

  for (let i = 0; i < sections; i++) {
    if (mode === 'locked') {
      await lock.using(
        'demo:counter',
        async () => {
          const before = await increment();
          report({ event: 'held', from: before, to: before + 1 });
        },
        { retryCount: Infinity, retryDelay: 20 },
      );
    } else {
      const before = await increment();
      report({ event: 'unlocked', from: before, to: before + 1 });
    }
    await sleep(Math.random() * 5);
  }
  redis.disconnect();
  await lock.close();
}

main().catch((err) => {
  report({ event: 'error', message: String(err && err.message) });
  process.exitCode = 1;
});

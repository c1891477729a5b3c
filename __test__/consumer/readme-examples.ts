// The v1 README's examples, unchanged, as a TypeScript consumer compiles and runs them.
// Each example sits in its own function (they reuse names such as `token`); the lines inside
// are the README's. The harness at the bottom runs them in order against Redis on
// localhost:6379 (the README's address) and releases what they leave held.

import Redis from "ioredis";
import { Lock } from "simple-distributed-lock";
import type { LockOptions, AcquireOptions } from "simple-distributed-lock";

// Quick Start
const redis = new Redis({ host: "localhost", port: 6379 });
const lock = new Lock(redis);

async function quickStart() {
  // Acquire a lock (single attempt)
  const token = await lock.acquire("order:123");
  if (token) {
    // ... do critical work ...
    await lock.release("order:123", token);
  }
}

async function singleAttempt() {
  // Single attempt (default)
  const token = await lock.acquire("resource-key");
  return token;
}

async function withRetry() {
  // With retry
  const token = await lock.acquire("resource-key", {
    retryCount: 10,
    retryDelay: 500,
  });
  return token;
}

async function withAutoExtend() {
  // With auto-extend (lock stays alive until release)
  const token = await lock.acquire("resource-key", {
    autoExtend: true,
  });
  return token;
}

async function retryForever() {
  // Retry forever until acquired
  const token = await lock.acquire("resource-key", {
    retryCount: Infinity,
    retryDelay: 1000,
    autoExtend: true,
  });
  return token;
}

async function release(token: string) {
  const released = await lock.release("resource-key", token);
  return released;
}

async function extend(token: string) {
  const ok = await lock.extend("resource-key", token, 15000);
  return ok;
}

async function isLocked() {
  const locked = await lock.isLocked("resource-key");
  // true | false
  return locked;
}

async function using() {
  const result = await lock.using("order:123", async () => {
    // ... critical section ...
    return { success: true };
  });
  return result;
}

async function usingWithRetryAndAutoExtend() {
  // With retry + auto-extend
  await lock.using(
    "order:123",
    async () => {
      // ... long-running critical section ...
    },
    { retryCount: 5, retryDelay: 1000, autoExtend: true }
  );
}

// The exported option types, as v1 callers name them.
const globalDefaults: LockOptions = { ttl: 10000, prefix: "lock:" };
const perCall: AcquireOptions = { ttl: 5000, autoExtend: false, retryCount: 0, retryDelay: 200 };

// ---- harness ----
function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`README example failed: ${what}`);
}

async function main(): Promise<void> {
  await redis.del("lock:order:123", "lock:resource-key");
  await quickStart();
  check((await redis.exists("lock:order:123")) === 0, "quick start released its lock");

  const first = await singleAttempt();
  check(typeof first === "string" && /^[0-9a-f]{32}$/.test(first), "single attempt returns a token");
  check((await isLocked()) === true, "isLocked is true while held");
  check((await extend(first!)) === true, "extend returns true for the owner");
  const pttl = await redis.pttl("lock:resource-key");
  check(pttl > 14000 && pttl <= 15000, "extend sets the ttl to 15000");
  check((await withAutoExtend()) === null, "a held lock is not acquired again");
  setTimeout(() => void release(first!), 300);
  const second = await withRetry();
  check(typeof second === "string" && second !== first, "retry takes the lock once released");
  check((await release(second!)) === true, "release returns true for the owner");
  check((await release(second!)) === false, "a second release returns false");
  check((await isLocked()) === false, "isLocked is false once released");

  const auto = await withAutoExtend();
  check(typeof auto === "string", "auto-extend acquire");
  setTimeout(() => void release(auto!), 300);
  const forever = await retryForever();
  check(typeof forever === "string", "retry forever acquires once released");
  await release(forever!);

  const result = await using();
  check(result.success === true, "using returns the callback's result");
  await usingWithRetryAndAutoExtend();
  check((await redis.exists("lock:order:123")) === 0, "using released its lock");

  const custom = new Lock(redis, globalDefaults);
  const t = await custom.acquire("typed", perCall);
  check(t !== null, "typed options work");
  await custom.release("typed", t!);
  redis.disconnect();
  console.log("v1 README examples: all ran");
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
  redis.disconnect();
});

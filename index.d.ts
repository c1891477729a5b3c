// Types of simple-distributed-lock 2. The v1 API (Lock, LockOptions, AcquireOptions) is
// unchanged; everything else is new in v2.

/** Options for `new Lock(redis, options)`. */
export interface LockOptions {
  /** Lock TTL in milliseconds (default: 10000). A positive integer, at most 2147483647. */
  ttl?: number;
  /** Prefix for Redis keys (default: "lock:"). Comes after the ioredis instance's `keyPrefix`. */
  prefix?: string;
  /**
   * v2: limit for opening the engine's connection, handshake included, in ms. Default: the
   * ioredis instance's `connectTimeout` unless that is ioredis's default (10000), else 1000.
   */
  connectTimeout?: number;
  /**
   * v2: limit for each Redis reply, in ms. Default: the ioredis instance's `commandTimeout`,
   * else 1000. A command past it rejects with `LockTimeoutError`.
   */
  commandTimeout?: number;
  /**
   * v2: called once for each auto-extended lock that is lost (an extend found another owner or
   * no key, or no extend succeeded before the lock's deadline). Whatever it throws or rejects
   * with becomes a process warning, never an unhandled rejection.
   */
  onLockLost?: (info: LockLostInfo) => void | Promise<void>;
  /**
   * v2: give every acquire a fence (default: true), from a counter per Redis Cluster slot and
   * prefix (at most 16,384 small keys, however many resources; see the README). `false` writes
   * only the lock key.
   */
  fencing?: boolean;
  /**
   * v2: share of the ttl set aside for clock drift (default: 0.01). A lease's deadline is its
   * send time + ttl − (ttl × driftFactor + 2 ms); for Redlock it is also the validity time in
   * which a majority must be reached.
   */
  driftFactor?: number;
}

/** What `onLockLost` receives. */
export interface LockLostInfo {
  resource: string;
  token: string;
  /** Why: `reason.kind` is 'not-owner', 'unreachable', 'expired', 'max-hold-time' or 'closed'. */
  reason: LockLostError;
}

/** Options for `acquire()` and `using()`. */
export interface AcquireOptions {
  /** Override TTL for this call, in ms (default: the Lock's ttl). */
  ttl?: number;
  /**
   * Keep refreshing the TTL every floor(ttl / 2) ms until released or lost (default: false).
   * The refresh does not keep the process alive.
   */
  autoExtend?: boolean;
  /** Retry attempts after the first (default: 0). `Infinity` retries until acquired. */
  retryCount?: number;
  /**
   * Delay in ms between attempts (default: 200). v2: a release by a v2 process wakes waiters at
   * once (Redis pub/sub); polling every retryDelay remains, for locks released by v1 or expiring.
   * A wake-up's attempt does not count against retryCount, so a waiter gives up no sooner than
   * retryCount × retryDelay, as in v1.
   */
  retryDelay?: number;
  /** v2: up to this many ms of random extra delay per retry (default: 0). */
  retryJitter?: number;
  /**
   * v2: stop waiting after this many ms in total and resolve `null`. Without `retryCount`, it
   * means "retry until then".
   */
  waitTimeout?: number;
  /** v2: reject with `signal.reason` when it aborts while waiting (a lock granted meanwhile is released). */
  signal?: AbortSignal;
  /**
   * v2, single master or Sentinel: after the SET, wait (WAIT) until `count` replicas acknowledged
   * it, at most `timeout` ms (default 1000). Fewer acknowledgements release the lock and reject
   * with `LockReplicationError`.
   */
  replicas?: { count: number; timeout?: number };
  /**
   * v2, with `autoExtend`: stop auto-extending once the lock has been held this many ms; it then
   * runs out its ttl, and the lease's signal aborts at its deadline with `reason.kind`
   * 'max-hold-time' (`onLockLost` is told too). A bound for a holder that is stuck.
   */
  maxHoldTime?: number;
}

/** v2: a held lock. `await using lease = await lock.acquireLease(...)` releases it at scope end. */
export interface Lease {
  /** The resource given to acquire; a lock over several: their names, sorted, joined by ", ". */
  readonly resource: string;
  /** v2: every resource it holds, sorted (one for a lock on one resource). */
  readonly resources: readonly string[];
  /** The owner token (32 hex characters). */
  readonly token: string;
  /**
   * The fencing token: strictly increasing per resource across all clients, also across the
   * lock key expiring. Send it with every write to a store that rejects a fence lower than the
   * highest it has seen. `null` when the Lock has `fencing: false`.
   */
  readonly fence: number | null;
  /**
   * Epoch ms (this process's clock) until which the lock is known to be held: send time of the
   * last successful SET or extend + ttl − a safety margin (ttl × driftFactor + 2 ms; by default
   * 1% of ttl + 2 ms). Moves with extends.
   */
  readonly expiresAt: number;
  /** Aborts, with a `LockLostError` as its reason, when the lock is lost. */
  readonly signal: AbortSignal;
  /**
   * v2: ms left before the lease's deadline, on the monotonic clock, read without any call into
   * the engine: `0` once the deadline passed, the lock is known lost, or it was released. Check it
   * right before each side effect: unlike `signal`, it cannot lag behind a paused process.
   */
  readonly remainingMs: number;
  /**
   * v2: throws, at once, the `LockLostError` that `signal.reason` holds or will hold when
   * `remainingMs` is 0 (a deadline seen here first aborts the signal with it, kind 'expired';
   * after a release, kind 'released'); returns otherwise.
   */
  throwIfLost(): void;
  /** Extend to `ttl` ms (default: the Lock's ttl). `false` if the lock was lost. */
  extend(ttl?: number): Promise<boolean>;
  /** Release. `false` if it had expired or belongs to someone else. */
  release(): Promise<boolean>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** TLS settings, as ioredis's `tls` option holds them (the fields the engine uses). */
export interface TlsConnectionOptions {
  /** PEM root certificate(s) to trust instead of the bundled Mozilla roots. */
  ca?: string | Uint8Array | Array<string | Uint8Array>;
  /** PEM client certificate and key, for mutual TLS. */
  cert?: string | Uint8Array | Array<string | Uint8Array>;
  key?: string | Uint8Array | Array<string | Uint8Array>;
  /** `false` accepts any server certificate (default: true). */
  rejectUnauthorized?: boolean;
}

/** A plain description of one Redis server (the same field names as ioredis's options). */
export interface RedisConnectionOptions {
  host?: string;
  port?: number;
  /** Unix socket path; wins over host and port. */
  path?: string;
  username?: string;
  password?: string;
  db?: number;
  /** `true` or an object: connect with TLS. */
  tls?: boolean | TlsConnectionOptions;
  /** Prepended to every key, as ioredis's `keyPrefix` is. */
  keyPrefix?: string;
  connectTimeout?: number;
  commandTimeout?: number;
}

/**
 * An ioredis `Redis` instance (ioredis 4, 5 or 6). The engine reads its `options` (host, port,
 * path, username, password, db, tls, keyPrefix, connectTimeout, commandTimeout) and opens its
 * own connection; the instance itself is not used.
 */
export interface RedisInstanceLike {
  readonly options: object;
}

/** A cluster startup node or a sentinel, as ioredis takes them: a port, "host:port", a URL or `{ host, port }`. */
export type RedisNodeAddress = number | string | { host?: string; port?: number };

/** v2: a Redis Cluster from its startup nodes; the other fields apply to every node. */
export interface RedisClusterOptions extends Omit<RedisConnectionOptions, 'host' | 'port' | 'path' | 'db'> {
  cluster: RedisNodeAddress[];
}

/** v2: the master a group of sentinels names, as ioredis's Sentinel options describe it. */
export interface RedisSentinelOptions extends Omit<RedisConnectionOptions, 'host' | 'port' | 'path'> {
  sentinels: RedisNodeAddress[];
  /** The monitored master's name. */
  name: string;
  sentinelUsername?: string;
  sentinelPassword?: string;
  sentinelTLS?: boolean | TlsConnectionOptions;
  enableTLSForSentinelMode?: boolean;
}

/** One server of a Redlock group: an ioredis instance, a URL or options. */
export type RedlockMaster = RedisInstanceLike | string | RedisConnectionOptions;

/**
 * What `new Lock()` accepts:
 * - one server: an ioredis instance, a `redis://` / `rediss://` / `unix://` URL, or options;
 * - v2: an ioredis `Cluster`, or `{ cluster: [...] }`;
 * - v2: a Sentinel-backed ioredis instance, `{ sentinels, name }`, or a
 *   `redis+sentinel://host:26379,host2:26379/mymaster[/db]` URL;
 * - v2: an array of independent masters, for Redlock.
 */
export type RedisConnection =
  | RedisInstanceLike
  | string
  | RedisConnectionOptions
  | RedisClusterOptions
  | RedisSentinelOptions
  | RedlockMaster[];

export declare class Lock {
  /**
   * Create a Lock. Does no I/O: the engine connects on the first call.
   * @throws {TypeError | RangeError} bad arguments
   * @throws {LockUnsupportedError} a Redlock master that is itself a cluster or Sentinel group
   */
  constructor(redis: RedisConnection, options?: LockOptions);

  /**
   * Acquire the lock on `resource` (`SET key token PX ttl NX`). v2: an array of resources takes
   * a lock over all of them, or none, under one token (see "Locks over several resources").
   * @returns the owner token (32 hex characters), or `null` if every attempt found it held.
   */
  acquire(resource: string | readonly string[], opts?: AcquireOptions): Promise<string | null>;

  /**
   * Release the lock if `token` still owns it; stops its auto-extension first. An array: the
   * lock over those resources (each key the token owns is deleted).
   * @returns `true` if released (every key, for an array), `false` if it had expired or belongs
   *   to someone else.
   */
  release(resource: string | readonly string[], token: string): Promise<boolean>;

  /**
   * Set the lock's TTL to `ttl` ms (default: the Lock's ttl) if `token` still owns it.
   * Never re-creates an expired lock. An array: every key, if the token owns every one.
   * @returns `true` if extended, `false` if the lock was lost.
   */
  extend(resource: string | readonly string[], token: string, ttl?: number): Promise<boolean>;

  /** Whether anybody holds the lock on `resource`. */
  isLocked(resource: string): Promise<boolean>;

  /**
   * v2: acquire, and get the lock as a `Lease` with its fence, deadline and lost-lock signal.
   * The signal aborts when the lock is lost; without autoExtend, at its deadline.
   * @returns the lease, or `null` if every attempt found the lock held.
   */
  acquireLease(resource: string | readonly string[], opts?: AcquireOptions): Promise<Lease | null>;

  /**
   * Acquire, run `fn(signal, lease)`, release (even if `fn` throws). v1 callbacks that take no
   * arguments work unchanged. `signal` aborts with a `LockLostError` if the lock is lost while
   * `fn` runs (without autoExtend: at the lock's deadline).
   * @throws {LockAcquireError} `Failed to acquire lock on resource "<resource>".`
   */
  using<T>(
    resource: string | readonly string[],
    fn: (signal: AbortSignal, lease: Lease) => T | PromiseLike<T>,
    opts?: AcquireOptions
  ): Promise<T>;

  /**
   * v2: stop auto-extension, pending waits and lease tracking, and close the engine's
   * connections. Held leases' signals abort (kind 'closed'); their locks expire at their ttl.
   * Later calls reject with `LockClosedError`. Idempotent.
   */
  close(): Promise<void>;

  /**
   * v2: what this Lock did: counters since it was made, locks held and acquires waiting now, and
   * wait- and hold-time summaries over a sliding window. Counting is always on (it is cheap).
   */
  metrics(): LockMetrics;

  /** v2: `await using lock = new Lock(...)` closes it at the end of the scope. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** v2: options for `new Semaphore(redis, options)`: the Lock's, plus `permits`. */
export interface SemaphoreOptions extends Omit<LockOptions, 'fencing'> {
  /**
   * Permits per resource: at most this many holders at once. A positive integer, required, the
   * same for every instance on a resource.
   */
  permits: number;
  /** Prefix for Redis keys (default: "semaphore:"). */
  prefix?: string;
}

/**
 * v2: a counting semaphore with a lease per permit. `acquire`, `acquireLease`, `using`, `release`,
 * `extend` and `isLocked` work as on `Lock` (same options, waiting, auto-extension, signal and
 * errors), on permits: each holder's permit is its own lease, expiring on the server's clock, so
 * a crashed holder's permit frees itself after its ttl; a release wakes a waiter at once.
 * Permits carry no fence (`lease.fence` is `null`). Not over Redlock (`LockUnsupportedError`).
 */
export declare class Semaphore extends Lock {
  /**
   * @throws {TypeError | RangeError} bad arguments (`permits` missing or not a positive integer)
   * @throws {LockUnsupportedError} Redlock masters
   */
  constructor(redis: RedisConnection, options: SemaphoreOptions);
  // One resource at a time: an array (a lock over several resources) rejects with LockUnsupportedError.
  acquire(resource: string, opts?: AcquireOptions): Promise<string | null>;
  acquireLease(resource: string, opts?: AcquireOptions): Promise<Lease | null>;
  using<T>(resource: string, fn: (signal: AbortSignal, lease: Lease) => T | PromiseLike<T>, opts?: AcquireOptions): Promise<T>;
  release(resource: string, token: string): Promise<boolean>;
  extend(resource: string, token: string, ttl?: number): Promise<boolean>;
  /** Permits per resource. */
  readonly permits: number;
  /** Permits held on `resource` now (expired ones not counted). */
  count(resource: string): Promise<number>;
}

/** v2: options for `new ReadWriteLock(redis, options)`: the Lock's, without fencing. */
export interface ReadWriteLockOptions extends Omit<LockOptions, 'fencing'> {
  /** Prefix for Redis keys (default: "rwlock:"). */
  prefix?: string;
}

/**
 * v2: a read-write lock: many readers or one writer per resource. Each holder, reader or writer,
 * has its own lease (expiring on the server's clock; auto-extension renews readers too), with
 * the Lock's options, waiting, signal and errors. A writer that waits for readers to leave keeps
 * new readers out meanwhile, so a steady stream of readers cannot starve it. `acquire`,
 * `acquireLease` and `using` take the write side; `release`, `extend` and `isLocked` work on
 * either. Sides carry no fence (`lease.fence` is `null`). Not over Redlock (`LockUnsupportedError`).
 */
export declare class ReadWriteLock extends Lock {
  /**
   * @throws {TypeError | RangeError} bad arguments
   * @throws {LockUnsupportedError} Redlock masters
   */
  constructor(redis: RedisConnection, options?: ReadWriteLockOptions);
  // One resource at a time: an array (a lock over several resources) rejects with LockUnsupportedError.
  /** The write side, as `acquireWrite` but resolving to the token. */
  acquire(resource: string, opts?: AcquireOptions): Promise<string | null>;
  /** The write side (`acquireWrite`). */
  acquireLease(resource: string, opts?: AcquireOptions): Promise<Lease | null>;
  /** On the write side (`usingWrite`). */
  using<T>(resource: string, fn: (signal: AbortSignal, lease: Lease) => T | PromiseLike<T>, opts?: AcquireOptions): Promise<T>;
  /** Gives back either side. */
  release(resource: string, token: string): Promise<boolean>;
  /** Extends either side. */
  extend(resource: string, token: string, ttl?: number): Promise<boolean>;
  /** Takes the read side (shared with readers); `null` if a writer holds or waits for it. */
  acquireRead(resource: string, opts?: AcquireOptions): Promise<Lease | null>;
  /** Takes the write side (alone); `null` if anybody holds it. */
  acquireWrite(resource: string, opts?: AcquireOptions): Promise<Lease | null>;
  /** `using` on the read side. */
  usingRead<T>(resource: string, fn: (signal: AbortSignal, lease: Lease) => T | PromiseLike<T>, opts?: AcquireOptions): Promise<T>;
  /** `using` on the write side. */
  usingWrite<T>(resource: string, fn: (signal: AbortSignal, lease: Lease) => T | PromiseLike<T>, opts?: AcquireOptions): Promise<T>;
  /** Holders of `resource` now: 1 while a writer holds it, else the live readers. */
  count(resource: string): Promise<number>;
}

/** v2: durations in ms over the last `windowMs` (at most the last 1,024 samples). */
export interface DurationSummary {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/** v2: what `lock.metrics()` returns. */
export interface LockMetrics {
  /** Acquires that took the lock (acquire, acquireLease, using). */
  acquired: number;
  /** Acquires that found it held after every attempt allowed. */
  refused: number;
  /** Calls that rejected with an error from Redis or the connection (bad arguments not counted). */
  errors: number;
  /** Releases that deleted the lock. */
  released: number;
  /** Releases that found the lock gone or owned by someone else. */
  releasedNotOwner: number;
  /** `extend` calls that succeeded (auto-extensions are not counted one by one). */
  extended: number;
  /** `extend` calls that found the lock not theirs, plus auto-extensions that failed and were retried. */
  extendFailed: number;
  /** Tracked leases lost, by `LockLostError.kind`. */
  lost: { 'not-owner': number; unreachable: number; expired: number; 'max-hold-time': number; closed: number };
  /** Locks this Lock holds now: granted, not released or lost, and (without autoExtend) within their ttl. */
  held: number;
  /** Acquires waiting now (with retries or a waitTimeout). */
  waiting: number;
  /** From the call to the grant, for acquires that took the lock. */
  waitTime: DurationSummary;
  /** From the grant to a release that deleted the lock. */
  holdTime: DurationSummary;
  /** How far back the summaries look (60000). */
  windowMs: number;
}

/**
 * v2: the context of the tracing channels `simple-distributed-lock:acquire`, `:release`,
 * `:extend`, `:isLocked` and `:using` (Node's `diagnostics_channel.tracingChannel`). Never holds
 * an owner token or a password: `result` is rebuilt without the token.
 */
export interface TraceContext {
  resource: string;
  /** The Lock's `prefix`. */
  prefix: string;
  /** `host:port` of the server, or the deployment (`cluster ...`, `Redlock over ...`). */
  server: string;
  /** acquire, using: the ttl asked for; extend: the ttl set. */
  ttl?: number;
  /** acquire, using. */
  autoExtend?: boolean;
  /** acquire, using, on a ReadWriteLock: the side taken. */
  side?: 'read' | 'write';
  /**
   * When it ended. acquire: 'granted' | 'refused'; release: 'released' | 'not-owner'; extend:
   * 'extended' | 'not-owner'; isLocked: 'held' | 'free'; using: 'completed' (fn returned and the
   * lock was released); every one: 'error' (`error` holds it).
   */
  outcome?: 'granted' | 'refused' | 'released' | 'not-owner' | 'extended' | 'held' | 'free' | 'completed' | 'error';
  /** acquire, using: attempts sent to Redis. */
  attempts?: number;
  /** acquire, using: ms from the call to the grant or refusal. */
  waitedMs?: number;
  /** acquire, using: the fence granted, or `null`. */
  fence?: number | null;
  /** acquire: `{ granted, fence }`; release, extend, isLocked: the boolean resolved. */
  result?: { granted: boolean; fence: number | null } | boolean;
  error?: unknown;
}

/** v2: a message of `simple-distributed-lock:lost`. */
export interface LostMessage {
  resource: string;
  prefix: string;
  server: string;
  kind: 'not-owner' | 'unreachable' | 'expired' | 'max-hold-time';
  message: string;
}

/** v2: a message of `simple-distributed-lock:extend-failed` (one per lease whose auto-extension failed). */
export interface ExtendFailedMessage {
  resource: string;
  prefix: string;
  server: string;
  error: string;
  /** When it is tried again (while the lease lasts). */
  retryInMs: number;
}

/** v2: a message of `simple-distributed-lock:connection`. */
export interface ConnectionMessage {
  event: 'opened' | 'reopened' | 'broken' | 'connect-failed' | 'script-reloaded' | 'redirected' | 'cluster-retry' | 'master-switched';
  /** `host:port` of the server concerned. */
  server: string;
  /** It concerns the auto-extension connection (apart from the calls' own). */
  background: boolean;
  /** One line, as the debug log prints it. */
  message: string;
  error?: string;
  retryInMs?: number;
  /** `redirected`: where to, the slot, and whether it was ASK (else MOVED). */
  to?: string;
  slot?: number;
  ask?: boolean;
}

/** v2: a message of `simple-distributed-lock:quorum` (Redlock, one per acquire while subscribed). */
export interface QuorumMessage {
  resource: string;
  prefix: string;
  granted: boolean;
  votes: Array<{ server: string; vote: 'granted' | 'refused' | 'failed' | 'no-answer'; error?: string }>;
}

/** Base class of every error the lock raises about Redis or its own state. */
export declare class LockError extends Error {
  /** A stable code: `ERR_LOCK_...`. */
  readonly code: string;
}
/** Redis could not be reached, or the connection broke. `code`: `ERR_LOCK_CONNECTION`. */
export declare class LockConnectionError extends LockError {}
/** Redis did not answer within `commandTimeout`. `code`: `ERR_LOCK_TIMEOUT`. */
export declare class LockTimeoutError extends LockConnectionError {}
/** Redis refused the credentials (never shown). `code`: `ERR_LOCK_AUTH`. */
export declare class LockAuthError extends LockError {}
/** Redis answered with an error reply (READONLY, OOM, ...). `code`: `ERR_LOCK_REDIS`. */
export declare class LockRedisError extends LockError {}
/** The Lock was closed. `code`: `ERR_LOCK_CLOSED`. */
export declare class LockClosedError extends LockError {}
/** Connection settings that cannot work (bad TLS material). `code`: `ERR_LOCK_CONFIG`. */
export declare class LockConfigError extends LockError {}
/** Something the deployment cannot do (e.g. `replicas` on a cluster or Redlock). `code`: `ERR_LOCK_UNSUPPORTED`. */
export declare class LockUnsupportedError extends LockError {}
/** Redlock: too many masters failed to reach a majority either way; the message names them. `code`: `ERR_LOCK_QUORUM`. */
export declare class LockQuorumError extends LockError {}
/** Too few replicas acknowledged the lock in time; it was released. `code`: `ERR_LOCK_REPLICATION`. */
export declare class LockReplicationError extends LockError {}
/** `using()` could not acquire the lock. `code`: `ERR_LOCK_NOT_ACQUIRED`. */
export declare class LockAcquireError extends LockError {
  readonly resource: string;
  /** v2: attempts sent to Redis (0 when the wait ended before this caller's turn came). */
  readonly attempts: number;
  /** v2: ms from the call to giving up. */
  readonly waitedMs: number;
}
/** A held lock was lost. `code`: `ERR_LOCK_LOST`. */
export declare class LockLostError extends LockError {
  readonly resource: string;
  readonly token: string;
  /**
   * 'not-owner': an extend found another owner or no key. 'unreachable': no extend succeeded
   * before the deadline. 'expired': a lease without autoExtend reached its deadline.
   * 'max-hold-time': auto-extension stopped after maxHoldTime and the deadline passed.
   * 'released': from `lease.throwIfLost()` after the lease was released.
   * 'closed': the Lock was closed while the lease was held.
   */
  readonly kind: 'not-owner' | 'unreachable' | 'expired' | 'max-hold-time' | 'released' | 'closed';
}

declare global {
  interface SymbolConstructor {
    /** Declared here too so the types work without TypeScript's `esnext.disposable` lib. */
    readonly asyncDispose: unique symbol;
  }
}

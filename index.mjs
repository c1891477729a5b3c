// ES module entry: the CommonJS implementation, re-exported by name.
import lib from './index.js';

export const {
  Lock,
  Semaphore,
  ReadWriteLock,
  LockError,
  LockConnectionError,
  LockTimeoutError,
  LockAuthError,
  LockRedisError,
  LockClosedError,
  LockConfigError,
  LockUnsupportedError,
  LockQuorumError,
  LockReplicationError,
  LockAcquireError,
  LockLostError,
} = lib;

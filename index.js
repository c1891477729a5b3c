'use strict';
// The one implementation behind both `require` and `import` (index.mjs re-exports this), so
// `instanceof` checks work whichever way a module loaded the package.

const { Lock } = require('./lib/lock');
const { Semaphore } = require('./lib/semaphore');
const { ReadWriteLock } = require('./lib/read-write-lock');
const errors = require('./lib/errors');

module.exports = {
  Lock,
  Semaphore,
  ReadWriteLock,
  LockError: errors.LockError,
  LockConnectionError: errors.LockConnectionError,
  LockTimeoutError: errors.LockTimeoutError,
  LockAuthError: errors.LockAuthError,
  LockRedisError: errors.LockRedisError,
  LockClosedError: errors.LockClosedError,
  LockConfigError: errors.LockConfigError,
  LockUnsupportedError: errors.LockUnsupportedError,
  LockQuorumError: errors.LockQuorumError,
  LockReplicationError: errors.LockReplicationError,
  LockAcquireError: errors.LockAcquireError,
  LockLostError: errors.LockLostError,
};

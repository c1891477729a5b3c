// @ts-check
'use strict';
// `status` and `release`: for scripts and operators.

const { duration } = require('./output');
const { lockDetails } = require('./probe');

const EXIT_UNAVAILABLE = 69;

/**
 * Held or free (from the library, on every deployment); on one server also the remaining TTL,
 * the holder's token and the fence (from probe.js, since the library has no query for them).
 * Exit code 0 free, 1 held.
 * @param {import('./args').StatusArgs} a
 * @param {import('../lock').Lock} lock
 * @param {import('./output').Reporter} out results, on stdout
 * @param {import('./output').Reporter} err problems, on stderr
 * @returns {Promise<number>}
 */
async function status(a, lock, out, err) {
  const { resource } = a;
  let held;
  try {
    held = await lock.isLocked(resource);
  } catch (error) {
    err.error(error, { resource });
    return EXIT_UNAVAILABLE;
  }
  /** @type {import('./probe').Details | null} */
  let details = null;
  if (a.target.kind === 'single') {
    details = await lockDetails(/** @type {string} */ (a.target.spec), a.prefix, resource).catch(() => null);
    // Between the two queries the lock may have changed hands; the library's answer stands.
    if (details && held !== (details.token !== null)) details = { ttlMs: null, token: null, fence: details.fence };
  }
  const fields = { resource, held, ttlMs: details?.ttlMs ?? null, token: details?.token ?? null, fence: details?.fence ?? null };
  /** @type {string[]} */
  const facts = [];
  if (held && details?.token) facts.push(`token ${details.token}`, details.ttlMs === null ? 'no expiry' : `expires in ${duration(details.ttlMs)}`);
  if (details?.fence != null) facts.push(held ? `fence ${details.fence}` : `last fence ${details.fence}`);
  out.event('status', fields, `"${resource}": ${held ? 'held' : 'free'}${facts.length ? ` (${facts.join(', ')})` : ''}`, { plain: true });
  return held ? 1 : 0;
}

/**
 * Releases the lock if the token owns it: exit code 0 released, 1 not.
 * @param {import('./args').ReleaseArgs} a
 * @param {import('../lock').Lock} lock
 * @param {import('./output').Reporter} out
 * @param {import('./output').Reporter} err
 * @returns {Promise<number>}
 */
async function release(a, lock, out, err) {
  const { resource } = a;
  let released;
  try {
    released = await lock.release(resource, a.token);
  } catch (error) {
    err.error(error, { resource });
    return EXIT_UNAVAILABLE;
  }
  if (released) {
    out.event('released', { resource, released }, `"${resource}": released`, { plain: true });
    return 0;
  }
  if (out.json) out.event('released', { resource, released }, null);
  else err.event('released', { resource, released }, `"${resource}" was not released: that token does not hold it (expired, released, or another owner's)`);
  return 1;
}

module.exports = { status, release };

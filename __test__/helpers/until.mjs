// @ts-check
// Polling for a condition, for tests that wait on something asynchronous to become true.

import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Polls `condition` every 10 ms until it holds; rejects after `timeoutMs`, naming `what`.
 * @param {string} what @param {number} timeoutMs @param {() => boolean | Promise<boolean>} condition
 */
export async function until(what, timeoutMs, condition) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

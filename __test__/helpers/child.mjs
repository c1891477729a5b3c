// @ts-check
// Runs a fixture in a child Node process, with the event-loop transport on or off, so that a
// crash shows as a failed test with the child's signal, never as a dead test runner.

import { spawn } from 'node:child_process';

/**
 * @typedef {object} ChildResult
 * @property {number | null} code
 * @property {NodeJS.Signals | null} signal e.g. SIGABRT, SIGSEGV
 * @property {string} stdout
 * @property {string} stderr
 * @property {boolean} killed killed by us after `limitMs`
 */

/**
 * @param {string} script the fixture's path
 * @param {unknown} config given to it as JSON in argv
 * @param {'on' | 'off'} lane
 * @param {number} limitMs
 * @returns {Promise<ChildResult>}
 */
export function runChild(script, config, lane, limitMs) {
  const env = { ...process.env };
  if (lane === 'off') env.SDL_EVENT_LOOP_LANE = '0';
  else delete env.SDL_EVENT_LOOP_LANE;
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [script, JSON.stringify(config)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let killed = false;
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      killed = true;
      child.kill('SIGKILL');
    }, limitMs);
    // 'close', not 'exit': 'exit' can come before the last of stdout is read.
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, killed });
    });
  });
}

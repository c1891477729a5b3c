// @ts-check
// Runs worker processes and waits for all of them, failing on a non-zero exit.

import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * @param {string} script path relative to __test__/fixtures
 * @param {unknown[]} configs one worker per config, given as JSON in argv
 * @param {number} [timeoutMs]
 */
export async function runWorkers(script, configs, timeoutMs = 60000) {
  const path = fileURLToPath(new URL(`../fixtures/${script}`, import.meta.url));
  return Promise.all(
    configs.map(
      (config) =>
        new Promise((resolve, reject) => {
          const child = spawn(process.execPath, [path, JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'pipe'] });
          let output = '';
          child.stdout.on('data', (d) => (output += d));
          child.stderr.on('data', (d) => (output += d));
          const timer = setTimeout(() => {
            child.kill('SIGKILL');
            reject(new Error(`worker timed out after ${timeoutMs} ms: ${output}`));
          }, timeoutMs);
          // 'close', not 'exit': 'exit' can come before the last of stdout is read.
          child.on('close', (code, signal) => {
            clearTimeout(timer);
            if (code === 0) resolve(output);
            else reject(new Error(`worker exited with ${code ?? signal}: ${output}`));
          });
        }),
    ),
  );
}

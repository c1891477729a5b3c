// @ts-check
// The bench's own redis-server processes: free ports (never 6379), no persistence, optionally
// pinned to one CPU with taskset, all killed when the bench exits (also on Ctrl-C or failure).

import { spawn, spawnSync } from 'node:child_process';
import { createServer, connect } from 'node:net';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** @type {Set<import('node:child_process').ChildProcess>} */
const live = new Set();
/** Temporary directories (certificates, cluster and sentinel files), removed by killAll. @type {Set<string>} */
const dirs = new Set();

/**
 * Kills every process started through `track` (redis-servers and bench children) and removes
 * the bench's temporary directories. Synchronous: safe in 'exit'.
 */
export function killAll() {
  for (const child of live) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  live.clear();
  for (const dir of dirs) removeDir(dir);
}

/** A fresh temporary directory, removed when the bench exits (or by removeDir). @param {string} prefix */
export function tempDir(prefix) {
  const dir = mkdtempSync(join(tmpdir(), `sdl-bench-${prefix}-`));
  dirs.add(dir);
  return dir;
}

/** @param {string} dir */
export function removeDir(dir) {
  rmSync(dir, { recursive: true, force: true });
  dirs.delete(dir);
}

/** @param {import('node:child_process').ChildProcess} child */
export function track(child) {
  live.add(child);
  child.once('exit', () => live.delete(child));
  return child;
}

/** @returns {Promise<number>} a port that was free a moment ago (never 6379) */
export async function freePort() {
  for (;;) {
    const port = await new Promise((resolve, reject) => {
      const server = createServer();
      server.unref();
      server.on('error', reject);
      server.listen(0, '127.0.0.1', () => {
        const address = server.address();
        const p = typeof address === 'object' && address ? address.port : 0;
        server.close(() => resolve(p));
      });
    });
    if (port !== 6379) return /** @type {number} */ (port);
  }
}

/** @param {number} port */
function portOpen(port) {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/**
 * The CPUs a process may run on, from /proc (Linux), e.g. "1" or "0-1".
 * @param {number | 'self'} pid
 * @returns {string}
 */
export function cpusAllowed(pid) {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    return /Cpus_allowed_list:\s*(\S+)/.exec(status)?.[1] ?? '?';
  } catch {
    return '?';
  }
}

/**
 * The command to start `argv` pinned to `cpu` (taskset), or unpinned.
 * @param {string[]} argv
 * @param {number | null} cpu
 * @returns {[string, string[]]}
 */
export function pinned(argv, cpu) {
  if (cpu === null) return [argv[0], argv.slice(1)];
  return ['taskset', ['-c', String(cpu), ...argv]];
}

/** Pins this very process (and so what it starts later, unless pinned elsewhere) to `cpu`. @param {number} cpu */
export function pinSelf(cpu) {
  const result = spawnSync('taskset', ['-cp', String(cpu), String(process.pid)], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`taskset -cp ${cpu} ${process.pid} failed: ${result.stderr || result.error}`);
}

/**
 * A plain redis-server's arguments: TCP on `port` of 127.0.0.1, no persistence.
 * @param {number} port @returns {string[]}
 */
export function plainArgs(port) {
  return ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--loglevel', 'warning'];
}

export class RedisServer {
  /** @param {number} port @param {import('node:child_process').ChildProcess} child */
  constructor(port, child) {
    this.port = port;
    this.child = child;
  }

  /**
   * Starts `redis-server` with `args(port)` on a free port and waits until the port accepts
   * connections (a TLS port does too). A port taken meanwhile is retried with another.
   * @param {{ cpu: number | null, args?: (port: number) => string[] }} options cpu: pin the server
   *   to this CPU; args: its arguments for a port (default plainArgs)
   * @returns {Promise<RedisServer>}
   */
  static async start({ cpu, args: argsFor = plainArgs }) {
    for (let attempt = 0; ; attempt++) {
      const port = await freePort();
      const args = ['redis-server', ...argsFor(port)];
      const [command, rest] = pinned(args, cpu);
      const child = track(spawn(command, rest, { stdio: ['ignore', 'ignore', 'inherit'] }));
      const started = Date.now();
      let exited = false;
      child.once('exit', () => (exited = true));
      while (!exited && Date.now() - started < 5000) {
        if (await portOpen(port)) return new RedisServer(port, child);
        await new Promise((r) => setTimeout(r, 20));
      }
      child.kill('SIGKILL');
      if (attempt >= 2) throw new Error(`redis-server did not start on port ${port}`);
    }
  }

  /** The CPUs the server may run on (to verify pinning). */
  cpus() {
    return this.child.pid ? cpusAllowed(this.child.pid) : '?';
  }

  async stop() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 2000))]);
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

/**
 * Redis CPU seconds (user + sys, process-wide) from INFO cpu.
 * @param {string} info
 * @returns {number}
 */
export function redisCpuSeconds(info) {
  const user = Number(/used_cpu_user:([\d.]+)/.exec(info)?.[1]);
  const sys = Number(/used_cpu_sys:([\d.]+)/.exec(info)?.[1]);
  return user + sys;
}

/**
 * Calls per command from INFO commandstats (commands run by Lua scripts count too).
 * @param {string} info
 * @returns {Record<string, number>}
 */
export function commandCalls(info) {
  /** @type {Record<string, number>} */
  const calls = {};
  for (const match of info.matchAll(/cmdstat_([\w|]+):calls=(\d+)/g)) calls[match[1]] = Number(match[2]);
  return calls;
}

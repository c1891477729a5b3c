// @ts-check
// How busy the machine was with work other than the bench's own, during each measurement:
// all CPUs' busy time (/proc/stat) minus the CPU of the bench's processes (the child(ren), the
// redis-servers, this process). On a shared 2-core machine this is the noise indicator that
// goes with every number. Hypervisor steal time is reported beside it.

import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

const HZ = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim()) || 100;

function systemJiffies() {
  const [user, nice, system, , , irq, softirq, steal] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return { busy: user + nice + system + irq + softirq, steal: steal ?? 0 };
}

/** CPU seconds a live process has used (utime + stime), 0 if it is gone. @param {number | undefined} pid */
function processCpuSeconds(pid) {
  if (!pid) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / HZ;
  } catch {
    return 0;
  }
}

export class LoadProbe {
  /** @param {Array<number | undefined>} serverPids the bench's redis-servers */
  constructor(serverPids) {
    this.serverPids = serverPids;
    this.sys = systemJiffies();
    this.servers = this.#serversCpu();
    this.self = process.cpuUsage();
    this.t = process.hrtime.bigint();
  }

  #serversCpu() {
    let sum = 0;
    for (const pid of this.serverPids) sum += processCpuSeconds(pid);
    return sum;
  }

  /**
   * @param {number} childCpuSeconds CPU the measuring child process(es) used in all
   * @returns {{ otherLoadCpus: number, stealCpus: number }} in CPUs (1 = one core fully busy)
   */
  stop(childCpuSeconds) {
    const seconds = Number(process.hrtime.bigint() - this.t) / 1e9;
    const sys = systemJiffies();
    const servers = this.#serversCpu() - this.servers;
    const self = process.cpuUsage(this.self);
    const ours = childCpuSeconds + servers + (self.user + self.system) / 1e6;
    const busy = (sys.busy - this.sys.busy) / HZ;
    return {
      otherLoadCpus: Math.max(0, busy - ours) / seconds,
      stealCpus: (sys.steal - this.sys.steal) / HZ / seconds,
    };
  }
}

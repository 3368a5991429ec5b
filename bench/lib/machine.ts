/** The machine a run was made on, printed first and written with the results. */
import { readFileSync } from 'node:fs';
import * as os from 'node:os';
import { version } from './child.js';

export interface Machine {
  host: string;
  kernel: string;
  cpus: string;
  memory: string;
  node: string;
  cgroups: string;
  user: string;
  tools: Record<string, string>;
  load: string;
}

function read(p: string): string {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

/** v2, v1 or hybrid, from the mounts, with what the unified hierarchy carries on a hybrid host. */
export function cgroupLayout(): string {
  const mounts = read('/proc/self/mounts').split('\n').map((l) => l.split(' '));
  const v2 = mounts.filter((m) => m[2] === 'cgroup2').map((m) => m[1]!);
  const v1 = mounts.filter((m) => m[2] === 'cgroup').map((m) => m[1]!);
  if (v2.length > 0 && v1.length === 0) {
    const c = read(`${v2[0]}/cgroup.controllers`).trim();
    return `v2 (${v2[0]}; controllers: ${c || 'none'})`;
  }
  if (v2.length === 0) return `v1 (${v1.length} hierarchies)`;
  const c = read(`${v2[0]}/cgroup.controllers`).trim();
  return `hybrid: ${v1.length} v1 hierarchies + cgroup2 at ${v2[0]} (controllers: ${c || 'none'})`;
}

export function loadAverage(): string {
  return os.loadavg().map((l) => l.toFixed(2)).join(' ');
}

export function describeMachine(): Machine {
  const cpus = os.cpus();
  const model = cpus[0]?.model?.trim() ?? 'unknown';
  const mem = read('/proc/meminfo');
  const total = Number(/MemTotal:\s+(\d+)/.exec(mem)?.[1] ?? 0) * 1024;
  const tools: Record<string, string> = {};
  const probe: [string, string, string[]][] = [
    ['bwrap', 'bwrap', ['--version']],
    ['crun', 'crun', ['--version']],
    ['runc', 'runc', ['--version']],
    ['unshare', 'unshare', ['--version']],
  ];
  for (const [name, cmd, args] of probe) tools[name] = version(cmd, args) ?? 'not installed';
  return {
    host: os.hostname().split('.')[0] ?? 'host',
    kernel: `${os.type()} ${os.release()} ${os.arch()}`,
    cpus: `${cpus.length} × ${model}`,
    memory: `${(total / 2 ** 30).toFixed(1)} GiB`,
    node: process.version,
    cgroups: cgroupLayout(),
    user: process.geteuid?.() === 0 ? 'root' : `uid ${process.geteuid?.()}`,
    tools,
    load: loadAverage(),
  };
}

export function machineLines(m: Machine): string[] {
  return [
    `- host: ${m.host}`,
    `- kernel: ${m.kernel}`,
    `- CPUs: ${m.cpus}`,
    `- memory: ${m.memory}`,
    `- node: ${m.node}`,
    `- cgroups: ${m.cgroups}`,
    `- running as: ${m.user}`,
    `- tools: ${Object.entries(m.tools).map(([k, v]) => `${k} = ${v}`).join('; ')}`,
    `- load average at start (1/5/15 min): ${m.load}`,
  ];
}

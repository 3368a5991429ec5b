/**
 * Host memory per idle sandbox: N busybox sandboxes created and left idle (init waiting),
 * then measured from three sides:
 * - init's own pages (/proc/<pid>/status VmRSS and smaps_rollup Pss). init is a static binary
 *   exec'd from a memfd, so its text is shared shmem: RSS counts it in every sandbox, PSS
 *   divides it among them.
 * - each sandbox's cgroup (memory.usage_in_bytes on v1, memory.current on v2): what the
 *   kernel charges to the sandbox (its processes, the scratch tmpfs, kernel objects charged
 *   to the cgroup).
 * - the whole machine: the change of MemAvailable, Slab and PageTables across the creation,
 *   which also catches kernel objects charged to nobody (namespaces, mounts) and this Node
 *   process's own bookkeeping (reported separately from its RSS).
 */
import { readFileSync } from 'node:fs';
import { Sandbox } from '../../lib/index.js';
import { defer } from './cleanup.js';
import type { BenchContext } from './latency.js';
import type { MemorySection } from './results.js';

function meminfo(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readFileSync('/proc/meminfo', 'utf8').split('\n')) {
    const m = /^(\w+):\s+(\d+)(?: kB)?/.exec(line);
    if (m) out[m[1]!] = Number(m[2]) * (line.endsWith('kB') ? 1024 : 1);
  }
  return out;
}

function statusField(pid: number, field: string): number {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

export function pss(pid: number): number {
  try {
    const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

let cgroupMounts: { v1memory: string | null; v2: string | null } | undefined;

/** Bytes charged to the cgroup `pid` is in (memory controller), NaN when unreadable. */
export function cgroupBytes(pid: number): number {
  cgroupMounts ??= (() => {
    let v1memory: string | null = null;
    let v2: string | null = null;
    for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
      const f = line.split(' ');
      if (f[2] === 'cgroup' && f[3]?.split(',').includes('memory')) v1memory ??= f[1]!;
      if (f[2] === 'cgroup2') v2 ??= f[1]!;
    }
    return { v1memory, v2 };
  })();
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
  } catch {
    return NaN;
  }
  const read = (p: string) => {
    try {
      return Number(readFileSync(p, 'utf8').trim());
    } catch {
      return NaN;
    }
  };
  for (const line of text.split('\n')) {
    const [, ctrl, path] = /^\d+:([^:]*):(.*)$/.exec(line) ?? [];
    if (ctrl === undefined || path === undefined) continue;
    if (cgroupMounts.v1memory && ctrl.split(',').includes('memory')) return read(`${cgroupMounts.v1memory}${path}/memory.usage_in_bytes`);
  }
  for (const line of text.split('\n')) {
    if (line.startsWith('0::') && cgroupMounts.v2) return read(`${cgroupMounts.v2}${line.slice(3)}/memory.current`);
  }
  return NaN;
}

async function inBatches<T>(items: number, concurrency: number, make: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  let next = 0;
  const worker = async () => {
    while (next < items) {
      const i = next++;
      out[i] = await make(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items) }, worker));
  return out;
}

const mean = (xs: number[]) => {
  const ok = xs.filter(Number.isFinite);
  return ok.length === 0 ? NaN : ok.reduce((a, b) => a + b, 0) / ok.length;
};

export async function memory(ctx: BenchContext): Promise<MemorySection> {
  const n = ctx.args.sandboxes;
  const notes: string[] = [];
  global.gc?.();
  await new Promise((r) => setTimeout(r, 500));
  const before = meminfo();
  const rssBefore = process.memoryUsage().rss;
  const live: Sandbox[] = [];
  const undo = defer('memory sandboxes', () => Promise.all(live.splice(0).map((s) => s.destroy().catch(() => undefined))));
  const t0 = performance.now();
  let created = 0;
  try {
    await inBatches(n, 4, async () => {
      const sb = await Sandbox.create({ image: 'busybox' });
      live.push(sb);
      if (++created % 50 === 0) process.stderr.write(`\r  memory: ${created}/${n} sandboxes`);
      return sb;
    });
  } catch (e) {
    notes.push(`stopped after ${live.length} sandboxes: ${(e as Error).message}`);
  }
  const createSeconds = (performance.now() - t0) / 1000;
  process.stderr.write(`\r  memory: ${live.length}/${n} sandboxes created in ${createSeconds.toFixed(1)} s\n`);
  await new Promise((r) => setTimeout(r, 1000));
  const after = meminfo();
  const rssAfter = process.memoryUsage().rss;
  const k = live.length;
  const rss = live.map((s) => statusField(s.pid, 'VmRSS'));
  const shmem = live.map((s) => statusField(s.pid, 'RssShmem'));
  const anon = live.map((s) => statusField(s.pid, 'RssAnon'));
  const pssV = live.map((s) => pss(s.pid));
  const cg = live.map((s) => cgroupBytes(s.pid));
  const t1 = performance.now();
  await undo();
  const destroySeconds = (performance.now() - t1) / 1000;
  const delta = (key: string, sign = 1) => (k === 0 ? NaN : (sign * ((after[key] ?? NaN) - (before[key] ?? NaN))) / k);
  if (cg.every((v) => !Number.isFinite(v))) notes.push('no memory cgroup readable for the sandboxes (no memory controller?)');
  notes.push('MemAvailable moves with everything else on the machine (page cache, other processes): read it as an estimate; run with more sandboxes (--sandboxes 1000) to shrink the noise per sandbox');
  return {
    kind: 'memory',
    title: `Memory per idle sandbox (${k} idle busybox sandboxes)`,
    description: 'N sandboxes created (4 at a time) and left idle; figures are per sandbox.',
    sandboxes: k,
    createSeconds,
    destroySeconds,
    perSandbox: [
      { label: 'init VmRSS', bytes: mean(rss), how: '/proc/<init>/status VmRSS, mean (counts the shared memfd text in full each time)' },
      { label: 'init RssAnon', bytes: mean(anon), how: '/proc/<init>/status RssAnon, mean: the private part' },
      { label: 'init RssShmem', bytes: mean(shmem), how: '/proc/<init>/status RssShmem, mean: the memfd-backed binary, shared' },
      { label: 'init PSS', bytes: mean(pssV), how: '/proc/<init>/smaps_rollup Pss, mean: shared pages divided among sharers' },
      { label: 'cgroup memory', bytes: mean(cg), how: 'memory.usage_in_bytes (v1) / memory.current (v2) of the sandbox cgroup, mean' },
      { label: 'host MemAvailable drop', bytes: delta('MemAvailable', -1), how: '(MemAvailable before - after) / N' },
      { label: 'host Slab growth', bytes: delta('Slab'), how: '(Slab after - before) / N: kernel objects (namespaces, mounts, inodes, sockets)' },
      { label: 'host PageTables growth', bytes: delta('PageTables'), how: '(PageTables after - before) / N' },
      { label: 'Node process RSS growth', bytes: k === 0 ? NaN : (rssAfter - rssBefore) / k, how: "this process's RSS change / N: hutch's JS-side state per sandbox" },
    ],
    notes,
  };
}

/**
 * `npm run bench:live -- --n 10000`: N live idle sandboxes (busybox, default limits, network
 * 'none') created one after another and left running, then all destroyed (issue 18).
 *
 * - create time per bucket of `--bucket` creates (p50, p99), with `spawn('/bin/true')` sampled
 *   every 10th create as the control for the machine's load: flat means the last bucket's
 *   p50 ÷ spawn's is the first's;
 * - host memory per sandbox, three ways, each (after − before) ÷ N: the hosts's MemAvailable
 *   drop (everything, kernel objects charged to nobody included; moved by other work too),
 *   Slab + PageTables + KernelStack growth (kernel side), and the memory charged to the bench's
 *   own cgroup parent (v1 memory.usage_in_bytes / v2 memory.current: what the sandboxes'
 *   cgroups are charged, hierarchically);
 * - what else grows per sandbox: the Node process's fds and RSS, the host's pids, the host's
 *   mount table (the sandboxes' mounts live in their own namespaces: it should not grow);
 * - the end: every sandbox destroyed, then checked that nothing is left: no cgroup directory
 *   under the bench's parent in any hierarchy, no store record, no host-wide lease, fds and
 *   pids back to where they were.
 *
 * A host limit that N would cross (the process's RLIMIT_NOFILE, kernel.pid_max against the
 * pids in use, user.max_user_namespaces) is raised when it is the process's own (RLIMIT_NOFILE,
 * with util-linux prlimit: root may raise the hard limit) and said; a machine-wide one lowers
 * N, and says why. Uses its own cgroup parent (removed at the end) and HUTCH_ROOT's store.
 *
 * Flags: --n N (1000), --bucket B (N/10, at most 1000), --concurrency C (1: creates one at a
 * time, so the time of one is not another's), --memory-accounting sandbox|shared (the
 * sandboxes' limits.memoryAccounting; default: hutch's default, 'shared' without a memory
 * limit; 'sandbox' gives each a memory cgroup of its own, as every sandbox had before issue
 * 18's change), --no-write.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ImageStore, Sandbox } from '../lib/index.js';
import { ms, summarize } from './lib/stats.js';
import { SHARED_MEMCG } from '../lib/cgroup/types.js';

const { values } = parseArgs({
  options: {
    n: { type: 'string', default: '1000' },
    bucket: { type: 'string' },
    concurrency: { type: 'string', default: '1' },
    'memory-accounting': { type: 'string' },
    'no-write': { type: 'boolean', default: false },
  },
});
let N = Number(values.n);
const C = Math.max(1, Number(values.concurrency));
const ACCT = values['memory-accounting'];
if (ACCT !== undefined && ACCT !== 'sandbox' && ACCT !== 'shared') throw new Error(`--memory-accounting: 'sandbox' or 'shared', not ${ACCT}`);
const LIMITS = ACCT === undefined ? {} : { limits: { memoryAccounting: ACCT as 'sandbox' | 'shared' } };
const parent = `/hutch-bench-live-${process.pid}`;
process.env.HUTCH_CGROUP_PARENT = parent;

const out: string[] = [];
const say = (s = '') => {
  out.push(s);
  process.stdout.write(s + '\n');
};
const note = (s: string) => process.stderr.write(s + '\n');

function meminfo(): Record<string, number> {
  const m: Record<string, number> = {};
  for (const line of readFileSync('/proc/meminfo', 'utf8').split('\n')) {
    const r = /^(\w+):\s+(\d+) kB/.exec(line);
    if (r) m[r[1]!] = Number(r[2]) * 1024;
  }
  return m;
}
const readNum = (p: string): number => {
  try {
    return Number(readFileSync(p, 'utf8').trim());
  } catch {
    return NaN;
  }
};
const count = (dir: string): number => {
  try {
    return readdirSync(dir).length;
  } catch {
    return 0;
  }
};
function limitOf(name: string): { soft: number; hard: number } {
  const line = readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith(name))!;
  const [soft, hard] = line.slice(name.length).trim().split(/\s+/);
  const n = (s: string | undefined) => (s === 'unlimited' ? Infinity : Number(s));
  return { soft: n(soft), hard: n(hard) };
}
const hostPids = (): number => readdirSync('/proc').filter((n) => /^\d+$/.test(n)).length;
const hostThreads = (): number => Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[3]!.split('/')[1]);
const mountCount = (): number => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').length - 1;
const fdCount = (): number => count('/proc/self/fd');
/** Bytes per slab cache (active objects × object size), from /proc/slabinfo (root only). */
function slabs(): Map<string, number> {
  const m = new Map<string, number>();
  try {
    for (const line of readFileSync('/proc/slabinfo', 'utf8').split('\n').slice(2)) {
      const f = line.trim().split(/\s+/);
      if (f.length > 3) m.set(f[0]!, Number(f[1]) * Number(f[3]));
    }
  } catch {}
  return m;
}

/** The cgroup mounts, and the bench's parent directory in each. */
function cgroupDirs(): { memory: string | null; all: string[] } {
  const all: string[] = [];
  let memory: string | null = null;
  for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f[2] !== 'cgroup' && f[2] !== 'cgroup2') continue;
    const d = `${f[1]}${parent}`;
    all.push(d);
    if (f[2] === 'cgroup' && f[3]!.split(',').includes('memory')) memory = d;
    if (f[2] === 'cgroup2' && memory === null && existsSync(`${f[1]}/cgroup.controllers`) && readFileSync(`${f[1]}/cgroup.controllers`, 'utf8').includes('memory')) memory = d;
  }
  return { memory, all };
}
const chargedBytes = (dir: string | null): number => (dir === null ? NaN : existsSync(`${dir}/memory.usage_in_bytes`) ? readNum(`${dir}/memory.usage_in_bytes`) : readNum(`${dir}/memory.current`));

/** Mean PSS of up to 100 of the sandboxes' inits, spread over the creation order, bytes. */
function meanInitPss(sbs: readonly Sandbox[]): { mean: number; n: number } {
  const step = Math.max(1, Math.floor(sbs.length / 100));
  const got: number[] = [];
  for (let i = 0; i < sbs.length; i += step) {
    try {
      const m = /^Pss:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${sbs[i]!.pid}/smaps_rollup`, 'utf8'));
      if (m) got.push(Number(m[1]) * 1024);
    } catch {}
  }
  return { mean: got.length ? got.reduce((a, b) => a + b, 0) / got.length : NaN, n: got.length };
}

const spawnTrue = (): Promise<void> =>
  new Promise((resolve, reject) => {
    const c = spawn('/bin/true', { stdio: 'ignore' });
    c.once('error', reject);
    c.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`/bin/true exited ${code}`))));
  });

const MiB = 1048576;
const mib = (b: number) => (Number.isFinite(b) ? `${(b / MiB).toFixed(3)} MiB` : '–');

async function main(): Promise<void> {
  const t0 = Date.now();
  const store = ImageStore.default();
  await store.resolve('busybox');
  say(`## Live idle sandboxes (bench:live), ${new Date().toISOString()}`);
  say();
  say(`load average at start: ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}; asked for N = ${N}, ${C} create(s) at a time`);
  say();

  // What N would cross, before anything is made.
  const FDS_PER_SANDBOX = 1.2; // the control socket; pidfds and id-range namespaces parked past 256 and 64 live (measured below)
  const nofile = limitOf('Max open files');
  const needFds = Math.ceil(fdCount() + N * FDS_PER_SANDBOX + 512);
  if (nofile.soft < needFds) {
    const to = Math.max(needFds, nofile.hard === Infinity ? needFds : Math.min(nofile.hard, needFds));
    try {
      execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${to}:${Math.max(to, nofile.hard)}`]);
      say(`- RLIMIT_NOFILE raised from ${nofile.soft}:${nofile.hard} to ${limitOf('Max open files').soft}:${limitOf('Max open files').hard} (prlimit; N × ${FDS_PER_SANDBOX} fds and room)`);
    } catch (e) {
      const room = Math.floor((nofile.soft - fdCount() - 256) / FDS_PER_SANDBOX);
      say(`- RLIMIT_NOFILE ${nofile.soft} could not be raised (${(e as Error).message.split('\n')[0]}): N lowered from ${N} to ${room}`);
      N = room;
    }
  }
  const pidMax = readNum('/proc/sys/kernel/pid_max');
  const threadsNow = hostThreads();
  const pidRoom = pidMax - threadsNow - 2000; // leave the machine's other users 2,000
  if (N > pidRoom) {
    say(`- kernel.pid_max ${pidMax} with ${threadsNow} tasks running leaves room for ${pidRoom} sandboxes (one pid each, and 2,000 kept for everyone else): N lowered from ${N}`);
    N = pidRoom;
  }
  const usernsMax = readNum('/proc/sys/user/max_user_namespaces');
  if (N * 2 + 100 > usernsMax) {
    say(`- user.max_user_namespaces ${usernsMax}: two per sandbox (its own, its layers' idmap): N lowered from ${N}`);
    N = Math.floor((usernsMax - 100) / 2);
  }
  const B = Number(values.bucket ?? Math.min(1000, Math.max(1, Math.ceil(N / 10))));

  const cg = cgroupDirs();
  const recordsDir = join(store.root, 'sandboxes');
  await new Promise((r) => setTimeout(r, 500));
  const before = { slabs: slabs(), mem: meminfo(), charged: 0, fds: fdCount(), rss: process.memoryUsage().rss, pids: hostThreads(), mounts: mountCount(), records: count(recordsDir), leases: count('/run/hutch/ids') };

  const alive: Sandbox[] = [];
  const buckets: { upTo: number; create: number[]; spawn: number[]; seconds: number; fds: number; mounts: number }[] = [];
  let stopped: string | null = null;
  const tCreate = performance.now();
  try {
    while (alive.length < N && stopped === null) {
      const bucket = { upTo: Math.min(N, alive.length + B), create: [] as number[], spawn: [] as number[], seconds: 0, fds: 0, mounts: 0 };
      const tb = performance.now();
      let next = alive.length;
      await Promise.all(
        Array.from({ length: C }, async () => {
          while (next < bucket.upTo && stopped === null) {
            const i = next++;
            const t = performance.now();
            try {
              alive.push(await Sandbox.create({ image: 'busybox', network: 'none', ...LIMITS }));
            } catch (e) {
              stopped ??= `create ${i + 1} failed: ${(e as Error).message}`;
              return;
            }
            bucket.create.push(performance.now() - t);
            if (i % 10 === 0) {
              const s = performance.now();
              await spawnTrue();
              bucket.spawn.push(performance.now() - s);
            }
          }
        }),
      );
      bucket.seconds = (performance.now() - tb) / 1000;
      bucket.fds = fdCount();
      bucket.mounts = mountCount();
      buckets.push(bucket);
      note(`  ${alive.length}/${N} live, last ${bucket.create.length} in ${bucket.seconds.toFixed(1)} s`);
    }
  } catch (e) {
    stopped ??= (e as Error).message;
  }
  const createSeconds = (performance.now() - tCreate) / 1000;
  await new Promise((r) => setTimeout(r, 1000));
  const k = alive.length;
  const after = { slabs: slabs(), mem: meminfo(), charged: chargedBytes(cg.memory), fds: fdCount(), rss: process.memoryUsage().rss, pids: hostThreads(), mounts: mountCount() };
  const initPss = meanInitPss(alive);

  // Destroy all, 16 at a time, and look for anything left.
  const tDestroy = performance.now();
  let destroyFailures = 0;
  for (let i = 0; i < alive.length; i += 16) {
    await Promise.all(alive.slice(i, i + 16).map((sb) => sb.destroy().catch(() => void destroyFailures++)));
  }
  await Sandbox.settle().catch(() => void destroyFailures++);
  const destroySeconds = (performance.now() - tDestroy) / 1000;
  await new Promise((r) => setTimeout(r, 2000));
  const end = { mem: meminfo(), fds: fdCount(), pids: hostThreads(), records: count(recordsDir), leases: count('/run/hutch/ids') };
  // The shared memory cgroup (lib/cgroup/types.ts SHARED_MEMCG) is hutch's, like the parent;
  // on v2 the 'shared' sandboxes' leaves are below it.
  const sandboxDirs = (d: string): number =>
    count(d) === 0 ? 0 : readdirSync(d, { withFileTypes: true }).filter((e) => e.isDirectory()).reduce((n, e) => n + (e.name === SHARED_MEMCG ? sandboxDirs(`${d}/${e.name}`) : 1), 0);
  const leftDirs = cg.all.map((d) => [d, sandboxDirs(d)] as const).filter(([, n]) => n > 0);
  for (const d of cg.all) {
    try {
      if (existsSync(`${d}/${SHARED_MEMCG}`)) rmdirSync(`${d}/${SHARED_MEMCG}`);
      rmdirSync(join(d));
    } catch {}
  }

  if (stopped !== null) say(`- stopped at ${k} live: ${stopped}`);
  say(`limits.memoryAccounting: ${ACCT ?? "hutch's default ('shared': no memory limit)"}`);
  say();
  say(`${k} sandboxes created in ${createSeconds.toFixed(1)} s (${(k / createSeconds).toFixed(0)}/s), destroyed in ${destroySeconds.toFixed(1)} s${destroyFailures ? `, ${destroyFailures} destroy failures` : ''}`);
  say();
  say('### Create time as the live count grows');
  say();
  say(`Sandbox.create p50/p99 per bucket of ${B}; spawn('/bin/true') sampled after every 10th create as the control for the machine's other load.`);
  say();
  say('| live after bucket | creates | bucket s | create p50 ms | create p99 ms | spawn p50 ms | create p50 ÷ spawn p50 | p50 ÷ first bucket\'s | Node fds | host mounts |');
  say('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  const first = buckets[0] ? summarize(buckets[0].create).p50 : NaN;
  const firstRatio = buckets[0] ? summarize(buckets[0].create).p50 / summarize(buckets[0].spawn).p50 : NaN;
  for (const b of buckets) {
    const c = summarize(b.create);
    const s = summarize(b.spawn);
    say(`| ${b.upTo} | ${c.n} | ${b.seconds.toFixed(1)} | ${ms(c.p50)} | ${ms(c.p99)} | ${ms(s.p50)} | ${(c.p50 / s.p50).toFixed(2)}× (${(c.p50 / s.p50 / firstRatio).toFixed(2)}× first) | ${(c.p50 / first).toFixed(2)}× | ${b.fds} | ${b.mounts} |`);
  }
  say();
  say(`### Host memory per live idle sandbox (${k} live)`);
  say();
  say('| measure | total | per sandbox |');
  say('| --- | ---: | ---: |');
  const d = (key: string, sign = 1) => sign * ((after.mem[key] ?? NaN) - (before.mem[key] ?? NaN));
  const row = (name: string, total: number) => say(`| ${name} | ${mib(total)} | ${mib(total / Math.max(1, k))} |`);
  row('MemAvailable drop (the host: all of it, other work included)', d('MemAvailable', -1));
  row('MemFree drop', d('MemFree', -1));
  row('unreclaimable growth: SUnreclaim + PageTables + KernelStack + AnonPages + Shmem', d('SUnreclaim') + d('PageTables') + d('KernelStack') + d('AnonPages') + d('Shmem'));
  row('Slab growth (kernel objects: namespaces, mounts, inodes, sockets)', d('Slab'));
  row('  of which SUnreclaim', d('SUnreclaim'));
  row('PageTables growth', d('PageTables'));
  row('KernelStack growth', d('KernelStack'));
  row(`charged to the bench's cgroup parent (${cg.memory ?? 'no memory controller'})`, after.charged);
  row(`init's PSS (/proc/<pid>/smaps_rollup, mean of ${initPss.n})`, initPss.mean * k);
  row('charged + init PSS', after.charged + initPss.mean * k);
  row('kmalloc-1k growth (shrinker_info of memory cgroups, among others)', (after.slabs.get('kmalloc-1k') ?? NaN) - (before.slabs.get('kmalloc-1k') ?? NaN));
  row('Node process RSS growth (hutch\'s JS state)', after.rss - before.rss);
  say();
  const grown = [...after.slabs].map(([name, b]) => [name, b - (before.slabs.get(name) ?? 0)] as const).sort((a, b) => b[1] - a[1]).slice(0, 12);
  if (grown.length > 0) {
    say('Largest slab caches grown (/proc/slabinfo active objects × size, per sandbox):');
    say();
    say(grown.map(([name, b]) => `${name} ${(b / Math.max(1, k) / 1024).toFixed(1)} KiB`).join(', '));
    say();
  }
  say('### What else grows, and what is left after');
  say();
  say('| | before | with all live | per sandbox | after destroy |');
  say('| --- | ---: | ---: | ---: | ---: |');
  say(`| Node process fds | ${before.fds} | ${after.fds} | ${((after.fds - before.fds) / Math.max(1, k)).toFixed(2)} | ${end.fds} |`);
  say(`| host tasks (/proc/loadavg) | ${before.pids} | ${after.pids} | ${((after.pids - before.pids) / Math.max(1, k)).toFixed(2)} | ${end.pids} |`);
  say(`| host mount table (/proc/self/mountinfo lines) | ${before.mounts} | ${after.mounts} | ${((after.mounts - before.mounts) / Math.max(1, k)).toFixed(4)} | ${mountCount()} |`);
  say(`| store records (${recordsDir}) | ${before.records} | | | ${end.records} |`);
  say(`| host-wide id leases (/run/hutch/ids, all processes) | ${before.leases} | | | ${end.leases} |`);
  say(`| MemAvailable, MiB | ${(before.mem.MemAvailable! / MiB).toFixed(0)} | ${(after.mem.MemAvailable! / MiB).toFixed(0)} | | ${(end.mem.MemAvailable! / MiB).toFixed(0)} |`);
  say();
  say(leftDirs.length === 0 ? `Left after destroy: no cgroup directory under ${parent} in any of ${cg.all.length} hierarchies; store records ${end.records - before.records >= 0 ? `${end.records} (were ${before.records})` : ''}.` : `LEFT after destroy: ${leftDirs.map(([p, n]) => `${n} in ${p}`).join(', ')}`);
  say();
  say(`load average at end: ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}; ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  if (!values['no-write']) {
    const dir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bench', 'results');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'live-latest.md'), out.join('\n') + '\n');
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench:live: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});

/**
 * `npm run bench:cold`: issue 18's figures, each against a peer measured in the same run.
 *
 * - latency: `Sandbox.run` of /bin/true against `child_process.spawn('/bin/true')`, sampled
 *   round-robin (p50, p99, ratio);
 * - CPU per start: at least 400 serial starts of each, in alternating blocks, counted over both
 *   CPUs from /proc/stat (the whole machine: kernel threads' share of a start included, and
 *   anybody else's work too), and from this process's own cgroup2 cpu.stat when it has one
 *   (this process and everything it starts, sandboxes included: the figure other work on the
 *   machine does not move);
 * - starts per second at concurrency 4 and 8, spawn alongside;
 * - `pool.run` back to back against bubblewrap, in alternating blocks, beside the same runs on
 *   a pool that makes nothing during them (what the refill costs the caller), with the runs
 *   that found the pool empty and the CPU per call of each (what two CPUs can sustain);
 * - live idle sandboxes: create time and host memory per sandbox at 1..N live.
 *
 * Nothing is asserted: it prints a markdown report (and writes bench/results/cold-latest.md
 * unless --no-write). Flags: --quick, --n N (serial starts per subject, ≥ 400 unless --quick),
 * --live LIST (e.g. 1,100,1000), --seconds S, --only LIST (latency,cpu,throughput,pool,live).
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ImageStore, Sandbox, type SandboxPool } from '../lib/index.js';
import { cgroupBytes, pss } from './lib/memory.js';
import { ms, ratio, summarize, type Summary } from './lib/stats.js';

const argv = process.argv.slice(2);
const flag = (name: string): string | undefined => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
};
const quick = argv.includes('--quick');
const N = Number(flag('n') ?? (quick ? 100 : 400));
const SECONDS = Number(flag('seconds') ?? (quick ? 1 : 3));
const LIVE = (flag('live') ?? (quick ? '1,50' : '1,100,1000')).split(',').map(Number);
const ONLY = new Set((flag('only') ?? 'latency,cpu,throughput,pool,live').split(','));
const out: string[] = [];
const say = (s = '') => {
  out.push(s);
  process.stdout.write(s + '\n');
};

const spawnTrue = (): Promise<void> =>
  new Promise((resolve, reject) => {
    const c = spawn('/bin/true', { stdio: 'ignore' });
    c.once('error', reject);
    c.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`/bin/true exited ${code}`))));
  });
const hutchRun = async (): Promise<void> => {
  const r = await Sandbox.run({ image: 'busybox', command: ['/bin/true'] });
  if (r.exitCode !== 0) throw new Error(`exit ${r.exitCode}`);
};

/** Busy and total jiffies over all CPUs (the first line of /proc/stat). */
function procStat(): { busy: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  return { busy: total - f[3]! - f[4]!, total };
}
const JIFFY_MS = 10; // USER_HZ is 100 on Linux

/** This process's cgroup2 usage_usec (hierarchical: the sandboxes' leaves sit below it), or null. */
function ownCgroupUsec(): number | null {
  try {
    const rel = /^0::(.*)$/m.exec(readFileSync('/proc/self/cgroup', 'utf8'))![1]!;
    for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
      const f = line.split(' ');
      if (f[2] !== 'cgroup2') continue;
      const m = /^usage_usec (\d+)$/m.exec(readFileSync(`${f[1]}${rel === '/' ? '' : rel}/cpu.stat`, 'utf8'));
      if (m) return rel === '/' ? null : Number(m[1]); // at the root it counts the whole machine
    }
  } catch {
    /* none */
  }
  return null;
}

function loadavg(): string {
  return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
}

async function time(f: () => Promise<void>): Promise<number> {
  const t = performance.now();
  await f();
  return performance.now() - t;
}

function row(name: string, s: Summary, ref?: Summary): string {
  return `| ${name} | ${s.n} | ${ms(s.p50)} | ${ms(s.p90)} | ${ms(s.p99)} | ${ms(s.mean)} | ${ref ? ratio(s.p50, ref.p50) : '1.00×'} | ${ref ? ratio(s.p99, ref.p99) : '1.00×'} |`;
}

async function latency(): Promise<void> {
  const subjects: [string, () => Promise<void>][] = [['spawn', spawnTrue], ['hutch-run', hutchRun]];
  const samples = new Map<string, number[]>(subjects.map(([n]) => [n, []]));
  for (let i = 0; i < 20; i++) for (const [, f] of subjects) await f();
  for (let i = 0; i < N; i++) {
    const order = i % 2 === 0 ? subjects : [...subjects].reverse();
    for (const [name, f] of order) samples.get(name)!.push(await time(f));
  }
  const sp = summarize(samples.get('spawn')!);
  const hr = summarize(samples.get('hutch-run')!);
  say('### Latency: Sandbox.run against spawn, interleaved');
  say();
  say('| peer | n | p50 | p90 | p99 | mean | p50 ÷ spawn | p99 ÷ spawn |');
  say('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  say(row('spawn', sp));
  say(row('hutch-run', hr, sp));
  say();
}

async function cpu(): Promise<void> {
  const subjects: [string, () => Promise<void>][] = [['spawn', spawnTrue], ['hutch-run', hutchRun]];
  const acc = new Map<string, { n: number; jiffies: number; usec: number | null; wall: number }>(subjects.map(([n]) => [n, { n: 0, jiffies: 0, usec: 0, wall: 0 }]));
  const block = Math.max(50, Math.ceil(N / 4));
  for (const [, f] of subjects) for (let i = 0; i < 10; i++) await f();
  // Alternating blocks, so a change in the machine's other load lands on both alike.
  while ([...acc.values()].some((a) => a.n < N)) {
    for (const [name, f] of subjects) {
      const a = acc.get(name)!;
      if (a.n >= N) continue;
      await Sandbox.settle();
      const s0 = procStat();
      const u0 = ownCgroupUsec();
      const t0 = performance.now();
      for (let i = 0; i < block; i++) await f();
      await Sandbox.settle(); // a start's teardown is part of its cost
      const s1 = procStat();
      const u1 = ownCgroupUsec();
      a.wall += performance.now() - t0;
      a.jiffies += s1.busy - s0.busy;
      a.usec = u0 === null || u1 === null || a.usec === null ? null : a.usec + (u1 - u0);
      a.n += block;
    }
  }
  say('### CPU per start (serial, both CPUs)');
  say();
  say(`Alternating blocks of ${block} serial starts, ${N} or more of each. /proc/stat: busy time of all CPUs (the whole machine, other work included); cgroup: this process's own cgroup2 cpu.stat (it and all it starts, the sandboxes' leaves included; kernel threads not).`);
  say();
  say('| subject | starts | wall per start | /proc/stat CPU per start | ÷ spawn | cgroup CPU per start | ÷ spawn | ceiling on 2 CPUs (cgroup figure) |');
  say('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  const sp = acc.get('spawn')!;
  for (const [name] of subjects) {
    const a = acc.get(name)!;
    const ps = (a.jiffies * JIFFY_MS) / a.n;
    const cg = a.usec === null ? NaN : a.usec / 1000 / a.n;
    const spPs = (sp.jiffies * JIFFY_MS) / sp.n;
    const spCg = sp.usec === null ? NaN : sp.usec / 1000 / sp.n;
    say(`| ${name} | ${a.n} | ${ms(a.wall / a.n)} | ${ms(ps)} ms | ${ratio(ps, spPs)} | ${ms(cg)} ms | ${ratio(cg, spCg)} | ${Number.isFinite(cg) ? Math.round(2000 / cg) + '/s' : '–'} |`);
  }
  say();
}

async function runFor(concurrency: number, seconds: number, op: () => Promise<void>): Promise<{ done: number; perSecond: number; s: Summary }> {
  const samples: number[] = [];
  const t0 = performance.now();
  const deadline = t0 + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline) samples.push(await time(op));
    }),
  );
  await Sandbox.settle();
  const el = (performance.now() - t0) / 1000;
  return { done: samples.length, perSecond: samples.length / el, s: summarize(samples) };
}

async function throughput(): Promise<void> {
  say('### Starts per second');
  say();
  say(`C concurrent callers loop for ${SECONDS} s each (teardowns settled inside the window); spawn at the same concurrency.`);
  say();
  say('| concurrency | hutch-run /s | spawn /s | hutch ÷ spawn | hutch p50 ms | spawn p50 ms |');
  say('| ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const c of [4, 8]) {
    const h = await runFor(c, SECONDS, hutchRun);
    const s = await runFor(c, SECONDS, spawnTrue);
    say(`| ${c} | ${h.perSecond.toFixed(0)} | ${s.perSecond.toFixed(0)} | ${ratio(h.perSecond, s.perSecond)} | ${ms(h.s.p50)} | ${ms(s.s.p50)} |`);
  }
  say();
}

/** Waits until the pool has its size ready and nothing being made or destroyed (reads its private state: the API has no probe). */
async function refilled(p: SandboxPool, size = 8): Promise<void> {
  const q = p as unknown as { ready: unknown[]; filling: number; inflight: Set<unknown> };
  for (let i = 0; i < 1000 && (q.ready.length < size || q.filling > 0 || q.inflight.size > 0); i++) await new Promise((r) => setTimeout(r, 2));
}

/** Whether the pool has no sandbox ready (its next run creates one on the caller's path, or waits for one). */
const poolEmpty = (p: SandboxPool): boolean => (p as unknown as { ready: unknown[] }).ready.length === 0;

/**
 * CPU ms used so far by this process (every thread) and by the children it has reaped (a
 * sandbox's init and everything it reaped, bubblewrap); kernel threads' work (a namespace's
 * cleanup, RCU) is not in it.
 */
function cpuMs(): number {
  const u = process.cpuUsage();
  const f = readFileSync('/proc/self/stat', 'utf8').split(') ')[1]!.split(' ');
  return (u.user + u.system) / 1000 + (Number(f[13]) + Number(f[14])) * JIFFY_MS; // cutime, cstime
}

async function pool(rootfs: string): Promise<void> {
  const bwrapArgv = ['--unshare-all', '--ro-bind', rootfs, '/', '--proc', '/proc', '--dev', '/dev', '/bin/true'];
  const bwrap = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const c = spawn('bwrap', bwrapArgv, { stdio: 'ignore' });
      c.once('error', reject);
      c.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`bwrap exited ${code}`))));
    });
  const block = 25;
  const p: SandboxPool = Sandbox.pool({ image: 'busybox', size: 8 });
  // The same runs with no create beside them: a pool whose low water mark (half its size) is
  // a whole block, so it refills only between blocks. What the refill costs the caller is the
  // difference between the two rows.
  const floorSize = 2 * block;
  const floor: SandboxPool = Sandbox.pool({ image: 'busybox', size: floorSize });
  const runOn = (q: SandboxPool) => async () => {
    const r = await q.run(['/bin/true']);
    if (r.exitCode !== 0) throw new Error(`exit ${r.exitCode}`);
  };
  const run = runOn(p);
  const runFloor = runOn(floor);
  const pr: number[] = [];
  const fr: number[] = [];
  const bw: number[] = [];
  const cpu = { pool: 0, floor: 0, bwrap: 0 };
  let empty = 0;
  try {
    for (let i = 0; i < 10; i++) await run();
    for (let i = 0; i < 10; i++) await runFloor();
    for (let i = 0; i < 5; i++) await bwrap();
    await refilled(floor, floorSize);
    for (let done = 0; done < N; done += block) {
      // Back to back: each call starts as the previous returns, the refill as it may. Its CPU
      // is counted until the pool has refilled and the used sandboxes are gone.
      await refilled(p);
      let c0 = cpuMs();
      for (let i = 0; i < block; i++) {
        if (poolEmpty(p)) empty++;
        pr.push(await time(run));
      }
      await refilled(p);
      cpu.pool += cpuMs() - c0;
      c0 = cpuMs();
      for (let i = 0; i < block; i++) fr.push(await time(runFloor));
      await refilled(floor, floorSize);
      cpu.floor += cpuMs() - c0;
      // bubblewrap's block starts once both pools have refilled and the used sandboxes are
      // gone (outside the timing), so that none of the pools' background work lands on it.
      c0 = cpuMs();
      for (let i = 0; i < block; i++) bw.push(await time(bwrap));
      cpu.bwrap += cpuMs() - c0;
    }
  } finally {
    await Promise.all([p.close(), floor.close()]);
  }
  const ps = summarize(pr);
  const fs = summarize(fr);
  const bs = summarize(bw);
  say('### pool.run back to back against bubblewrap');
  say();
  say(`A pool of 8; blocks of ${block} calls back to back (no wait for the refill), alternating with blocks of ${block} on a pool of ${floorSize} (its low water mark is a whole block: no create beside its runs) and blocks of ${block} (each started once the pools have refilled, outside the timing) \`bwrap --unshare-all --ro-bind <busybox layer> / --proc /proc --dev /dev /bin/true\`.`);
  say();
  say('| peer | n | p50 | p90 | p99 | mean | p50 ÷ bwrap | p99 ÷ bwrap |');
  say('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  say(row('bwrap', bs));
  say(row('pool-run', ps, bs));
  say(row(`pool-run, no create beside (pool of ${floorSize})`, fs, bs));
  say();
  const per = (ms: number, n: number) => (ms / n).toFixed(2);
  const cpus = availableParallelism();
  const sustained = cpu.pool / pr.length / cpus;
  say(`Runs of the pool of 8 that found no sandbox ready: ${empty} of ${pr.length}. CPU per call (this process's threads and the children it reaped, the pool's refill and teardown of the block included; kernel threads not): pool-run ${per(cpu.pool, pr.length)} ms, no create beside ${per(cpu.floor, fr.length)} ms, bwrap ${per(cpu.bwrap, bw.length)} ms. On ${cpus} CPUs, calls back to back that each pay for a create and a teardown take at least ${sustained.toFixed(2)} ms each when sustained (${ratio(sustained, bs.p50)} bubblewrap's p50).`);
  say();
}

function memAvailable(): number {
  return Number(/^MemAvailable:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'))![1]) * 1024;
}

async function live(): Promise<void> {
  say('### Live idle sandboxes: create time and memory');
  say();
  say('Sandbox.create of busybox while K others stay idle; create p50 of 20 creates at each level (each destroyed at once), spawn sampled alongside as the control; memory per sandbox: what the kernel charges to its cgroup plus its init\'s PSS (this sandbox alone), and the host\'s MemAvailable drop over all of them (moved by everything else on the machine too).');
  say();
  say('| live | create p50 ms | spawn p50 ms | create ÷ spawn | create ÷ at first level | cgroup charge + init PSS per sandbox | MemAvailable drop per sandbox |');
  say('| ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  const alive: Sandbox[] = [];
  let first = NaN;
  const mem0 = memAvailable();
  try {
    for (const k of LIVE) {
      while (alive.length < k) {
        const batch = Array.from({ length: Math.min(8, k - alive.length) }, () => Sandbox.create({ image: 'busybox' }));
        alive.push(...(await Promise.all(batch)));
      }
      await new Promise((r) => setTimeout(r, 200));
      const perSb = (mem0 - memAvailable()) / Math.max(1, alive.length);
      const own = alive.map((sb) => cgroupBytes(sb.pid) + pss(sb.pid)).filter(Number.isFinite);
      const ownMean = own.reduce((a, b) => a + b, 0) / Math.max(1, own.length);
      const c: number[] = [];
      const s: number[] = [];
      for (let i = 0; i < 20; i++) {
        let sb: Sandbox | undefined;
        c.push(await time(async () => void (sb = await Sandbox.create({ image: 'busybox' }))));
        await sb!.destroy();
        s.push(await time(spawnTrue));
      }
      const cs = summarize(c);
      const ss = summarize(s);
      if (Number.isNaN(first)) first = cs.p50;
      say(`| ${k} | ${ms(cs.p50)} | ${ms(ss.p50)} | ${ratio(cs.p50, ss.p50)} | ${ratio(cs.p50, first)} | ${(ownMean / 1048576).toFixed(2)} MiB | ${(perSb / 1048576).toFixed(2)} MiB |`);
    }
  } finally {
    for (let i = 0; i < alive.length; i += 64) await Promise.all(alive.slice(i, i + 64).map((sb) => sb.destroy()));
  }
  say();
}

async function main(): Promise<void> {
  const t0 = Date.now();
  const store = ImageStore.default();
  const busybox = await store.resolve('busybox');
  const rootfs = join(busybox.layersDir, busybox.lowerdirs[0]!);
  say(`## Cold path (bench:cold), ${new Date().toISOString()}`);
  say();
  say(`load average at start: ${loadavg()}; ${N} samples per subject`);
  say();
  if (ONLY.has('latency')) await latency();
  if (ONLY.has('cpu')) await cpu();
  if (ONLY.has('throughput')) await throughput();
  if (ONLY.has('pool')) await pool(rootfs);
  if (ONLY.has('live')) await live();
  await Sandbox.settle();
  say(`load average at end: ${loadavg()}; ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  if (!argv.includes('--no-write')) {
    const dir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bench', 'results');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'cold-latest.md'), out.join('\n') + '\n');
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench:cold: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});

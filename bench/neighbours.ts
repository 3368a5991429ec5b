/**
 * Noisy neighbours: p50/p99 exec latency of N idle sandboxes (`echo ok`, 8 at a time), first
 * alone, then next to a fork bomb, an OOM loop, a disk filler, a CPU spinner and a stdout
 * flood; plus hutch's event-loop lag in both phases. Goal: neighbours' p99 <= 2x idle.
 *
 *   npx tsc -p tsconfig.json && node dist/bench/neighbours.js [--sandboxes 200] [--rounds 5]
 *
 * Uses a temp store and its own cgroup parent; removes both at the end.
 */
import { mkdtempSync, readdirSync, rmdirSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { ImageStore, Sandbox, type ExecResult } from '../lib/index.js';

const { values } = parseArgs({ options: { sandboxes: { type: 'string', default: '200' }, rounds: { type: 'string', default: '5' } } });
const N = Number(values.sandboxes);
const ROUNDS = Number(values.rounds);
const parent = `/hutch-bench-nb-${process.pid}`;
process.env.HUTCH_CGROUP_PARENT = parent;
const root = mkdtempSync(join(tmpdir(), 'hutch-bench-nb-'));
const store = new ImageStore({ root });

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

async function inBatches(n: number, width: number, f: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < n) await f(next++);
  }));
}

async function measure(sbs: Sandbox[], rounds: number): Promise<{ lat: number[]; lagP99: number; lagMax: number }> {
  const lat: number[] = [];
  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  for (let r = 0; r < rounds; r++) {
    await inBatches(sbs.length, 8, async (i) => {
      const t0 = performance.now();
      const res = await sbs[i]!.exec(['echo', 'ok'], { timeoutMs: 30_000 });
      if (res.exitCode !== 0) throw new Error(`neighbour exec failed: ${res.reason}`);
      lat.push(performance.now() - t0);
    });
  }
  lag.disable();
  return { lat, lagP99: lag.percentile(99) / 1e6, lagMax: lag.max / 1e6 };
}

const all: Sandbox[] = [];
try {
  const sbs: Sandbox[] = [];
  await inBatches(N, 4, async () => {
    const sb = await Sandbox.create({ image: 'busybox', store, limits: { memory: '32MiB', pids: 16 } });
    all.push(sb);
    sbs.push(sb);
  });
  await measure(sbs, 1); // warm-up
  const idle = await measure(sbs, ROUNDS);

  const mk = async (limits: object): Promise<Sandbox> => {
    const sb = await Sandbox.create({ image: 'busybox', store, limits });
    all.push(sb);
    return sb;
  };
  const [bomber, hog, filler, spinner, flooder] = await Promise.all([mk({ pids: 32 }), mk({ memory: '32MiB' }), mk({ disk: '4MiB' }), mk({}), mk({ output: '1MiB' })]);
  let stop = false;
  // Offenders restart until the measurement ends, so the whole of it runs next to them.
  const loop = (f: () => Promise<ExecResult>): Promise<string[]> => (async () => {
    const reasons: string[] = [];
    while (!stop) reasons.push((await f()).reason);
    return reasons;
  })();
  const offenders = [
    loop(() => bomber.exec('f() { f | f & }; f; sleep 10', { timeoutMs: 2000 })),
    loop(() => hog.exec(['tail', '/dev/zero'], { timeoutMs: 10_000 })),
    loop(() => filler.exec('dd if=/dev/zero of=/fill bs=64k 2>/dev/null; rm -f /fill', { timeoutMs: 10_000 })),
    loop(() => spinner.exec('for i in 1 2 3 4; do (while :; do :; done) & done; wait', { timeoutMs: 2000 })),
    loop(() => flooder.exec(['yes', 'flood'])),
  ];
  await new Promise((r) => setTimeout(r, 300));
  const noisy = await measure(sbs, ROUNDS);
  stop = true;
  const reasons = await Promise.all(offenders);

  const cpus = readFileSync('/proc/cpuinfo', 'utf8').split('\n').filter((l) => l.startsWith('processor')).length;
  const row = (name: string, m: typeof idle) =>
    `| ${name} | ${m.lat.length} | ${pct(m.lat, 50).toFixed(1)} | ${pct(m.lat, 99).toFixed(1)} | ${m.lagP99.toFixed(1)} | ${m.lagMax.toFixed(1)} |`;
  console.log(`# noisy neighbours: ${N} idle busybox sandboxes, ${ROUNDS} rounds of \`echo ok\` each, 8 at a time, ${cpus} CPUs\n`);
  console.log('| phase | execs | p50 ms | p99 ms | event-loop lag p99 ms | lag max ms |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  console.log(row('idle', idle));
  console.log(row('next to the offenders', noisy));
  const ratio = pct(noisy.lat, 99) / pct(idle.lat, 99);
  console.log(`\np99 ratio noisy/idle: ${ratio.toFixed(2)}x (goal <= 2x: ${ratio <= 2 ? 'met' : 'NOT met'})`);
  const count = (xs: string[]) => Object.entries(xs.reduce<Record<string, number>>((a, x) => ((a[x] = (a[x] ?? 0) + 1), a), {})).map(([k, v]) => `${k} x${v}`).join(', ');
  console.log(`offenders: fork bomb ${count(reasons[0]!)}; OOM ${count(reasons[1]!)}; disk filler ${count(reasons[2]!)}; CPU spinner ${count(reasons[3]!)}; flood ${count(reasons[4]!)}`);
} finally {
  await Promise.all(all.map((s) => s.destroy().catch(() => undefined)));
  rmSync(root, { recursive: true, force: true });
  for (const m of readdirSync('/sys/fs/cgroup')) {
    try {
      rmdirSync(join('/sys/fs/cgroup', m, parent));
    } catch {}
  }
}

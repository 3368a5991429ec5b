/**
 * Throughput: create + run `/bin/true` + destroy, back to back from C concurrent callers for
 * a fixed time, at each concurrency level; bubblewrap at the same levels as the reference.
 */
import { Sandbox } from '../../lib/index.js';
import { timeChild, which } from './child.js';
import type { BenchContext } from './latency.js';
import type { ThroughputRow, ThroughputSection } from './results.js';
import { summarize } from './stats.js';

async function runFor(concurrency: number, seconds: number, op: () => Promise<void>): Promise<Omit<ThroughputRow, 'subject' | 'concurrency'>> {
  const samples: number[] = [];
  let failures = 0;
  const t0 = performance.now();
  const deadline = t0 + seconds * 1000;
  const worker = async () => {
    while (performance.now() < deadline) {
      const t = performance.now();
      try {
        await op();
        samples.push(performance.now() - t);
      } catch {
        failures++;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const elapsed = (performance.now() - t0) / 1000;
  return { completed: samples.length, failures, seconds: elapsed, perSecond: samples.length / elapsed, latency: summarize(samples, failures) };
}

export async function throughput(ctx: BenchContext): Promise<ThroughputSection> {
  const { args } = ctx;
  const rows: ThroughputRow[] = [];
  const notes: string[] = [];
  const hutch = async () => {
    const r = await Sandbox.run({ image: 'busybox', command: ['/bin/true'] });
    if (r.exitCode !== 0) throw new Error(`exit ${r.exitCode}`);
  };
  const bwrapArgv = ['bwrap', '--unshare-all', '--ro-bind', ctx.rootfs, '/', '--proc', '/proc', '--dev', '/dev', '/bin/true'];
  const bwrap = async () => {
    const r = await timeChild(bwrapArgv);
    if (r.code !== 0) throw new Error(`exit ${r.code}`);
  };
  const haveBwrap = !!which('bwrap');
  if (!haveBwrap) notes.push('bwrap is not installed: no reference rows');
  // A short warm-up so the first level does not pay for first-use work.
  for (let i = 0; i < 5; i++) await hutch().catch(() => undefined);
  for (const c of args.concurrency) {
    process.stderr.write(`  throughput: hutch at concurrency ${c} for ${args.durationS} s\n`);
    rows.push({ subject: 'hutch Sandbox.run', concurrency: c, ...(await runFor(c, args.durationS, hutch)) });
    if (haveBwrap) {
      process.stderr.write(`  throughput: bwrap at concurrency ${c} for ${args.durationS} s\n`);
      rows.push({ subject: 'bwrap', concurrency: c, ...(await runFor(c, args.durationS, bwrap)) });
    }
  }
  return {
    kind: 'throughput',
    title: 'Throughput: create + run + destroy per second',
    description: `C callers in this process each loop \`Sandbox.run\` of \`/bin/true\` (busybox, default limits) for ${args.durationS} s; per-call latency alongside. bwrap at the same concurrency, spawned from the same process, for reference.`,
    rows,
    notes,
  };
}

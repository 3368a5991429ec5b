/**
 * Where Sandbox.run's time goes, through the public API only: Sandbox.create, the first
 * exec of /bin/true, destroy, each timed on its own, n = iterations / 2 in a plain loop.
 */
import { Sandbox } from '../../lib/index.js';
import type { BenchContext } from './latency.js';
import type { LatencySection } from './results.js';
import { summarize } from './stats.js';

export async function phases(ctx: BenchContext): Promise<LatencySection> {
  const n = Math.max(10, Math.floor(ctx.args.iterations / 2));
  const create: number[] = [];
  const exec: number[] = [];
  const second: number[] = [];
  const destroy: number[] = [];
  for (let i = 0; i < ctx.args.warmup + n; i++) {
    const t0 = performance.now();
    const sb = await Sandbox.create({ image: 'busybox' });
    const t1 = performance.now();
    try {
      await sb.exec(['/bin/true']);
      const t2 = performance.now();
      await sb.exec(['/bin/true']);
      const t3 = performance.now();
      if (i >= ctx.args.warmup) {
        create.push(t1 - t0);
        exec.push(t2 - t1);
        second.push(t3 - t2);
      }
    } finally {
      const t4 = performance.now();
      await sb.destroy();
      if (i >= ctx.args.warmup) destroy.push(performance.now() - t4);
    }
  }
  const row = (name: string, what: string, xs: number[]) => ({ name, what, summary: summarize(xs), errors: [], dropped: false });
  return {
    kind: 'latency',
    title: 'Phases of one sandbox (public API)',
    description: 'Sandbox.create, the first and a second exec of /bin/true, and destroy, each timed separately in a plain loop (not interleaved).',
    warmup: ctx.args.warmup,
    rows: [
      row('create', "Sandbox.create({ image: 'busybox' }): plan, cgroup, clone, setup, init running", create),
      row('first exec', "the sandbox's first exec of /bin/true", exec),
      row('second exec', 'a second exec of /bin/true', second),
      row('destroy', 'destroy(): kill init, wait, remove the cgroup and the store record', destroy),
    ],
    notes: [],
  };
}

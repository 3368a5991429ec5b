/**
 * `node dist/bench/network.js [iterations]`: what a link costs. Interleaved, so drift and
 * background work hit every variant alike:
 *   - Sandbox.run({ command: ['true'] }) with network 'none', a plain bridge, and a bridge
 *     shaped both ways (create + exec + destroy, wall time), and Sandbox.create alone;
 *   - attachNetwork / releaseNetwork alone on a 'none' sandbox (plain and shaped), the release
 *     both as the caller sees it (hand-off) and until the link is gone.
 * Needs root. Uses its own range (10.204.0.0/22) and removes everything it made.
 */
import { Sandbox } from '../lib/index.js';
import { attachNetwork, releaseNetwork, resolveNetwork, settleNetwork, pruneNetwork } from '../lib/network/index.js';
import type { NetworkOptions } from '../lib/network/index.js';

const N = Number(process.argv[2] ?? 200);
const RANGE = '10.204.0.0/22';
const image = 'busybox';

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

function row(name: string, xs: number[]): string {
  const f = (x: number) => x.toFixed(2).padStart(7);
  return `| ${name.padEnd(34)} | ${f(pct(xs, 50))} | ${f(pct(xs, 90))} | ${f(pct(xs, 99))} | ${String(xs.length).padStart(5)} |`;
}

const variants: { name: string; network: 'none' | NetworkOptions }[] = [
  { name: "run, network 'none'", network: 'none' },
  { name: 'run, bridge', network: { mode: 'bridge', range: RANGE } },
  { name: 'run, bridge shaped 10/20 mbit', network: { mode: 'bridge', range: RANGE, egress: '10mbit', ingress: '20mbit' } },
];

/** Sandbox.create alone (the sandbox "starts"); destroy runs untimed. */
async function timeCreate(network: 'none' | NetworkOptions): Promise<number> {
  const t0 = performance.now();
  const sb = await Sandbox.create({ image, network });
  const ms = performance.now() - t0;
  await sb.destroy();
  return ms;
}

async function timeRun(network: 'none' | NetworkOptions): Promise<number> {
  const t0 = performance.now();
  const r = await Sandbox.run({ image, command: ['true'], network });
  const ms = performance.now() - t0;
  if (r.exitCode !== 0) throw new Error(`true exited ${r.exitCode}`);
  return ms;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/network needs root (links, tc, nftables)');
  // Warm-up: the addon, init memfd, image, nftables table and JIT, for every variant.
  for (let i = 0; i < 5; i++) for (const v of variants) await timeRun(v.network);
  await settleNetwork();

  const runs = variants.map(() => [] as number[]);
  const creates = variants.map(() => [] as number[]);
  for (let i = 0; i < N; i++) {
    for (let k = 0; k < variants.length; k++) {
      // Rotate the order so no variant always follows another's background deletion.
      const j = (i + k) % variants.length;
      runs[j]!.push(await timeRun(variants[j]!.network));
      creates[j]!.push(await timeCreate(variants[j]!.network));
    }
  }
  const tSettle = performance.now();
  await settleNetwork();
  const settleMs = performance.now() - tSettle;

  const plain = resolveNetwork({ mode: 'bridge', range: RANGE });
  const shaped = resolveNetwork({ mode: 'bridge', range: RANGE, egress: '10mbit', ingress: '20mbit' });
  const attach = { plain: [] as number[], shaped: [] as number[] };
  const handoff = { plain: [] as number[], shaped: [] as number[] };
  const gone = { plain: [] as number[], shaped: [] as number[] };
  const sb = await Sandbox.create({ image });
  try {
    for (let i = 0; i < Math.min(N, 100); i++) {
      for (const [key, plan] of [['plain', plain], ['shaped', shaped]] as const) {
        const t0 = performance.now();
        const a = await attachNetwork(plan, sb.id, sb.pid);
        attach[key].push(performance.now() - t0);
        const t1 = performance.now();
        await releaseNetwork(a);
        handoff[key].push(performance.now() - t1);
        await releaseNetwork(a, { wait: true });
        gone[key].push(performance.now() - t1);
      }
    }
  } finally {
    await sb.destroy();
  }
  await settleNetwork();
  await pruneNetwork();

  const lines = [
    `network bench: ${N} interleaved iterations, ${new Date().toISOString()}, node ${process.version}`,
    '',
    '| ms                                 |     p50 |     p90 |     p99 |     n |',
    '| ---------------------------------- | ------: | ------: | ------: | ----: |',
    ...variants.map((v, k) => row(v.name, runs[k]!)),
    ...variants.map((v, k) => row(v.name.replace('run', 'create'), creates[k]!)),
    row('attachNetwork, plain', attach.plain),
    row('attachNetwork, shaped', attach.shaped),
    row('releaseNetwork (hand-off), plain', handoff.plain),
    row('releaseNetwork (hand-off), shaped', handoff.shaped),
    row('release until gone, plain', gone.plain),
    row('release until gone, shaped', gone.shaped),
    '',
    `run at p50: bridge / none ${(pct(runs[1]!, 50) / pct(runs[0]!, 50)).toFixed(2)}x, shaped / none ${(pct(runs[2]!, 50) / pct(runs[0]!, 50)).toFixed(2)}x`,
    `create at p50: bridge / none ${(pct(creates[1]!, 50) / pct(creates[0]!, 50)).toFixed(2)}x, shaped / none ${(pct(creates[2]!, 50) / pct(creates[0]!, 50)).toFixed(2)}x`,
    `background deletions still pending after the last run: settled in ${settleMs.toFixed(1)} ms`,
  ];
  console.log(lines.join('\n'));
}

main().catch(async (e: unknown) => {
  console.error(e);
  await settleNetwork().catch(() => undefined);
  await pruneNetwork().catch(() => undefined);
  process.exitCode = 1;
});

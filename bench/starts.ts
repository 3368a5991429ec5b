/**
 * `node dist/bench/starts.js N`: N serial `Sandbox.run` of /bin/true from the busybox image,
 * nothing else: the workload bench/profile-starts.sh records with perf.
 */
import { Sandbox } from '../lib/index.js';

const n = Number(process.argv[2] ?? 1000);
if (!Number.isInteger(n) || n < 1) {
  process.stderr.write('usage: node dist/bench/starts.js N\n');
  process.exit(2);
}
const t0 = performance.now();
for (let i = 0; i < n; i++) {
  const r = await Sandbox.run({ image: 'busybox', command: ['/bin/true'] });
  if (r.exitCode !== 0) throw new Error(`/bin/true exited ${r.exitCode}`);
}
await Sandbox.settle();
process.stderr.write(`${n} starts in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);

/**
 * `node dist/bench/flame.js PERF_SCRIPT_TXT OUT.svg [title] [subtitle]`: the flame graph of a
 * `perf script` dump (see bench/lib/flame.ts and docs/performance.md, "Where the time goes"),
 * with the folded stacks next to the input (PERF_SCRIPT_TXT.folded) and the phase shares on stdout.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { flameSvg, foldPerfScript, foldedText, phaseShares } from './lib/flame.js';
import { START_PHASES } from './lib/phases-perf.js';

const [input, out, title = 'hutch: Sandbox.run of /bin/true', subtitle = ''] = process.argv.slice(2);
if (!input || !out) {
  process.stderr.write('usage: node dist/bench/flame.js PERF_SCRIPT_TXT OUT.svg [title] [subtitle]\n');
  process.exit(2);
}
// perf names a process by its comm: a sandbox's init is exec'd from a memfd ("memfd:hutch-ini").
const folded = foldPerfScript(readFileSync(input, 'utf8'), (c) => (c.startsWith('memfd:hutch-ini') ? 'hutch-init' : c));
writeFileSync(out, flameSvg(folded, title, subtitle));
writeFileSync(`${input}.folded`, foldedText(folded));
const total = [...folded.values()].reduce((a, b) => a + b, 0);
process.stdout.write(`${total} samples\n| phase | share |\n| --- | ---: |\n`);
for (const p of phaseShares(folded, START_PHASES)) process.stdout.write(`| ${p.name} | ${(100 * p.share).toFixed(1)}% |\n`);

/**
 * `npm run bench:templates`: the templates scenario of `npm run bench` alone
 * (bench/lib/templates.ts; docs/templates.md, "Performance"). Prints each case as measured,
 * then the table with issue 16's goals. HUTCH_BENCH_N sets the samples per case (default 30),
 * HUTCH_BENCH_ZYGOTES=node (or python) one runtime's rows only. HUTCH_TRACE=1 adds a line per
 * template.run: where its time went (lib/template/index.ts).
 */
import { readFileSync } from 'node:fs';
import { templatesTable } from './lib/report.js';
import { templatesBench, type Zygote } from './lib/templates.js';

const zygotes = (process.env.HUTCH_BENCH_ZYGOTES ?? 'python,node').split(',').map((z) => z.trim()).filter(Boolean);
const bad = zygotes.find((z) => z !== 'python' && z !== 'node');
if (bad !== undefined || zygotes.length === 0) {
  process.stderr.write(`bench:templates: HUTCH_BENCH_ZYGOTES: expected python and/or node, comma-separated, got ${JSON.stringify(process.env.HUTCH_BENCH_ZYGOTES)}\n`);
  process.exit(2);
}
const n = Number(process.env.HUTCH_BENCH_N ?? 30);
if (!Number.isInteger(n) || n < 1) {
  process.stderr.write(`bench:templates: HUTCH_BENCH_N: expected a whole number of samples >= 1, got ${JSON.stringify(process.env.HUTCH_BENCH_N)}\n`);
  process.exit(2);
}
const s = await templatesBench({ n, zygotes: zygotes as Zygote[], seconds: 5, log: (line) => console.log(line) });
console.log(`\nload average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}\n`);
console.log([...templatesTable(s), ...s.notes.map((n) => `\n> ${n}`)].join('\n'));

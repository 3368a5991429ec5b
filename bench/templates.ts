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

const zygotes = (process.env.HUTCH_BENCH_ZYGOTES ?? 'python,node').split(',').filter((z): z is Zygote => z === 'python' || z === 'node');
const s = await templatesBench({ n: Number(process.env.HUTCH_BENCH_N ?? 30), zygotes, seconds: 5, log: (line) => console.log(line) });
console.log(`\nload average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}\n`);
console.log([...templatesTable(s), ...s.notes.map((n) => `\n> ${n}`)].join('\n'));

/** Markdown of a run: the machine, one table per scenario, the issue-7 targets side by side. */
import { machineLines } from './machine.js';
import type { CurveSection, LatencyRow, LatencySection, MemorySection, RunResults, TemplatesSection, ThroughputSection } from './results.js';
import { mib, ms, ratio } from './stats.js';

function find(rows: LatencyRow[], name: string): LatencyRow | undefined {
  return rows.find((r) => r.name === name && r.summary.n > 0);
}

function latencyTable(s: LatencySection): string[] {
  const bw = find(s.rows, 'bwrap')?.summary;
  const sp = find(s.rows, 'spawn')?.summary;
  const out = [
    `| peer | n | p50 | p90 | p99 | mean | min | max | p50 ÷ bwrap | p99 ÷ bwrap | p50 ÷ spawn |`,
    `| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |`,
  ];
  for (const r of s.rows) {
    const m = r.summary;
    const fail = m.failures > 0 ? ` (${m.failures} failed${r.dropped ? ', dropped' : ''})` : '';
    out.push(
      `| ${r.name}${fail} | ${m.n} | ${ms(m.p50)} | ${ms(m.p90)} | ${ms(m.p99)} | ${ms(m.mean)} | ${ms(m.min)} | ${ms(m.max)} | ` +
        `${ratio(m.p50, bw?.p50 ?? NaN)} | ${ratio(m.p99, bw?.p99 ?? NaN)} | ${ratio(m.p50, sp?.p50 ?? NaN)} |`,
    );
  }
  out.push('', 'Times in milliseconds.', '');
  for (const r of s.rows) out.push(`- \`${r.name}\`: ${r.what}`);
  return out;
}

function throughputTable(s: ThroughputSection): string[] {
  const out = [
    '| subject | concurrency | completed | per second | p50 ms | p90 ms | p99 ms | failures |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const r of s.rows) {
    out.push(`| ${r.subject} | ${r.concurrency} | ${r.completed} | ${r.perSecond.toFixed(0)} | ${ms(r.latency.p50)} | ${ms(r.latency.p90)} | ${ms(r.latency.p99)} | ${r.failures} |`);
  }
  return out;
}

function memoryTable(s: MemorySection): string[] {
  const out = [
    `${s.sandboxes} sandboxes created in ${s.createSeconds.toFixed(1)} s (${(s.sandboxes / s.createSeconds).toFixed(0)}/s, 4 at a time), destroyed in ${s.destroySeconds.toFixed(1)} s.`,
    '',
    '| measure (per sandbox) | value | how |',
    '| --- | ---: | --- |',
  ];
  for (const p of s.perSandbox) out.push(`| ${p.label} | ${mib(p.bytes)} | ${p.how} |`);
  return out;
}

/** Issue 16's cases, each beside its cold peer and its goal; then memory per idle fork. */
export function templatesTable(s: TemplatesSection): string[] {
  const out = ['| case | cold | template | template ÷ cold | goal |', '| --- | ---: | ---: | ---: | --- |'];
  for (const r of s.rows) {
    const v = r.template / r.cold;
    const shown = (x: number): string => (r.unit === 'ms' ? `${x.toFixed(1)} ms` : `${x.toFixed(1)}/s`);
    const goal = r.goal === null ? 'reported' : `≤ ${r.goal}: ${verdict(v, r.goal)}`;
    out.push(`| ${r.name} | ${shown(r.cold)} (${r.peer}) | ${shown(r.template)} | ${v.toFixed(3)} | ${goal} |`);
  }
  if (s.memory.length > 0) {
    out.push(
      '',
      'Memory per idle fork beyond the template, MiB per fork (8 forks whose tasks sleep). *Added to the machine*: the forks\' anonymous PSS plus the change of file-backed and shmem PSS summed over every process. *Summed PSS*: the zygote and its forks, less the zygote alone (its file-backed part moves with what else maps the interpreter\'s files). Page tables are kernel memory, outside PSS.',
      '',
      '| zygote | added to the machine | summed PSS | of it anonymous | USS | page tables | the zygote alone | goal |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
    );
    for (const m of s.memory) {
      out.push(`| ${m.zygote} | ${m.addedMiB.toFixed(2)} | ${m.summedPssMiB.toFixed(2)} | ${m.anonMiB.toFixed(2)} | ${m.ussMiB.toFixed(2)} | ${m.pageTablesMiB.toFixed(2)} | ${m.zygoteMiB.toFixed(2)} | ≤ 1 MiB: ${verdict(m.addedMiB, 1)} |`);
    }
  }
  return out;
}

function curveTable(s: CurveSection): string[] {
  const names = [...new Set(s.points.flatMap((p) => p.rows.map((r) => r.name)))];
  if (names.length === 1 || s.points.every((p) => p.rows.length === 1)) {
    const out = [`| ${s.xLabel} | n | p50 | p90 | p99 | mean | p50 ÷ first |`, '| --- | ---: | ---: | ---: | ---: | ---: | ---: |'];
    const first = s.points[0]?.rows[0]?.summary.p50 ?? NaN;
    for (const p of s.points) {
      const m = p.rows[0]!.summary;
      out.push(`| ${p.x} | ${m.n} | ${ms(m.p50)} | ${ms(m.p90)} | ${ms(m.p99)} | ${ms(m.mean)} | ${ratio(m.p50, first)} |`);
    }
    return out;
  }
  const head = names.flatMap((n) => [`${n} p50`, `${n} p99`]);
  const out = [`| ${s.xLabel} | ${head.join(' | ')} | ${names[0]} p50 ÷ ${names[1]} p50 |`, `| --- | ${head.map(() => '---:').join(' | ')} | ---: |`];
  for (const p of s.points) {
    const cells = names.flatMap((n) => {
      const m = p.rows.find((r) => r.name === n)?.summary;
      return [ms(m?.p50 ?? NaN), ms(m?.p99 ?? NaN)];
    });
    const a = p.rows.find((r) => r.name === names[0])?.summary.p50 ?? NaN;
    const b = p.rows.find((r) => r.name === names[1])?.summary.p50 ?? NaN;
    out.push(`| ${p.x} | ${cells.join(' | ')} | ${ratio(a, b)} |`);
  }
  out.push('', `n = ${s.points[0]?.rows[0]?.summary.n ?? 0} per cell; times in milliseconds.`);
  return out;
}

/** Long errors (an overlay lowerdir list) cut to keep the table readable. */
function clip(s: string): string {
  return s.length > 300 ? `${s.slice(0, 140)} … ${s.slice(-140)}` : s;
}

function verdict(value: number, limit: number, lowerIsBetter = true): string {
  if (!Number.isFinite(value)) return 'not measured';
  const ok = lowerIsBetter ? value <= limit : value >= limit;
  return ok ? 'met' : 'not met';
}

/** The targets of issue 7, each with what this run measured (no assertion: a report). */
export function targetsTable(r: RunResults): string[] {
  const lat = r.sections.find((s): s is LatencySection => s.kind === 'latency');
  const thr = r.sections.find((s): s is ThroughputSection => s.kind === 'throughput');
  const mem = r.sections.find((s): s is MemorySection => s.kind === 'memory');
  const rows: [string, number, number, string, boolean][] = [];
  const get = (n: string) => (lat ? find(lat.rows, n)?.summary : undefined);
  const bw = get('bwrap');
  const sp = get('spawn');
  const run = get('hutch-run');
  const pool = get('pool-run');
  const exec = get('exec');
  if (run && bw) {
    rows.push(['`Sandbox.run` p50 ≤ 0.5 × bwrap p50', run.p50 / bw.p50, 0.5, '×', true]);
    rows.push(['`Sandbox.run` p99 ≤ 1.0 × bwrap p99', run.p99 / bw.p99, 1.0, '×', true]);
  }
  if (pool && bw) rows.push(['`SandboxPool.run` p50 ≤ 0.25 × bwrap p50', pool.p50 / bw.p50, 0.25, '×', true]);
  if (exec && sp) rows.push(['`exec` p50 ≤ 1.5 × spawn p50', exec.p50 / sp.p50, 1.5, '×', true]);
  if (thr) {
    const best = Math.max(...thr.rows.filter((t) => t.subject.startsWith('hutch') && t.concurrency >= 4 && t.concurrency <= 8).map((t) => t.perSecond));
    if (Number.isFinite(best)) rows.push(['throughput ≥ 400/s at concurrency 4–8', best, 400, '/s', false]);
  }
  if (mem) {
    const drop = mem.perSandbox.find((p) => p.label === 'host MemAvailable drop')?.bytes ?? NaN;
    const cg = mem.perSandbox.find((p) => p.label === 'cgroup memory')?.bytes ?? NaN;
    const pss = mem.perSandbox.find((p) => p.label === 'init PSS')?.bytes ?? NaN;
    if (drop > 0) rows.push(['host memory per idle sandbox ≤ 2 MiB (MemAvailable drop)', drop / 1048576, 2, ' MiB', true]);
    rows.push(['… cgroup charge + init PSS ≤ 2 MiB', (cg + pss) / 1048576, 2, ' MiB', true]);
  }
  if (rows.length === 0) return [];
  const out = ['| target (issue 7) | this run | |', '| --- | ---: | --- |'];
  for (const [what, v, limit, unit, lower] of rows) {
    const shown = unit === '×' ? `${v.toFixed(2)}×` : unit === '/s' ? `${v.toFixed(0)}/s` : `${v.toFixed(2)}${unit}`;
    out.push(`| ${what} | ${shown} | ${verdict(v, limit, lower)} |`);
  }
  return out;
}

export function renderMarkdown(r: RunResults): string {
  const out: string[] = [];
  const minutes = ((r.finishedAt.getTime() - r.startedAt.getTime()) / 60000).toFixed(1);
  out.push(`# hutch benchmark: ${r.startedAt.toISOString().slice(0, 16).replace('T', ' ')} UTC on ${r.machine.host}`, '');
  out.push(`Command: \`${r.command}\` (${minutes} min). Figures from one run on one machine: compare rows within a table, not across machines.`, '');
  out.push('## Machine', '', ...machineLines(r.machine), `- load average at end: ${r.loadAtEnd}`, '');
  const targets = targetsTable(r);
  if (targets.length > 0) out.push('## Targets', '', ...targets, '');
  for (const s of r.sections) {
    out.push(`## ${s.title}`, '', s.description, '');
    if (s.kind === 'latency') out.push(`Warm-up: ${s.warmup} rounds discarded.`, '', ...latencyTable(s));
    else if (s.kind === 'throughput') out.push(...throughputTable(s));
    else if (s.kind === 'memory') out.push(...memoryTable(s));
    else if (s.kind === 'templates') out.push(...templatesTable(s));
    else out.push(...curveTable(s));
    const errors = s.kind === 'latency' ? s.rows.filter((x) => x.errors.length > 0) : s.kind === 'curve' ? s.points.flatMap((p) => p.rows).filter((x) => x.errors.length > 0) : [];
    const notes = [...s.notes, ...errors.map((x) => `${x.name} failed ${x.summary.failures}×: ${clip(x.errors[0] ?? '')}`)];
    if (notes.length > 0) out.push('', ...notes.map((n) => `> ${n}`));
    out.push('');
  }
  if (r.skipped.length > 0) out.push('## Skipped', '', ...r.skipped.map((s) => `- ${s}`), '');
  return out.join('\n');
}

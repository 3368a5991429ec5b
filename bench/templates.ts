/**
 * `npm run bench:templates`: a template's run against a cold Sandbox.run of the same task,
 * side by side in one process (docs/templates.md, "Performance"):
 * - python hello world, and node's (the same rows for the built-in node zygote);
 * - a stand-in module that takes 200 ms (CPU) to import, preloaded;
 * - numpy preloaded, when the image's python3 has it (Debian's python3-numpy);
 * - throughput at concurrency 4;
 * - memory (PSS) per idle fork beyond the template.
 * Prints medians and ratios. HUTCH_BENCH_N sets the samples per case (default 30).
 * HUTCH_TRACE=1 adds a line per template.run: where its time went (lib/template/index.ts:
 * request sent, 'S' = the fork's privilege drop done, 'X' = its wait status, pipes drained).
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox, type SandboxOptions } from '../lib/index.js';

const N = Number(process.env.HUTCH_BENCH_N ?? 30);

function p50(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function time(f: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await f();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

/** `gapMs` > 0: that long idle before each sample (what is prepared ahead is then ready). */
async function sample(n: number, f: () => Promise<unknown>, gapMs = 0): Promise<number[]> {
  await f(); // warm
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    if (gapMs > 0) await new Promise((r) => setTimeout(r, gapMs));
    out.push(await time(f));
  }
  return out;
}

interface Row { name: string; cold: number; template: number }
const rows: Row[] = [];

type Zygote = 'python' | 'node';

async function compare(name: string, base: SandboxOptions, preload: string[], command: string[], gapMs = 0, zygote: Zygote = 'python'): Promise<void> {
  const cold = await sample(N, async () => {
    const r = await Sandbox.run({ ...base, command });
    if (r.exitCode !== 0) throw new Error(`${name} cold: ${String(r.stderr)}`);
  }, gapMs);
  // One fork kept ready, as Sandbox.run keeps one blank sandbox ready (lib/warm.ts).
  const t = await Sandbox.template({ ...base, zygote, preload, size: 1 });
  try {
    const warm = await sample(N, async () => {
      const r = await t.run(command);
      if (r.exitCode !== 0) throw new Error(`${name} template: ${String(r.stderr)}`);
    }, gapMs);
    rows.push({ name, cold: p50(cold), template: p50(warm) });
    console.log(`${name}: cold p50 ${p50(cold).toFixed(1)} ms, template p50 ${p50(warm).toFixed(1)} ms, ratio ${(p50(warm) / p50(cold)).toFixed(3)}`);
  } finally {
    await t.close();
  }
}

/**
 * fork() to a ready Sandbox against a cold Sandbox.create (each destroyed after). `size` 0:
 * each fork made on demand, as each create is; `size` 1 (runs 100 ms apart, creates too): a
 * fork prepared ahead becomes the Sandbox, which create has no counterpart of.
 */
async function forkVsCreate(base: SandboxOptions, size = 0, zygote: Zygote = 'python'): Promise<void> {
  const gap = size > 0 ? 100 : 0;
  const cold = await sample(N, async () => {
    const sb = await Sandbox.create(base);
    void sb.destroy();
  }, gap);
  const t = await Sandbox.template({ ...base, zygote, size });
  try {
    const warm = await sample(N, async () => {
      const sb = await t.fork();
      void sb.destroy();
    }, gap);
    const name = `${zygote === 'node' ? 'node ' : ''}${size > 0 ? 'fork() (prepared fork) vs create(), 100 ms apart' : 'fork() vs create()'}`;
    rows.push({ name, cold: p50(cold), template: p50(warm) });
    console.log(`${name}: create p50 ${p50(cold).toFixed(1)} ms, fork p50 ${p50(warm).toFixed(1)} ms, ratio ${(p50(warm) / p50(cold)).toFixed(3)}`);
  } finally {
    await t.close();
    await Sandbox.settle();
  }
}

async function throughput(base: SandboxOptions, seconds: number, zygote: Zygote = 'python'): Promise<void> {
  const cmd = zygote === 'node' ? ['node', '-e', 'console.log("hi")'] : ['python3', '-c', 'print("hi")'];
  const rate = async (run: () => Promise<unknown>): Promise<number> => {
    let done = 0;
    const end = Date.now() + seconds * 1000;
    await Promise.all([0, 1, 2, 3].map(async () => {
      while (Date.now() < end) {
        await run();
        done++;
      }
    }));
    return done / seconds;
  };
  const cold = await rate(() => Sandbox.run({ ...base, command: cmd }));
  const t = await Sandbox.template({ ...base, zygote, size: 4 });
  try {
    const warm = await rate(() => t.run(cmd));
    console.log(`throughput at concurrency 4 (${zygote} hello): cold ${cold.toFixed(1)}/s, template ${warm.toFixed(1)}/s, ratio ${(warm / cold).toFixed(2)}`);
  } finally {
    await t.close();
  }
}

/**
 * File-backed and shmem PSS summed over every process of the machine (KiB). PSS divides each
 * page among the processes that map it, so this sum moves only when pages are mapped that no
 * process mapped before (or are unmapped by all), not when one more process maps a page
 * others map: what forks add to it is what they add to the machine's mapped page cache.
 */
function machineShared(): number {
  let sum = 0;
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const t = readFileSync(`/proc/${p}/smaps_rollup`, 'utf8');
      for (const f of ['Pss_File', 'Pss_Shmem']) sum += Number(new RegExp(`^${f}:\\s+(\\d+)`, 'm').exec(t)?.[1] ?? 0);
    } catch {
      // gone meanwhile, or a kernel thread
    }
  }
  return sum;
}

/**
 * Memory per idle fork beyond the template: the PSS of the zygote and all its forks (each
 * process's own pages, and its share of the pages they still share) with `count` forks idle,
 * less the zygote's PSS alone before them, divided by `count`. Summed PSS counts every page
 * once, so this is what each fork adds to the machine (the per-process PSS of a fork alone
 * would also carry its share of the zygote's pages, which exist without any fork). Printed
 * whole and its anonymous part (Pss_Anon): the file-backed rest is the forks' share of page
 * cache they map but add nothing to (the interpreter's binary and libraries, which other
 * processes map too: the bench's own node maps the same /usr/bin/node), so it moves with what
 * else runs on the machine (measured -0.4 to +1.0 MiB per node fork); the anonymous part is
 * the pages each fork made or copied for itself. Idle: each fork's task sleeps (python
 * `time.sleep`, node a pending `setTimeout`). Page tables (`VmPTE`) are kernel memory,
 * outside PSS: printed apart, per fork.
 * First printed, "added to the machine": the forks' anonymous PSS, plus the change of the
 * file-backed and shmem PSS summed over every process ({@link machineShared}), which
 * redistributing shares of a page among its mappers does not move; so it does not depend on
 * what else maps the interpreter's files.
 */
async function pssPerFork(base: SandboxOptions, count: number, zygote: Zygote = 'python'): Promise<void> {
  const node = zygote === 'node';
  const t = await Sandbox.template({ ...base, zygote, preload: node ? [] : ['json'] });
  const runs: Promise<unknown>[] = [];
  try {
    const kids = (pid: number): number[] => {
      try {
        return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(' ').filter(Boolean).map(Number);
      } catch {
        return [];
      }
    };
    const kb = (pid: number, field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(readFileSync(`/proc/${pid}/${field === 'VmPTE' ? 'status' : 'smaps_rollup'}`, 'utf8'))?.[1] ?? 0);
    const tree = (pid: number, field: string): number => kb(pid, field) + kids(pid).reduce((a, p) => a + tree(p, field), 0);
    await t.run(node ? ['node', '-e', '0'] : ['python3', '-c', 'pass']); // one task run, as every later fork's zygote has
    await new Promise((r) => setTimeout(r, 500));
    const zygote = kids(t.pid).find((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(node ? 'zygote.cjs' : 'zygote.py'))!;
    const alone = tree(zygote, 'Pss');
    const aloneAnon = tree(zygote, 'Pss_Anon');
    const alonePte = tree(zygote, 'VmPTE');
    const aloneShared = machineShared();
    for (let i = 0; i < count; i++) runs.push(t.run(node ? ['node', '-e', 'setTimeout(() => {}, 4000)'] : ['python3', '-c', 'import time; time.sleep(4)']));
    await new Promise((r) => setTimeout(r, 2000));
    const forks = kids(zygote).length;
    const mib = (k: number): string => (k / forks / 1024).toFixed(2);
    // Pages that only the fork maps (its own and copied ones: Private_Clean + Private_Dirty, USS).
    const uss = kids(zygote).reduce((a, p) => a + tree(p, 'Private_Clean') + tree(p, 'Private_Dirty'), 0);
    const anon = tree(zygote, 'Pss_Anon') - aloneAnon;
    const added = anon + machineShared() - aloneShared;
    console.log(`${node ? 'node: ' : ''}memory per idle fork beyond the template, ${forks} forks: added to the machine ${mib(added)} MiB (the forks' anonymous PSS, plus file-backed and shmem PSS summed over every process); summed PSS of the zygote and its forks, less the zygote's alone, ${mib(tree(zygote, 'Pss') - alone)} MiB, of which anonymous ${mib(anon)} MiB (the rest: shares of page cache other processes map too); pages the fork alone maps (USS) ${mib(uss)} MiB; page tables ${mib(tree(zygote, 'VmPTE') - alonePte)} MiB; the zygote alone: ${(alone / 1024).toFixed(2)} MiB`);
  } finally {
    await t.close();
    await Promise.allSettled(runs);
  }
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'hutch-bench-tpl-'));
  chmodSync(dir, 0o755);
  // A deterministic stand-in for a heavy import: 200 ms of CPU at import time.
  writeFileSync(join(dir, 'slowmod.py'), 'import time\n_t = time.perf_counter()\nwhile time.perf_counter() - _t < 0.2:\n    pass\nVALUE = 1\n', { mode: 0o644 });
  // The same for node: 200 ms of CPU when it is first required.
  writeFileSync(join(dir, 'slowmod.js'), 'const t = performance.now();\nwhile (performance.now() - t < 200);\nexports.VALUE = 1;\n', { mode: 0o644 });
  const base: SandboxOptions = { mounts: [{ source: dir, target: '/opt/benchmods' }], env: { PYTHONPATH: '/opt/benchmods', NODE_PATH: '/opt/benchmods' } };
  // HUTCH_BENCH_ZYGOTES=node (or python): one runtime's rows only.
  const which = (process.env.HUTCH_BENCH_ZYGOTES ?? 'python,node').split(',');
  try {
    if (which.includes('python')) {
      await compare('python hello world', base, [], ['python3', '-c', 'print("hi")']);
      // The same with 100 ms idle before each run, cold and template alike: the next blank
      // sandbox (cold) and the next prepared fork (template) are then ready, not being made.
      await compare('python hello world, runs 100 ms apart', base, [], ['python3', '-c', 'print("hi")'], 100);
      await compare('200 ms import preloaded', base, ['slowmod'], ['python3', '-c', 'import slowmod; print(slowmod.VALUE)']);
      const hasNumpy = (await Sandbox.run({ command: ['python3', '-c', 'import numpy'] })).exitCode === 0;
      if (hasNumpy) await compare('numpy preloaded', base, ['numpy'], ['python3', '-c', 'import numpy; print(numpy.arange(3).sum())']);
      else console.log('numpy: not installed in the host image (apt-get install python3-numpy), skipped');
      await forkVsCreate(base);
      await forkVsCreate(base, 1);
      await throughput(base, 5);
      await pssPerFork(base, 8);
    }
    if (which.includes('node')) {
      const hello = ['node', '-e', 'console.log("hi")'];
      await compare('node hello world', base, [], hello, 0, 'node');
      await compare('node hello world, runs 100 ms apart', base, [], hello, 100, 'node');
      await compare('node: 200 ms import preloaded', base, ['slowmod'], ['node', '-e', 'console.log(require("slowmod").VALUE)'], 0, 'node');
      await forkVsCreate(base, 0, 'node');
      await forkVsCreate(base, 1, 'node');
      await throughput(base, 5, 'node');
      await pssPerFork(base, 8, 'node');
    }
    console.log(`\nload average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}\n| case | cold p50 | template p50 | ratio |\n| --- | --- | --- | --- |`);
    for (const r of rows) console.log(`| ${r.name} | ${r.cold.toFixed(1)} ms | ${r.template.toFixed(1)} ms | ${(r.template / r.cold).toFixed(3)} |`);
  } finally {
    await Sandbox.settle().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();

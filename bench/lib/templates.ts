/**
 * Templates against cold sandboxes, side by side in one process (docs/templates.md,
 * "Performance"): `npm run bench` (scenario `templates`) and `npm run bench:templates`.
 * - python hello world, and node's (the same rows for the built-in node zygote);
 * - a stand-in module that takes 200 ms (CPU) to import, preloaded;
 * - numpy preloaded, when the image's python3 has it (Debian's python3-numpy);
 * - fork() to a ready Sandbox against create(), on demand and prepared ahead;
 * - throughput at concurrency 4;
 * - memory per idle fork beyond the template.
 * Medians and ratios against the cold peer measured in the same run; each goal of issue 16
 * beside its row (a report, never an assertion).
 */
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox, type SandboxOptions } from '../../lib/index.js';
import type { ForkMemory, TemplateRow, TemplatesSection } from './results.js';
import { summarize } from './stats.js';

export type Zygote = 'python' | 'node';

export interface TemplatesOptions {
  /** Samples per case. */
  n: number;
  zygotes: Zygote[];
  /** Seconds per side of the throughput rows. */
  seconds: number;
  /** Progress, one line per case. */
  log: (line: string) => void;
}

/** The median, as every bench table takes it (nearest rank, bench/lib/stats.ts). */
const p50 = (xs: number[]): number => summarize(xs).p50;

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

class Bench {
  readonly rows: TemplateRow[] = [];
  readonly memory: ForkMemory[] = [];
  constructor(
    private readonly o: TemplatesOptions,
    private readonly base: SandboxOptions,
  ) {}

  private row(r: TemplateRow): void {
    this.rows.push(r);
    this.o.log(`${r.name}: ${r.peer} ${r.cold.toFixed(1)}${r.unit}, template ${r.template.toFixed(1)}${r.unit}, ratio ${(r.template / r.cold).toFixed(3)}`);
  }

  /** A template's run against a cold Sandbox.run of the same command. */
  async compare(name: string, zygote: Zygote, preload: string[], command: string[], goal: number, gapMs = 0): Promise<void> {
    const cold = await sample(this.o.n, async () => {
      const r = await Sandbox.run({ ...this.base, command });
      if (r.exitCode !== 0) throw new Error(`${name} cold: ${String(r.stderr)}`);
    }, gapMs);
    // One fork kept ready, as Sandbox.run keeps one blank sandbox ready (lib/warm.ts).
    const t = await Sandbox.template({ ...this.base, zygote, preload, size: 1 });
    try {
      const warm = await sample(this.o.n, async () => {
        const r = await t.run(command);
        if (r.exitCode !== 0) throw new Error(`${name} template: ${String(r.stderr)}`);
      }, gapMs);
      this.row({ name, peer: 'Sandbox.run', unit: 'ms', cold: p50(cold), template: p50(warm), goal });
    } finally {
      await t.close();
    }
  }

  /**
   * fork() to a ready Sandbox against a cold Sandbox.create (each destroyed after). `size` 0:
   * each fork made on demand, as each create is; `size` 1 (runs 100 ms apart, creates too): a
   * fork prepared ahead becomes the Sandbox, which create has no counterpart of.
   */
  async forkVsCreate(zygote: Zygote, size: number): Promise<void> {
    const gap = size > 0 ? 100 : 0;
    const cold = await sample(this.o.n, async () => {
      const sb = await Sandbox.create(this.base);
      void sb.destroy();
    }, gap);
    const t = await Sandbox.template({ ...this.base, zygote, size });
    try {
      const warm = await sample(this.o.n, async () => {
        const sb = await t.fork();
        void sb.destroy();
      }, gap);
      const name = `${zygote} ${size > 0 ? 'fork() (prepared fork) vs create(), 100 ms apart' : 'fork() vs create(), both on demand'}`;
      this.row({ name, peer: 'Sandbox.create', unit: 'ms', cold: p50(cold), template: p50(warm), goal: 0.5 });
    } finally {
      await t.close();
      await Sandbox.settle();
    }
  }

  /** Runs per second from 4 concurrent callers, cold and from a template (size 4). */
  async throughput(zygote: Zygote): Promise<void> {
    const cmd = zygote === 'node' ? ['node', '-e', 'console.log("hi")'] : ['python3', '-c', 'print("hi")'];
    const rate = async (run: () => Promise<unknown>): Promise<number> => {
      let done = 0;
      const end = Date.now() + this.o.seconds * 1000;
      await Promise.all([0, 1, 2, 3].map(async () => {
        while (Date.now() < end) {
          await run();
          done++;
        }
      }));
      return done / this.o.seconds;
    };
    const cold = await rate(() => Sandbox.run({ ...this.base, command: cmd }));
    const t = await Sandbox.template({ ...this.base, zygote, size: 4 });
    try {
      const warm = await rate(() => t.run(cmd));
      this.row({ name: `${zygote} hello, throughput at concurrency 4`, peer: 'Sandbox.run', unit: '/s', cold, template: warm, goal: null });
    } finally {
      await t.close();
    }
  }

  /**
   * Memory per idle fork beyond the template, `count` forks idle (each fork's task sleeps:
   * python `time.sleep`, node a pending `setTimeout`), per fork:
   * - added to the machine: the forks' anonymous PSS (Pss_Anon of the zygote's tree, less the
   *   zygote's alone) plus the change of file-backed and shmem PSS summed over every process
   *   ({@link machineShared}), which sharing a page among more mappers does not move;
   * - the summed PSS of the zygote and all its forks, less the zygote's alone: its
   *   file-backed part is the forks' share of page cache they map but add nothing to (the
   *   interpreter's binary, which other processes map too: this bench's own node maps the
   *   same /usr/bin/node), so it moves with what else runs on the machine;
   * - USS (pages only the fork maps) and page tables (`VmPTE`: kernel memory, outside PSS).
   */
  async pssPerFork(zygote: Zygote, count = 8): Promise<void> {
    const node = zygote === 'node';
    const t = await Sandbox.template({ ...this.base, zygote, preload: node ? [] : ['json'] });
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
      const z = kids(t.pid).find((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(node ? 'zygote.cjs' : 'zygote.py'))!;
      const alone = { pss: tree(z, 'Pss'), anon: tree(z, 'Pss_Anon'), pte: tree(z, 'VmPTE'), shared: machineShared() };
      for (let i = 0; i < count; i++) runs.push(t.run(node ? ['node', '-e', 'setTimeout(() => {}, 4000)'] : ['python3', '-c', 'import time; time.sleep(4)']));
      await new Promise((r) => setTimeout(r, 2000));
      const forks = kids(z).length;
      const per = (k: number): number => k / forks / 1024;
      const anon = tree(z, 'Pss_Anon') - alone.anon;
      const m: ForkMemory = {
        zygote,
        forks,
        addedMiB: per(anon + machineShared() - alone.shared),
        summedPssMiB: per(tree(z, 'Pss') - alone.pss),
        anonMiB: per(anon),
        ussMiB: per(kids(z).reduce((a, p) => a + tree(p, 'Private_Clean') + tree(p, 'Private_Dirty'), 0)),
        pageTablesMiB: per(tree(z, 'VmPTE') - alone.pte),
        zygoteMiB: alone.pss / 1024,
      };
      this.memory.push(m);
      this.o.log(`${zygote}: memory per idle fork, ${forks} forks: added to the machine ${m.addedMiB.toFixed(2)} MiB; summed PSS ${m.summedPssMiB.toFixed(2)} MiB (anonymous ${m.anonMiB.toFixed(2)}); USS ${m.ussMiB.toFixed(2)} MiB; page tables ${m.pageTablesMiB.toFixed(2)} MiB; the zygote alone ${m.zygoteMiB.toFixed(2)} MiB`);
    } finally {
      await t.close();
      await Promise.allSettled(runs);
    }
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

export async function templatesBench(o: TemplatesOptions): Promise<TemplatesSection> {
  const dir = mkdtempSync(join(tmpdir(), 'hutch-bench-tpl-'));
  chmodSync(dir, 0o755);
  // A deterministic stand-in for a heavy import: 200 ms of CPU at import time.
  writeFileSync(join(dir, 'slowmod.py'), 'import time\n_t = time.perf_counter()\nwhile time.perf_counter() - _t < 0.2:\n    pass\nVALUE = 1\n', { mode: 0o644 });
  // The same for node: 200 ms of CPU when it is first required.
  writeFileSync(join(dir, 'slowmod.js'), 'const t = performance.now();\nwhile (performance.now() - t < 200);\nexports.VALUE = 1;\n', { mode: 0o644 });
  const base: SandboxOptions = { mounts: [{ source: dir, target: '/opt/benchmods' }], env: { PYTHONPATH: '/opt/benchmods', NODE_PATH: '/opt/benchmods' } };
  const b = new Bench(o, base);
  const notes: string[] = [];
  try {
    if (o.zygotes.includes('python')) {
      const hello = ['python3', '-c', 'print("hi")'];
      await b.compare('python hello world, back to back', 'python', [], hello, 0.25);
      // 100 ms idle before each run, cold and template alike: the next blank sandbox (cold)
      // and the next prepared fork (template) are then ready, not being made.
      await b.compare('python hello world, runs 100 ms apart', 'python', [], hello, 0.25, 100);
      await b.compare('python: 200 ms import preloaded', 'python', ['slowmod'], ['python3', '-c', 'import slowmod; print(slowmod.VALUE)'], 0.1);
      const hasNumpy = (await Sandbox.run({ command: ['python3', '-c', 'import numpy'] })).exitCode === 0;
      if (hasNumpy) await b.compare('python: numpy preloaded', 'python', ['numpy'], ['python3', '-c', 'import numpy; print(numpy.arange(3).sum())'], 0.1);
      else notes.push('numpy: not installed in the host image (apt-get install python3-numpy), skipped');
      await b.forkVsCreate('python', 0);
      await b.forkVsCreate('python', 1);
      await b.throughput('python');
      await b.pssPerFork('python');
    }
    if (o.zygotes.includes('node')) {
      const hello = ['node', '-e', 'console.log("hi")'];
      await b.compare('node hello world, back to back', 'node', [], hello, 0.25);
      await b.compare('node hello world, runs 100 ms apart', 'node', [], hello, 0.25, 100);
      await b.compare('node: 200 ms import preloaded', 'node', ['slowmod'], ['node', '-e', 'console.log(require("slowmod").VALUE)'], 0.1);
      await b.forkVsCreate('node', 0);
      await b.forkVsCreate('node', 1);
      await b.throughput('node');
      await b.pssPerFork('node');
    }
  } finally {
    await Sandbox.settle().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
  return {
    kind: 'templates',
    title: 'Templates: warm interpreters against cold sandboxes',
    description: `A template's \`run\` against a cold \`Sandbox.run\` of the same command, and \`fork()\` against \`Sandbox.create\`, p50 of ${o.n} samples each, side by side in one process (docs/templates.md, "Performance"); each template keeps one fork prepared (\`size: 1\`; 4 for throughput). Ratio = template ÷ cold (for throughput, runs per second: higher is better).`,
    rows: b.rows,
    memory: b.memory,
    notes,
  };
}

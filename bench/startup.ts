/**
 * `npm run bench`: hutch's startup benchmark against the peers installed on this machine
 * (child_process.spawn, unshare, bubblewrap, crun, runc), plus throughput, memory per idle
 * sandbox and the cost curves. Writes bench/results/<date>-<host>.md, latest.md and
 * latest.svg. See docs/performance.md for what each scenario measures.
 */
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ImageStore, Sandbox } from '../lib/index.js';
import { hostRange } from '../lib/identity.js';
import { parseArgs, USAGE, type BenchArgs } from './lib/args.js';
import { cleanupAll, defer, installCleanupHandlers, undoMark, unwindTo } from './lib/cleanup.js';
import { densityCurve, layersCurve, sizeCurve } from './lib/curves.js';
import { latencyGroup, type BenchContext } from './lib/latency.js';
import { describeMachine, loadAverage, machineLines } from './lib/machine.js';
import { memory } from './lib/memory.js';
import { phases } from './lib/phases.js';
import { renderMarkdown } from './lib/report.js';
import type { RunResults, Section } from './lib/results.js';
import { renderSvg } from './lib/svg.js';
import { templatesBench } from './lib/templates.js';
import { throughput } from './lib/throughput.js';

/** The checkout (the directory above this file that has binding.gyp). */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, 'binding.gyp'))) return dir;
    dir = dirname(dir);
  }
  return process.cwd();
}

/** Processes this one started that are still alive (there should be none at the end). */
function leftoverChildren(): number[] {
  const out: number[] = [];
  for (const n of readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    try {
      const stat = readFileSync(`/proc/${n}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === process.pid) out.push(Number(n));
    } catch {
      /* gone */
    }
  }
  return out;
}

async function main(args: BenchArgs): Promise<void> {
  const startedAt = new Date();
  const machine = describeMachine();
  process.stderr.write(`hutch benchmark${args.quick ? ' (quick)' : ''}\n${machineLines(machine).join('\n')}\n\n`);
  if (process.geteuid?.() !== 0) process.stderr.write('bench: not running as root; hutch and the OCI peers may be unavailable\n');

  const tmp = mkdtempSync(join(tmpdir(), 'hutch-bench-'));
  // The curve store lives in here: the sandboxes' root (a host range uid) must pass through.
  chmodSync(tmp, 0o711);
  defer('temp dir', () => rmSync(tmp, { recursive: true, force: true }));
  const store = ImageStore.default();
  const busybox = await store.resolve('busybox');
  if (busybox.lowerdirs.length !== 1) throw new Error(`the busybox image has ${busybox.lowerdirs.length} layers; expected 1`);
  const rootfs = join(busybox.layersDir, busybox.lowerdirs[0]!);
  const shift = store.shift();
  const range = shift ? { ...shift, size: hostRange().size } : null;
  const ctx: BenchContext = { args, tmp, rootfs, range };

  const sections: Section[] = [];
  const skipped: string[] = [];
  const step = async (name: string, fn: () => Promise<Section>) => {
    process.stderr.write(`${name}...\n`);
    try {
      sections.push(await fn());
    } catch (e) {
      const msg = `${name}: ${(e as Error).stack ?? String(e)}`;
      process.stderr.write(`bench: ${msg}\n`);
      skipped.push(`${name} failed: ${(e as Error).message}`);
    }
  };
  if (args.only.has('startup') || args.only.has('pool') || args.only.has('exec')) {
    // The group's pool, exec sandbox and crun namespace go before the next scenario starts.
    const mark = undoMark();
    await step('latency', () => latencyGroup(ctx));
    await unwindTo(mark);
  }
  if (args.only.has('phases')) await step('phases', () => phases(ctx));
  if (args.only.has('throughput')) await step('throughput', () => throughput(ctx));
  if (args.only.has('memory')) await step('memory', () => memory(ctx));
  if (args.only.has('layers')) await step('layers', () => layersCurve(ctx));
  if (args.only.has('size')) await step('size', () => sizeCurve(ctx));
  if (args.only.has('density')) await step('density', () => densityCurve(ctx));
  if (args.only.has('templates')) {
    const log = (line: string): void => void process.stderr.write(`  templates: ${line}\n`);
    await step('templates', () => templatesBench({ n: args.templateSamples, zygotes: args.zygotes, seconds: args.durationS, log }));
  }

  const results: RunResults = {
    startedAt,
    finishedAt: new Date(),
    command: ['npm run bench --', ...process.argv.slice(2)].join(' ').replace(/ --$/, ''),
    machine,
    loadAtEnd: loadAverage(),
    sections,
    skipped,
  };
  const md = renderMarkdown(results);
  process.stdout.write(`\n${md}\n`);
  if (args.write) {
    const dir = resolve(args.outDir ?? join(packageRoot(), 'bench', 'results'));
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `${startedAt.toISOString().slice(0, 10)}-${machine.host}.md`);
    writeFileSync(file, md);
    writeFileSync(join(dir, 'latest.md'), md);
    writeFileSync(join(dir, 'latest.svg'), renderSvg(results));
    process.stderr.write(`bench: wrote ${file}, ${join(dir, 'latest.md')}, ${join(dir, 'latest.svg')}\n`);
  }
}

const parsed = (() => {
  try {
    return parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n`);
    process.exit(2);
  }
})();
if (parsed === 'help') {
  process.stdout.write(USAGE);
  process.exit(0);
}
installCleanupHandlers();
let code = 0;
try {
  await main(parsed);
} catch (e) {
  process.stderr.write(`bench: ${(e as Error).stack ?? String(e)}\n`);
  code = 1;
} finally {
  await Sandbox.settle();
  await cleanupAll();
  const left = leftoverChildren();
  if (left.length > 0) {
    process.stderr.write(`bench: child processes still alive after cleanup: ${left.join(', ')}\n`);
    code = code || 1;
  }
}
process.exit(code);

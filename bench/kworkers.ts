/**
 * `node dist/bench/kworkers.js PERF_SCRIPT_TXT STARTS HZ`: the kernel threads' part of a start,
 * from a `perf record -a -g` of the whole machine (no cgroup filter: kernel threads belong to
 * the root cgroup, so a cgroup-filtered profile never sees them), as bench/profile-starts.sh
 * records it with KWORKERS=1. Each sample of a kernel worker, a softirq thread or an RCU
 * thread is charged to the work it ran (the function after process_one_work: cleanup_net for
 * a network namespace's teardown, css_free_rwork_fn for a cgroup's, free_ipc, ...) or to the
 * softirq handler, and printed as ms per start. /proc/stat counts this time; the benchmark's
 * own cgroup does not. Anything else the machine ran in those seconds is in it too: read it on
 * a quiet machine, and against a recording without the workload when in doubt.
 */
import { readFileSync } from 'node:fs';
import { foldPerfScript } from './lib/flame.js';

const [input, startsArg, hzArg] = process.argv.slice(2);
const starts = Number(startsArg);
const hz = Number(hzArg);
if (!input || !(starts > 0) || !(hz > 0)) {
  process.stderr.write('usage: node dist/bench/kworkers.js PERF_SCRIPT_TXT STARTS HZ\n');
  process.exit(2);
}

const KERNEL_THREAD = /^(kworker|ksoftirqd|rcu_|migration|kcompactd)/;
const folded = foldPerfScript(readFileSync(input, 'utf8'), (c) => c);
const byWork = new Map<string, number>();
let all = 0;
let kernel = 0;
for (const [stack, n] of folded) {
  all += n;
  const frames = stack.split(';');
  if (!KERNEL_THREAD.test(frames[0]!)) continue;
  kernel += n;
  const w = frames.indexOf('process_one_work');
  const s = frames.indexOf('handle_softirqs');
  const key =
    w >= 0 && w + 1 < frames.length ? `work: ${frames[w + 1]}` : s >= 0 && s + 1 < frames.length ? `softirq: ${frames[s + 1]}` : `${frames[0]!.replace(/[/:].*$/, '')}: scheduling and other`;
  byWork.set(key, (byWork.get(key) ?? 0) + n);
}
const msPerStart = (samples: number): string => ((samples / hz / starts) * 1000).toFixed(3);
process.stdout.write(`${all} samples, ${kernel} in kernel threads (${msPerStart(kernel)} ms per start)\n`);
process.stdout.write('| kernel threads\' work | samples | ms per start |\n| --- | ---: | ---: |\n');
for (const [k, n] of [...byWork].sort((a, b) => b[1] - a[1]).slice(0, 15)) process.stdout.write(`| ${k} | ${n} | ${msPerStart(n)} |\n`);

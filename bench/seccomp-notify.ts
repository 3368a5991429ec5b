/**
 * `npm run bench:seccomp [runs] [allowed] [refused]`: what reporting seccomp refusals costs
 * (docs/seccomp.md, "Violations"), reporting on against off, interleaved run by run so that
 * drift hits both alike. Not asserted anywhere; printed as a table of medians.
 *   - `allowed` (default 1,000,000) getppid calls in one process: the filter's allowed path,
 *     which reporting must leave as it is (goal: on/off <= 1.02x);
 *   - `refused` (default 1,000,000) add_key calls: each a round trip to init with reporting on,
 *     a plain errno without; the cost lands on the sandbox that makes them.
 *   - an exec of `true` (wall time on the host, 50 per run, on and off in turn): the listener's
 *     set-up per exec.
 * Times of the loops are their own (clock_gettime inside the sandbox, test/security/refuse.c, built
 * static here with gcc), not the exec's start.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sandbox } from '../lib/index.js';
import { setSeccompReporting } from '../lib/seccomp/index.js';

const RUNS = Number(process.argv[2] ?? 5);
const ALLOWED = Number(process.argv[3] ?? 1_000_000);
const REFUSED = Number(process.argv[4] ?? 1_000_000);

function root(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'binding.gyp'))) dir = dirname(dir);
  return dir;
}

function refuseBinary(): Buffer {
  const dir = mkdtempSync(join(tmpdir(), 'hutch-bench-refuse-'));
  try {
    execFileSync('gcc', ['-static', '-O2', '-o', join(dir, 'refuse'), join(root(), 'test/security/refuse.c')]);
    return readFileSync(join(dir, 'refuse'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

const bin = refuseBinary();
async function sandbox(report: boolean): Promise<Sandbox> {
  setSeccompReporting(report);
  try {
    const sb = await Sandbox.create({ image: 'busybox' });
    await sb.writeFile('/refuse', bin, { mode: 0o755 });
    return sb;
  } finally {
    setSeccompReporting(true);
  }
}

/** The loop's time in ms (one exec). */
async function loop(sb: Sandbox, mode: 'allowed' | 'add_key', count: number): Promise<number> {
  const r = await sb.exec(['/refuse', 'time', mode, String(count)], { encoding: 'utf8' });
  if (r.exitCode !== 0) throw new Error(`refuse failed: ${String(r.stderr)}`);
  return Number(String(r.stdout).trim()) / 1e6;
}

const on = await sandbox(true);
const off = await sandbox(false);
let oneCall = 0;
try {
  const t: Record<string, number[]> = { 'allowed on': [], 'allowed off': [], 'refused on': [], 'refused off': [] };
  for (let i = 0; i < RUNS; i++) {
    // Alternate which goes first, so that a warm cache or a busy neighbour favours neither.
    const order = i % 2 ? ([['off', off], ['on', on]] as const) : ([['on', on], ['off', off]] as const);
    for (const [k, sb] of order) t[`allowed ${k}`]!.push(await loop(sb, 'allowed', ALLOWED));
  }
  for (let i = 0; i < RUNS; i++) {
    const order = i % 2 ? ([['off', off], ['on', on]] as const) : ([['on', on], ['off', off]] as const);
    for (const [k, sb] of order) t[`refused ${k}`]!.push(await loop(sb, 'add_key', REFUSED));
  }
  for (let i = 0; i < RUNS; i++) {
    // One exec each in turn: these are short enough for the machine's drift to matter.
    const xs: Record<'on' | 'off', number[]> = { on: [], off: [] };
    for (let j = 0; j < 50; j++) {
      for (const [k, sb] of [['on', on], ['off', off]] as const) {
        const t0 = performance.now();
        await sb.exec(['true']);
        xs[k].push(performance.now() - t0);
      }
    }
    for (const k of ['on', 'off'] as const) (t[`exec true ${k}`] ??= []).push(median(xs[k]));
  }
  const r = await on.exec(['/refuse', 'add_key', '1']);
  oneCall = r.violations.length;
  console.log(`| ${RUNS} runs, medians | reporting on (ms) | off (ms) | on/off | per call on (ns) | per call off (ns) |\n|---|---|---|---|---|---|`);
  for (const [what, n] of [['allowed', ALLOWED], ['refused', REFUSED], ['exec true', 1]] as const) {
    const a = median(t[`${what} on`]!), b = median(t[`${what} off`]!);
    const label = what === 'allowed' ? `${n.toLocaleString('en')} allowed getppid` : what === 'refused' ? `${n.toLocaleString('en')} refused add_key` : 'one exec of true (median of 50)';
    console.log(`| ${label} | ${a.toFixed(what === 'exec true' ? 3 : 1)} | ${b.toFixed(what === 'exec true' ? 3 : 1)} | ${(a / b).toFixed(3)}x | ${((a * 1e6) / n).toFixed(0)} | ${((b * 1e6) / n).toFixed(0)} |`);
  }
  console.log(`\nall runs (ms): ${JSON.stringify(Object.fromEntries(Object.entries(t).map(([k, xs]) => [k, xs.map((x) => Math.round(x * 10) / 10)])))}`);
  if (oneCall !== 1) console.log(`note: the reporting sandbox reported ${oneCall} violations for one refused call (expected 1)`);
} finally {
  await on.destroy();
  await off.destroy();
}

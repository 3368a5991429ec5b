/**
 * The escape probe (probe.c): built once per test worker with gcc -static, copied into a
 * sandbox, run one attempt per exec. Not a test file itself.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Sandbox } from '../../lib/index.js';

const here = dirname(fileURLToPath(import.meta.url));
let built: Buffer | undefined;

/** The static probe binary's bytes (built on first use, in a temp dir removed right after). */
export function probeBinary(): Buffer {
  if (built) return built;
  const dir = mkdtempSync(join(tmpdir(), 'hutch-probe-'));
  try {
    const out = join(dir, 'probe');
    execFileSync('gcc', ['-static', '-O2', '-Wall', '-o', out, join(here, 'probe.c')], { stdio: ['ignore', 'ignore', 'pipe'] });
    built = readFileSync(out);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return built;
}

/** Where installProbe puts it inside the sandbox. */
export const PROBE = '/probe';

export async function installProbe(sb: Sandbox): Promise<void> {
  await sb.writeFile(PROBE, probeBinary(), { mode: 0o755 });
}

/** Runs one attempt; returns the probe's single line (stderr appended if it said anything). */
export async function probe(sb: Sandbox, args: string[], opts: { user?: string } = {}): Promise<string> {
  const r = await sb.exec([PROBE, ...args], { encoding: 'utf8', ...(opts.user ? { user: opts.user } : {}) });
  const out = String(r.stdout).trim();
  const err = String(r.stderr).trim();
  if (r.reason !== 'exit' || r.exitCode !== 0) return `${out} [${r.reason} ${r.exitCode ?? r.signal}${err ? `: ${err}` : ''}]`.trim();
  return err ? `${out} [stderr: ${err}]` : out;
}

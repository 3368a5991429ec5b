/**
 * Static test programs: a C file built with `gcc -static` on the host (the busybox image has no
 * compiler), in a temp dir removed right after; built once per file per test worker.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';

const built = new Map<string, Buffer>();

/** The static binary's bytes for the C source at `source` (an absolute path). */
export function staticBinary(source: string): Buffer {
  const have = built.get(source);
  if (have) return have;
  const dir = mkdtempSync(join(tmpdir(), `hutch-${basename(source, '.c')}-`));
  try {
    const out = join(dir, 'bin');
    execFileSync('gcc', ['-static', '-O2', '-Wall', '-o', out, source], { stdio: ['ignore', 'ignore', 'pipe'] });
    const b = readFileSync(out);
    built.set(source, b);
    return b;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { leftovers, rmdirSubtreeRoot, subtreeRoots } from './leaks.js';
import { pruneLeaseTemps } from '../../lib/host/lease.js';
import { isAlive, ownerFromName } from '../../lib/host/liveness.js';
import { sandboxLeaseDir } from '../../lib/host/sandboxes.js';

/**
 * What a prune removes of processes that were killed, not exited: the spare lease files and
 * spare owner records (and lease temp files) they kept. vitest ends its workers with a signal,
 * so their exit handlers, which remove a process's own spares, do not run.
 */
function pruneKilledWorkersSpares(): void {
  pruneLeaseTemps(sandboxLeaseDir());
  const spare = join(process.env.HUTCH_ROOT ?? '/var/tmp/hutch-test-store', 'spare');
  let names: string[] = [];
  try {
    names = readdirSync(spare);
  } catch {
    /* no spare dir: nothing to prune */
  }
  for (const n of names) {
    const owner = ownerFromName(n);
    if (owner && !isAlive(owner)) rmSync(join(spare, n), { recursive: true, force: true });
  }
}

export async function teardown(): Promise<void> {
  pruneKilledWorkersSpares();
  const left = await leftovers();
  if (left.length > 0) {
    throw new Error(`hutch left these behind after the suite:\n  ${left.join('\n  ')}`);
  }
  // hutch's own subtree roots, now empty: removed (rmdir fails on anything still in use).
  for (const p of subtreeRoots()) {
    if (!p.endsWith('/hutch')) continue;
    try {
      rmdirSubtreeRoot(p);
    } catch {}
  }
}

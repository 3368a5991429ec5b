import { leftovers, rmdirSubtreeRoot, subtreeRoots } from './leaks.js';

export async function teardown(): Promise<void> {
  // Spares of processes that are gone count too (leaks.ts): each worker drops its own after
  // every file (settle.ts), and a process that exits removes them itself.
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

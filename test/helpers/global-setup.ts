import { readdirSync, rmdirSync } from 'node:fs';
import { leftovers } from './leaks.js';

/** hutch's own subtree roots (`.../hutch`), removed when empty: nothing else is touched. */
function removeEmptySubtreeRoots(dir: string, depth: number): void {
  if (depth < 0) return;
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) {
    if (!e.isDirectory()) continue;
    const p = `${dir}/${e.name}`;
    if (e.name === 'hutch') {
      try {
        rmdirSync(p); // fails (EBUSY/ENOTEMPTY) while a sandbox cgroup is below it
      } catch {}
      continue;
    }
    removeEmptySubtreeRoots(p, depth - 1);
  }
}

export async function teardown(): Promise<void> {
  const left = await leftovers();
  if (left.length > 0) {
    throw new Error(`hutch left these behind after the suite:\n  ${left.join('\n  ')}`);
  }
  removeEmptySubtreeRoots('/sys/fs/cgroup', 5);
}

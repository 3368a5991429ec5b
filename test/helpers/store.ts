import { rmSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import { idSource, removeStoreTree } from '../../lib/host/ids.js';
import { hostMode } from '../../lib/host/mode.js';

/**
 * Removes a test's own image store. As an ordinary user with subordinate ids its layers
 * belong to those ids, which only the holder user namespace may remove (docs/rootless.md).
 */
export function removeStore(dir: string): void {
  if (hostMode() === 'user' && idSource().kind === 'subordinate') removeStoreTree(dirname(dir), basename(dir));
  else rmSync(dir, { recursive: true, force: true });
}

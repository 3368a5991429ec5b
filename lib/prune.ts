/**
 * `hutch prune` and the tests' entry to the host cleanup: `ImageStore.prune()` with the host
 * side's options. The work is lib/host/prune.ts (cgroups, network, leases) and
 * lib/image/gc.ts (the store's part).
 */
import { ImageStore } from './image/store.js';
import { ownerRecords } from './image/gc.js';
import type { Owner } from './host/liveness.js';
import type { HostPruneOptions, HostPruneResult } from './host/prune.js';

export { DEFAULT_PRUNE_GRACE_MS } from './host/prune.js';

export interface PruneAllOptions extends HostPruneOptions {
  /** The store to prune besides the host; default `ImageStore.default()`. */
  store?: ImageStore;
}

export type PruneAllResult = HostPruneResult;

/** The owner records in `store`'s `sandboxes/` dir: id -> owner (undefined when the dir has no readable record). */
export function sandboxOwners(store: ImageStore): Map<string, Owner | undefined> {
  return ownerRecords(store.root);
}

/**
 * Removes what dead hutch processes left: their sandbox cgroups, network links, rules and
 * leases, id leases, and the store's leftovers. Safe while other hutch processes run.
 */
export async function pruneAll(options: PruneAllOptions = {}): Promise<PruneAllResult> {
  const { store = ImageStore.default(), ...host } = options;
  return store.pruneHost(host);
}

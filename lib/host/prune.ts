/**
 * Removes what dead hutch processes left on the host: sandbox cgroups (under whichever
 * subtree they were made), network links, nftables state and address leases, id-range leases,
 * sandbox leases, and through the caller's store callbacks the records and loop-mounted disks
 * of dead sandboxes (in whichever store they used) and the store's own leftovers. The kernel
 * frees the rest when a sandbox's last process ends (its namespaces, overlay, scratch tmpfs),
 * and every sandbox process ends with its owner (PR_SET_PDEATHSIG; init exits on EOF of its
 * control socket).
 *
 * Who is alive: a sandbox lease (lib/host/sandboxes.ts) or a store owner record names the
 * owning process; lib/host/liveness.ts says whether it still runs. A cgroup that neither
 * names (being created right now, or made by an older hutch) is kept while it holds a process
 * or is younger than the grace period.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { cgroupDriver, type CgroupDriver } from '../cgroup/driver.js';
import { HutchError, hostFailure } from '../errors.js';
import { idsStateDir, pruneIds } from '../idrange.js';
import { networkStateDir, pruneNetwork } from '../network/index.js';
import { pruneLeaseTemps } from './lease.js';
import { isAlive, type Owner } from './liveness.js';
import { dropSandboxLease, readSandboxLease, sandboxLeaseDead, sandboxLeaseDir, sandboxLeases } from './sandboxes.js';

/** A cgroup no lease or record names, younger than this, may be one a live process is creating. */
export const DEFAULT_PRUNE_GRACE_MS = 30_000;

/** What the host prune needs of the store it runs for. */
export interface PruneStoreSide {
  readonly root: string;
  /** The store's owner records: sandbox id -> owner (undefined when unreadable). */
  owners(): Map<string, Owner | undefined>;
  /** Removes a dead sandbox's record and disk (unmounted first) in the store at `root`; bytes freed. */
  removeDeadSandbox(root: string, id: string): Promise<number>;
  /** The store's own leftovers (dead owners' records, dead operations, trash; `gc`: also unused layers and blobs). */
  pruneStore(): Promise<{ removedBytes: number; sandboxes: string[] }>;
}

export interface HostPruneOptions {
  /** Where sandbox cgroups are (as `HUTCH_CGROUP_PARENT`); default: `$HUTCH_CGROUP_PARENT`, else `<caller's cgroup>/hutch`. */
  cgroupParent?: string;
  /** See {@link DEFAULT_PRUNE_GRACE_MS}; 0 when no live process can be creating a sandbox under the parent. */
  graceMs?: number;
  /** Also prune the network's leases, links and rules (default true). */
  network?: boolean;
}

/** What {@link ImageStore.prune} removed: leftovers of sandboxes whose owner is gone, and unused store data. */
export interface HostPruneResult {
  /** Ids of the sandbox cgroups removed. */
  cgroups: string[];
  /** Lease slots (8 hex) whose link, rules and lease were removed. */
  network: string[];
  /** Ids of the dead sandboxes whose records were removed (from any store). */
  sandboxes: string[];
  /** Bytes the store part freed (layers, blobs, temp files, records, disks). */
  removedBytes: number;
  /** Id-range leases of dead processes removed. */
  idRanges: number;
}

/** True when some `cgroup.procs` of the sandbox cgroup `id` under `roots` lists a process. */
function hasProcesses(roots: readonly string[], id: string): boolean {
  for (const r of roots) {
    try {
      if (readFileSync(`${r}/${id}/cgroup.procs`, 'utf8').trim() !== '') return true;
    } catch {
      /* not in this hierarchy */
    }
  }
  return false;
}

/** Age of the sandbox cgroup `id` (its youngest directory), ms; Infinity when none is found. */
function cgroupAgeMs(roots: readonly string[], id: string): number {
  let age = Infinity;
  for (const r of roots) {
    try {
      age = Math.min(age, Date.now() - statSync(`${r}/${id}`).ctimeMs);
    } catch {
      /* not in this hierarchy */
    }
  }
  return age;
}

/** A prune failure as a HutchError (ECLEANUP naming what could not be removed), never a raw error. */
function typed(what: string, e: unknown): HutchError {
  return HutchError.is(e) ? e : hostFailure('ECLEANUP', `prune: ${what}`, e);
}

/**
 * Removes every leftover of sandboxes whose owner is gone, and never anything of a live one.
 * Order: cgroups (killing anything still in them), network, the disks and records of dead
 * sandboxes of other stores, the store's own part, id leases; the sandbox leases of the dead
 * go last, so a prune that fails or is killed half-way is finished by the next one.
 * @throws HutchError (the first failure, after every step was tried).
 */
export async function pruneHost(store: PruneStoreSide, options: HostPruneOptions = {}): Promise<HostPruneResult> {
  const graceMs = options.graceMs ?? DEFAULT_PRUNE_GRACE_MS;
  const leases = sandboxLeases();
  const owners = store.owners();
  const errors: HutchError[] = [];

  const liveFor = (roots: readonly string[]) => (id: string): boolean => {
    // A lease or record may also have appeared since we read them: read again before judging.
    const lease = leases.get(id) ?? readSandboxLease(id);
    if (lease) return isAlive(lease);
    const o = owners.get(id) ?? store.owners().get(id);
    if (o !== undefined) return isAlive(o);
    return hasProcesses(roots, id) || cgroupAgeMs(roots, id) < graceMs;
  };
  const drivers: CgroupDriver[] = [];
  try {
    drivers.push(cgroupDriver(options.cgroupParent !== undefined ? { parent: options.cgroupParent } : {}));
  } catch (e) {
    errors.push(typed('cgroups', e));
  }
  // Dead sandboxes made under another subtree (another HUTCH_CGROUP_PARENT): that subtree too.
  const seen = new Set(drivers.map((d) => d.subtreeRoots[0]));
  for (const [id, l] of leases) {
    if (!l?.cgroupParent || seen.has(l.cgroupParent) || !sandboxLeaseDead(id, l)) continue;
    seen.add(l.cgroupParent);
    try {
      drivers.push(cgroupDriver({ parent: l.cgroupParent }));
    } catch {
      /* that subtree is gone, or it holds this process: not ours to judge */
    }
  }
  const cgroups: string[] = [];
  for (const d of drivers) {
    cgroups.push(...(await d.prune(liveFor(d.leafParents)).catch((e: unknown) => (errors.push(typed('cgroups', e)), [] as string[]))));
  }

  const network =
    options.network === false ? [] : await pruneNetwork().then((r) => r.removed, (e: unknown) => (errors.push(typed('network', e)), [] as string[]));

  const sandboxes: string[] = [];
  let removedBytes = 0;
  const dead = [...leases].filter(([id, l]) => sandboxLeaseDead(id, l));
  for (const [id, l] of dead) {
    if (!l || l.store === store.root) continue; // the store part below judges its own records
    try {
      removedBytes += await store.removeDeadSandbox(l.store, id);
      sandboxes.push(id);
    } catch (e) {
      errors.push(typed(`the record of sandbox ${id} in ${l.store}`, e));
    }
  }
  try {
    const r = await store.pruneStore();
    removedBytes += r.removedBytes;
    sandboxes.push(...r.sandboxes);
  } catch (e) {
    errors.push(typed(`the store ${store.root}`, e));
  }
  let idRanges = 0;
  try {
    idRanges = pruneIds();
    // What takers killed inside createLease left.
    for (const d of [sandboxLeaseDir(), idsStateDir(), networkStateDir()]) pruneLeaseTemps(d);
  } catch (e) {
    errors.push(typed('id leases', e));
  }
  // A dead sandbox's lease goes only with its cgroup: one still there (a task that would not
  // die, another prune removing it right now) keeps its lease, so that the next prune finds it.
  const kept = new Set<string>();
  for (const [id, l] of dead) {
    const dir = l?.cgroupParent ? join(l.cgroupParent, id) : undefined;
    if (dir === undefined) continue;
    for (let t = 0; t < 20 && existsSync(dir); t++) await sleep(50);
    if (!existsSync(dir)) continue;
    kept.add(id);
    errors.push(new HutchError('ECLEANUP', `prune: the cgroup ${dir} of dead sandbox ${id} could not be removed`, { path: dir, hint: 'see what still runs in it (cat cgroup.procs, cgroup.freeze) and run prune() again' }));
  }
  if (errors.length > 0) throw errors[0];
  for (const [id] of dead) if (!kept.has(id) && sandboxLeaseDead(id, readSandboxLease(id))) dropSandboxLease(id);
  return { cgroups, network, sandboxes: [...new Set(sandboxes)], removedBytes, idRanges };
}

/**
 * Removes what crashed hutch processes left on the host: sandbox cgroups, network links,
 * nftables elements and leases, id-range leases, and the store's leftovers (import work dirs, trash,
 * `sandboxes/<id>/` records of dead owners). The kernel frees everything else by itself
 * when a sandbox's last process ends (its namespaces, overlay, scratch tmpfs), and every
 * sandbox process ends with its owner (PR_SET_PDEATHSIG, and init exits on EOF of its
 * control socket), so what is left is only what hutch made on the host side.
 *
 * Whose is what: a sandbox cgroup is named by the sandbox id; the store's
 * `sandboxes/<id>/owner.json` names the owning process (pid + start time, lib/image/owner.ts).
 * A lease names its owner itself (lib/network/lease.ts).
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { join } from 'node:path';
import { cgroupDriver, type CgroupDriverOptions } from './cgroup/driver.js';
import { ImageStore } from './image/store.js';
import { isAlive, parseOwner, type Owner } from './image/owner.js';
import { pruneNetwork } from './network/index.js';
import { pruneIds } from './idrange.js';

/** A cgroup with no owner record younger than this may be one a live process is creating. */
export const DEFAULT_PRUNE_GRACE_MS = 30_000;

export interface PruneAllOptions {
  /** The store whose `sandboxes/<id>/owner.json` records say which sandboxes are live; default `ImageStore.default()`. */
  store?: ImageStore;
  /** Where sandbox cgroups are (as `HUTCH_CGROUP_PARENT`); default: `$HUTCH_CGROUP_PARENT`, else `<caller's cgroup>/hutch`. */
  cgroupParent?: string;
  /**
   * A sandbox cgroup that no owner record in `store` names is removed only when it holds no
   * process and is older than this: it may be another store's sandbox, or one a live process
   * is creating right now (its record is written while it is set up). Default 30 s; 0 when
   * the caller knows no live process uses the cgroup parent (tests, `hutch prune --now`).
   */
  graceMs?: number;
  /** Also prune the network's leases, links and rules (default true). */
  network?: boolean;
}

export interface PruneAllResult {
  /** Ids of the sandbox cgroups removed. */
  cgroups: string[];
  /** Lease slots (8 hex) whose link, rules and lease were removed. */
  network: string[];
  /** Ids of the `sandboxes/<id>` records of dead owners removed from the store. */
  sandboxes: string[];
  /** Bytes the store's prune freed (layers, blobs, temp files, records). */
  removedBytes: number;
  /** Id-range leases (6.8+ per-sandbox ranges) of dead processes removed. */
  idRanges: number;
}

/** The owner records in `store`'s `sandboxes/` dir: id -> owner (undefined when the dir has no readable record). */
export function sandboxOwners(store: ImageStore): Map<string, Owner | undefined> {
  const out = new Map<string, Owner | undefined>();
  let names: string[];
  try {
    names = readdirSync(join(store.root, 'sandboxes'));
  } catch {
    return out;
  }
  for (const n of names) {
    let owner: Owner | undefined;
    try {
      owner = parseOwner(JSON.parse(readFileSync(join(store.root, 'sandboxes', n, 'owner.json'), 'utf8')));
    } catch {
      owner = undefined;
    }
    out.set(n, owner);
  }
  return out;
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

/**
 * Removes what crashed hutch processes left: their sandbox cgroups, network links, rules and
 * leases, and the store's leftovers. Safe while other hutch processes run: a sandbox whose
 * owner record names a live process is kept, and so is an unrecorded cgroup that has
 * processes or is younger than `graceMs`.
 *
 * Order: the owner records are read first (the store prune removes the dead ones), then the
 * cgroups go (killing anything still in them), then the network, then the store.
 */
export async function pruneAll(options: PruneAllOptions = {}): Promise<PruneAllResult> {
  const store = options.store ?? ImageStore.default();
  const graceMs = options.graceMs ?? DEFAULT_PRUNE_GRACE_MS;
  const owners = sandboxOwners(store);
  const cgOptions: CgroupDriverOptions = options.cgroupParent !== undefined ? { parent: options.cgroupParent } : {};
  const driver = cgroupDriver(cgOptions);
  const roots = driver.subtreeRoots;
  const isLive = (id: string): boolean => {
    const o = owners.get(id);
    if (o !== undefined) return isAlive(o);
    // Not recorded here (being created, or another store's): keep it while it runs or is young.
    // A record may also have appeared since we read them.
    const again = sandboxOwners(store).get(id);
    if (again !== undefined) return isAlive(again);
    return hasProcesses(roots, id) || cgroupAgeMs(roots, id) < graceMs;
  };
  const errors: unknown[] = [];
  const cgroups = await driver.prune(isLive).catch((e: unknown) => (errors.push(e), [] as string[]));
  const network = options.network === false ? [] : await pruneNetwork().then((r) => r.removed, (e: unknown) => (errors.push(e), [] as string[]));
  const dead = [...owners].filter(([, o]) => o !== undefined && !isAlive(o)).map(([id]) => id);
  const { removedBytes } = await store.prune().catch((e: unknown) => (errors.push(e), { removedBytes: 0 }));
  const empty = await pruneEmptyRecords(store, graceMs).catch((e: unknown) => (errors.push(e), [] as string[]));
  const idRanges = pruneIds();
  if (errors.length > 0) throw errors[0];
  return { cgroups, network, sandboxes: [...dead, ...empty], removedBytes, idRanges };
}

/**
 * Removes `sandboxes/<id>/` directories that hold nothing: left by a process killed between
 * markInUse's mkdir and the rename of its owner.json, or between release's unlink and rmdir
 * (ImageStore.prune only judges directories that have an owner record). Under the store lock,
 * which markInUse holds from mkdir to rename, so an empty directory is never one being made.
 */
export async function pruneEmptyRecords(store: ImageStore, graceMs = DEFAULT_PRUNE_GRACE_MS): Promise<string[]> {
  const dir = join(store.root, 'sandboxes');
  return store.lock.run(async () => {
    const removed: string[] = [];
    for (const n of await fsp.readdir(dir).catch(() => [] as string[])) {
      try {
        const st = await fsp.stat(join(dir, n));
        if (Date.now() - st.mtimeMs < graceMs) continue;
        await fsp.rmdir(join(dir, n));
        removed.push(n);
      } catch {
        /* not empty (a record) or gone */
      }
    }
    return removed;
  });
}

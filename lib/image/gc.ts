/**
 * The store's garbage collection: unused layers and blobs (`collect`), the trash, and the
 * leftovers of dead processes (operations under tmp/, records and loop-mounted disks of dead
 * sandboxes). Host-wide cleanup (cgroups, links, leases) is lib/host/prune.ts, which calls
 * in here through `storeSide`.
 */
import { idSource, removeStoreTree } from '../host/ids.js';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { HutchError, hostFailure } from '../errors.js';
import { unmountUnder } from '../disk.js';
import { isAlive, ownerFromName, parseOwner, type Owner } from '../host/liveness.js';
import type { PruneStoreSide } from '../host/prune.js';
import { pruneLeaseTemps } from '../host/lease.js';
import { takeSpareRecords } from './spares.js';
import { readSandboxLease } from '../host/sandboxes.js';
import { HEX64 } from './blob.js';
import type { StoreContext } from './context.js';
import type { LayerInfo } from './types.js';

/** The owner records in `root`'s `sandboxes/` dir: id -> owner (undefined when the dir has no readable record). */
export function ownerRecords(root: string): Map<string, Owner | undefined> {
  const out = new Map<string, Owner | undefined>();
  let names: string[];
  try {
    names = readdirSync(join(root, 'sandboxes'));
  } catch {
    return out;
  }
  for (const n of names) {
    let owner: Owner | undefined;
    try {
      owner = parseOwner(JSON.parse(readFileSync(join(root, 'sandboxes', n, 'owner.json'), 'utf8')));
    } catch {
      owner = undefined;
    }
    out.set(n, owner);
  }
  return out;
}

/** Sandboxes with an owner record and the image each uses. */
export async function imageUsers(store: StoreContext): Promise<{ sandbox: string; image: string; pid: number; start: string }[]> {
  const out = [];
  let names: string[] = [];
  try {
    names = await fsp.readdir(store.path('sandboxes'));
  } catch {
    return [];
  }
  for (const n of names) {
    try {
      const v = JSON.parse(await fsp.readFile(store.path('sandboxes', n, 'owner.json'), 'utf8')) as { image?: unknown };
      const o = parseOwner(v);
      if (o && typeof v.image === 'string') out.push({ sandbox: n, image: v.image, ...o });
    } catch {
      /* no owner record: not a sandbox this code tracks */
    }
  }
  return out;
}

/**
 * Under the lock: moves every layer and blob no image record and no live import needs into
 * tmp/trash, so they vanish from layers/ atomically, and drops the build cache entries of
 * removed images.
 */
export async function collect(store: StoreContext): Promise<{ trash: (string | null)[]; bytes: number }> {
  const layers = new Set<string>();
  const blobs = new Set<string>();
  for (const n of await fsp.readdir(store.path('images'))) {
    if (!n.endsWith('.json')) continue;
    const rec = await store.readRecord(n.slice(0, 64));
    if (!rec) continue;
    for (const l of rec.layers) layers.add(l.slice(7));
    for (const b of rec.layerBlobs) blobs.add(b.digest.slice(7));
    blobs.add(rec.configBlob.digest.slice(7));
  }
  for (const n of await fsp.readdir(store.path('tmp'))) {
    const owner = ownerFromName(n);
    if (!owner || !isAlive(owner)) continue;
    const pins = await fsp.readFile(store.path('tmp', n, 'pins'), 'utf8').catch(() => '');
    for (const p of pins.split('\n')) if (HEX64.test(p)) layers.add(p);
  }
  const trash: (string | null)[] = [];
  let bytes = 0;
  for (const n of await fsp.readdir(store.path('layers'))) {
    if (!HEX64.test(n) || layers.has(n)) continue;
    const info = await fsp.readFile(store.path('layerinfo', `${n}.json`), 'utf8').then((t) => JSON.parse(t) as LayerInfo).catch(() => undefined);
    bytes += info?.sizeBytes ?? (await treeBytes(store.path('layers', n)));
    trash.push(await toTrash(store, store.path('layers', n)));
    await fsp.rm(store.path('layerinfo', `${n}.json`), { force: true });
  }
  for (const n of await fsp.readdir(store.path('layerinfo'))) {
    if (!layers.has(n.slice(0, 64)) && !existsSync(store.path('layers', n.slice(0, 64)))) await fsp.rm(store.path('layerinfo', n), { force: true });
  }
  // Build cache entries whose image is gone (removed): they would only ever miss.
  for (const n of await fsp.readdir(store.path('buildcache')).catch(() => [] as string[])) {
    const file = store.path('buildcache', n);
    const image = await fsp.readFile(file, 'utf8').then((t) => (JSON.parse(t) as { image?: unknown }).image, () => undefined);
    if (typeof image === 'string' && image.startsWith('sha256:') && existsSync(store.path('images', `${image.slice(7)}.json`))) continue;
    bytes += (await fsp.lstat(file).catch(() => undefined))?.size ?? 0;
    await fsp.rm(file, { force: true });
  }
  for (const n of await fsp.readdir(store.path('blobs', 'sha256'))) {
    if (blobs.has(n)) continue;
    bytes += (await fsp.lstat(store.path('blobs', 'sha256', n)).catch(() => undefined))?.size ?? 0;
    await fsp.rm(store.path('blobs', 'sha256', n), { force: true });
  }
  return { trash, bytes };
}

/**
 * Moves `p` into tmp/trash; null when it is already gone (a dead sandbox's record can be
 * removed at the same time by another process's leftover cleanup, lib/prune.ts, which does
 * not take the store's lock).
 */
export async function toTrash(store: StoreContext, p: string): Promise<string | null> {
  await fsp.mkdir(store.path('tmp', 'trash'), { recursive: true, mode: 0o700 });
  const t = store.path('tmp', 'trash', randomBytes(8).toString('hex'));
  try {
    await fsp.rename(p, t);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  return t;
}

/** unmountUnder, its failure as ESTORE naming the mount. */
export async function unmountDisks(paths: string[]): Promise<void> {
  try {
    await unmountUnder(paths);
  } catch (e) {
    throw new HutchError('ESTORE', `unmounting a dead sandbox's disk under ${paths.join(', ')} failed: ${(e as Error).message.trim()}`, {
      errno: 'EBUSY',
      path: paths[0],
      hint: 'find what still uses it (fuser -vm <path>), stop it, and run ImageStore.prune() again',
      cause: e,
    });
  }
}

/**
 * Removes the trash entries. A mount left inside one (a dead sandbox's disk moved here by an
 * older prune) is unmounted first; an entry that still cannot go is an ESTORE after the
 * others are removed, never a raw error.
 */
export async function emptyTrash(trash: (string | null)[]): Promise<void> {
  const entries = trash.filter((t): t is string => t !== null);
  let failure: unknown;
  try {
    await unmountDisks(entries);
  } catch (e) {
    failure = e;
  }
  for (const t of entries) {
    try {
      await rmTree(t);
    } catch (e) {
      failure ??= hostFailure('ESTORE', `removing ${t} from the store's trash`, e);
    }
  }
  if (failure) throw failure;
}


/**
 * The store's own leftovers, under the lock: operations under tmp/ of dead processes, the
 * trash, and the records (with their disks, unmounted first) of sandboxes whose owner is gone;
 * with `gc`, also every layer and blob no image needs. Then the `sandboxes/<id>` dirs that a
 * process killed while writing its record left (empty, or with an owner.json cut short; older
 * than `graceMs`, and never one whose sandbox lease names a live owner).
 */
export async function pruneLeftovers(store: StoreContext, gc: boolean, graceMs: number): Promise<{ removedBytes: number; sandboxes: string[] }> {
  store.ensure();
  const sandboxes: string[] = [];
  const { trash, bytes } = await store.lock.run(async () => {
    const found = gc ? await collect(store) : { trash: [] as (string | null)[], bytes: 0 };
    for (const n of await fsp.readdir(store.path('tmp'))) {
      if (n === 'trash') {
        // Left by a prune or remove that died before emptying it.
        for (const t of await fsp.readdir(store.path('tmp', 'trash'))) found.trash.push(store.path('tmp', 'trash', t));
        continue;
      }
      const owner = ownerFromName(n);
      if (owner && isAlive(owner)) continue;
      if (!owner) {
        // Not ours to judge by name; leave files that are younger than a minute.
        const st = await fsp.lstat(store.path('tmp', n)).catch(() => undefined);
        if (!st || Date.now() - st.mtimeMs < 60_000) continue;
      }
      found.bytes += await treeBytes(store.path('tmp', n));
      found.trash.push(await toTrash(store, store.path('tmp', n)));
    }
    // Spare owner records (records.ts retireRecord) of processes that are gone, and this
    // process's own when asked to collect (ImageStore.prune wants the store as small as it can
    // be; the next sandbox makes its record anew): not the background cleanup's (`gc` false),
    // which the first sandbox of a process starts and which would otherwise take the spares
    // that process's first sandboxes just left. Another live process's stay.
    const ours = new Set(gc ? takeSpareRecords(store.root).map((p) => basename(p)) : []);
    for (const n of await fsp.readdir(store.path('spare')).catch(() => [] as string[])) {
      const owner = ownerFromName(n);
      if (owner && isAlive(owner) && !ours.has(n)) continue;
      const t = await toTrash(store, store.path('spare', n));
      if (t) found.trash.push(t);
    }
    const records = ownerRecords(store.root);
    for (const [id, o] of records) {
      if (o === undefined || isAlive(o)) continue;
      const dir = store.path('sandboxes', id);
      // A dead persistent sandbox's disk is still loop-mounted at <dir>/disk: unmounted
      // first, or its directory could not be removed from the trash (EBUSY).
      await unmountDisks([dir]);
      found.bytes += await treeBytes(dir);
      found.trash.push(await toTrash(store, dir));
      sandboxes.push(id);
    }
    // A record is written in place (mkdir, then owner.json) after its sandbox lease: a dir
    // with no readable owner.json is one being written (its lease's owner is alive) or one
    // whose writer was killed half-way (empty, or an owner.json cut short). With a lease that
    // names a dead owner it goes at once; with none (dropped by an earlier prune), after the grace.
    for (const n of await fsp.readdir(store.path('sandboxes')).catch(() => [] as string[])) {
      if (records.get(n) !== undefined) continue;
      const lease = readSandboxLease(n);
      if (lease && isAlive(lease)) continue;
      try {
        const st = await fsp.stat(store.path('sandboxes', n));
        if (!lease && Date.now() - st.mtimeMs < graceMs) continue;
        if (existsSync(store.path('sandboxes', n, 'owner.json'))) {
          const t = await toTrash(store, store.path('sandboxes', n));
          if (t) found.trash.push(t);
        } else await fsp.rmdir(store.path('sandboxes', n));
        sandboxes.push(n);
      } catch {
        /* not empty (something else than a record) or gone */
      }
    }
    return found;
  });
  await emptyTrash(trash);
  pruneLeaseTemps(store.root); // of the store lock
  return { removedBytes: bytes, sandboxes };
}

/**
 * Removes the record and disk of dead sandbox `id` in the store at `root` (another store than
 * the one being pruned: no lock of its is held, so the dir is moved out whole first).
 */
export async function removeDeadSandbox(root: string, id: string): Promise<number> {
  const dir = join(root, 'sandboxes', id);
  if (!existsSync(dir)) return 0;
  let owner: Owner | undefined;
  try {
    owner = parseOwner(JSON.parse(readFileSync(join(dir, 'owner.json'), 'utf8')));
  } catch {
    owner = undefined;
  }
  if (owner && isAlive(owner)) return 0;
  await unmountDisks([dir]);
  const bytes = await treeBytes(dir);
  const t = join(root, 'tmp', 'trash', randomBytes(8).toString('hex'));
  try {
    await fsp.mkdir(join(root, 'tmp', 'trash'), { recursive: true, mode: 0o700 });
    await fsp.rename(dir, t);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw hostFailure('ESTORE', `moving the dead sandbox's record ${dir} out of the store`, e);
  }
  await emptyTrash([t]);
  return bytes;
}

/** What lib/host/prune.ts needs of `store`; `gc` also collects unused layers and blobs. */
export function storeSide(store: StoreContext, gc: boolean, graceMs: number): PruneStoreSide {
  return {
    root: store.root,
    owners: () => ownerRecords(store.root),
    removeDeadSandbox,
    pruneStore: () => pruneLeftovers(store, gc, graceMs),
  };
}

/** Bytes of regular files under p (lstat, no symlinks followed). */
export async function treeBytes(p: string): Promise<number> {
  let st;
  try {
    st = await fsp.lstat(p);
  } catch {
    return 0;
  }
  if (!st.isDirectory()) return st.isFile() ? st.size : 0;
  let sum = 0;
  for (const n of await fsp.readdir(p).catch(() => [] as string[])) sum += await treeBytes(join(p, n));
  return sum;
}

/** rm -rf that also works on trees with read-only directories when not root. */
export async function rmTree(p: string): Promise<void> {
  // Files of the holder namespace's ids (lib/host/ids.ts) can only be removed inside it.
  if (idSource().kind === 'subordinate') return removeStoreTree(dirname(p), basename(p));
  try {
    await fsp.rm(p, { recursive: true, force: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EACCES' && (e as NodeJS.ErrnoException).code !== 'EPERM') throw e;
    const fix = async (d: string) => {
      await fsp.chmod(d, 0o700).catch(() => undefined);
      for (const ent of await fsp.readdir(d, { withFileTypes: true }).catch(() => [])) {
        if (ent.isDirectory()) await fix(join(d, ent.name));
      }
    };
    await fix(p);
    await fsp.rm(p, { recursive: true, force: true });
  }
}

/**
 * The on-disk writable layer of a `persistent: true` sandbox, in the store, limited to
 * `limits.disk`: by a project quota where the store's filesystem has them (XFS mounted with
 * prjquota or pquota), else by a loop-mounted ext4 image file of that size. Writes past the
 * quota get ENOSPC either way. Ephemeral sandboxes never come here: their layer is a tmpfs.
 */
import { execFile } from 'node:child_process';
import { promises as fsp, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { chownAsOwner, idSource, removeStoreTree } from './host/ids.js';
import { promisify } from 'node:util';
import { HutchError, hostFailure } from './errors.js';

const run = promisify(execFile);

export type DiskMethod = 'project-quota' | 'loop' | 'directory';

export interface PersistentDisk {
  /** Holds upper/ and work/ for overlay. */
  readonly upperDir: string;
  readonly method: DiskMethod;
  /** 'major:minor' of the block device under the layer (for io limits). */
  readonly device: string;
  release(): Promise<void>;
}

interface MountEntry {
  mountPoint: string;
  fstype: string;
  options: string;
  device: string;
}

/** A mount point as mountinfo writes it, its octal escapes (`\040` for a space...) decoded. */
function mountPath(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** The mount holding `path` (the longest mount point that is a prefix), from mountinfo. */
export function mountOf(path: string): MountEntry | undefined {
  let best: MountEntry | undefined;
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length < 10) continue;
    const sep = f.indexOf('-');
    const mp = mountPath(f[4]!);
    if (!(path === mp || path.startsWith(mp.endsWith('/') ? mp : `${mp}/`))) continue;
    if (best && best.mountPoint.length > mp.length) continue;
    best = { mountPoint: mp, fstype: f[sep + 1]!, options: `${f[5]},${f[sep + 3] ?? ''}`, device: f[2]! };
  }
  return best;
}

/**
 * Unmounts every mount of this mount namespace at or under one of `paths`, deepest first: the
 * loop-mounted disk of a persistent sandbox whose owner died (`sandboxes/<id>/disk`), before
 * its directory is moved to the store's trash and removed (a mount point cannot be removed:
 * EBUSY, and its image file would keep its bytes). A loop device attached by `mount -o loop`
 * detaches itself on unmount (autoclear). A mount still busy is detached lazily: it leaves
 * the tree now and the kernel frees it when its last user goes.
 * @returns the mount points unmounted.
 */
export async function unmountUnder(paths: readonly string[]): Promise<string[]> {
  if (paths.length === 0) return [];
  const under = (mp: string) => paths.some((p) => mp === p || mp.startsWith(p.endsWith('/') ? p : `${p}/`));
  const mounted = (): string[] => {
    const out: string[] = [];
    for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
      const f = line.split(' ');
      if (f.length < 10) continue;
      const mp = mountPath(f[4]!);
      if (under(mp)) out.push(mp);
    }
    return out;
  };
  const found = mounted().sort((a, b) => b.length - a.length);
  for (const mp of found) {
    try {
      await run('umount', [mp]).catch(() => run('umount', ['-l', mp]));
    } catch (e) {
      // Another process's prune may have unmounted it meanwhile (prune is host-wide and
      // takes no lock over a dead sandbox's disk): gone is what we wanted.
      if (mounted().includes(mp)) throw e;
    }
  }
  return found;
}

/** Which method applies to a store at `root`: checkHost() reports it. */
export function diskMethod(root: string): DiskMethod {
  const m = mountOf(root);
  if (m && m.fstype === 'xfs' && /(^|,)(prjquota|pquota|pqnoenforce)(,|$)/.test(m.options)) return 'project-quota';
  return 'loop';
}

function projectId(id: string): number {
  // 28 bits of the sandbox id, never 0 (the default project).
  return (parseInt(id.slice(0, 7), 16) % 0x0fffffff) + 1;
}

async function makeLayerDirs(dir: string, r: { uid: number; gid: number }): Promise<void> {
  for (const d of ['upper', 'work']) {
    await fsp.mkdir(join(dir, d), { mode: 0o755 });
    // The ids are the holder namespace's outside root mode (lib/host/ids.ts): given inside it.
    chownAsOwner(join(dir, d), r.uid, r.gid);
  }
}

/** Removes a writable layer's directory, inside the holder namespace where its ids are that namespace's. */
function removeLayerDir(dir: string): Promise<void> {
  if (idSource().kind === 'subordinate') return Promise.resolve(removeStoreTree(dirname(dir), basename(dir)));
  return fsp.rm(dir, { recursive: true, force: true });
}

/**
 * A plain directory in the store for the writable layer, without a size limit: for kernels
 * before 6.6, whose tmpfs cannot keep the user.* xattrs overlay needs in its upper dir
 * inside a user namespace, when no disk limit was asked for (with one, a loop image is used).
 */
export async function preparePlainUpper(storeRoot: string, id: string, r: { uid: number; gid: number }): Promise<PersistentDisk> {
  const dir = join(storeRoot, 'sandboxes', id, 'disk');
  try {
    await fsp.mkdir(dir, { recursive: true, mode: 0o711 });
    await makeLayerDirs(dir, r);
  } catch (e) {
    await removeLayerDir(dir).catch(() => undefined);
    throw hostFailure('ESETUP', `making the writable layer under ${dir}`, e);
  }
  return {
    upperDir: dir,
    method: 'directory',
    device: mountOf(dir)?.device ?? '0:0',
    release: () => removeLayerDir(dir),
  };
}

/**
 * The writable layer a plan puts on the store's disk (lib/plan writableLayer: 'disk', a size
 * limited one; 'dir', a plain directory), for sandbox `id` with root ids `r`; null for a tmpfs,
 * which the sandbox (or template fork) makes itself.
 */
export function prepareUpper(upper: { kind: 'tmpfs' | 'disk' | 'dir'; sizeBytes?: number }, storeRoot: string, id: string, r: { uid: number; gid: number }): Promise<PersistentDisk | null> {
  if (upper.kind === 'disk') return preparePersistentDisk(storeRoot, id, upper.sizeBytes!, r);
  if (upper.kind === 'dir') return preparePlainUpper(storeRoot, id, r);
  return Promise.resolve(null);
}

/** Makes the layer of sandbox `id` under `<store>/sandboxes/<id>/disk`, `bytes` big. */
export async function preparePersistentDisk(
  storeRoot: string,
  id: string,
  bytes: number,
  r: { uid: number; gid: number },
): Promise<PersistentDisk> {
  const base = join(storeRoot, 'sandboxes', id);
  const dir = join(base, 'disk');
  await fsp.mkdir(dir, { recursive: true, mode: 0o711 });
  const method = diskMethod(storeRoot);
  try {
    if (method === 'project-quota') {
      const m = mountOf(dir)!;
      const pid = projectId(id);
      // New files under dir inherit the project (PROJINHERIT), so everything overlay writes counts.
      await run('xfs_io', ['-c', `chproj ${pid}`, '-c', 'chattr +P', dir]);
      await run('xfs_quota', ['-x', '-c', `limit -p bhard=${bytes} ${pid}`, m.mountPoint]);
      await makeLayerDirs(dir, r);
      return {
        upperDir: dir,
        method,
        device: m.device,
        release: async () => {
          await run('xfs_quota', ['-x', '-c', `limit -p bhard=0 ${pid}`, m.mountPoint]).catch(() => undefined);
          await fsp.rm(dir, { recursive: true, force: true });
        },
      };
    }
    const img = join(base, 'disk.img');
    const fh = await fsp.open(img, 'wx', 0o600);
    await fh.truncate(bytes);
    await fh.close();
    await run('mkfs.ext4', ['-q', '-F', '-E', `root_owner=${r.uid}:${r.gid}`, '-O', '^has_journal', img]);
    await run('mount', ['-o', 'loop,nosuid,nodev', img, dir]);
    await makeLayerDirs(dir, r);
    const st = statSync(dir);
    const device = `${Math.floor(st.dev / 256) & 0xfff}:${(st.dev & 0xff) | ((st.dev >> 12) & 0xfff00)}`;
    return {
      upperDir: dir,
      method,
      device,
      release: async () => {
        await run('umount', [dir]).catch(() => run('umount', ['-l', dir]).catch(() => undefined));
        await fsp.rm(dir, { recursive: true, force: true });
        await fsp.rm(img, { force: true });
      },
    };
  } catch (e) {
    await run('umount', [dir]).catch(() => undefined);
    await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
    await fsp.rm(join(base, 'disk.img'), { force: true }).catch(() => undefined);
    if (HutchError.is(e)) throw e;
    throw hostFailure('ESETUP', `making the persistent writable layer (${method}) under ${dir}`, e);
  }
}

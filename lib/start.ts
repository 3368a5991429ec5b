/**
 * The host side of a sandbox's start, for `Sandbox.create`: the owner record, the writable
 * layer's disk when there is one, the cgroup, the id range, the detached trees the child
 * mounts (layers, host dirs, volumes), then the child itself — cloned now, or a blank made
 * ahead (lib/warm.ts) released — and its setup, awaited. On any failure everything made here
 * is undone, in reverse, before the error is thrown.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { cgroupDriver, type SandboxCgroup } from './cgroup/driver.js';
import { preparePersistentDisk, preparePlainUpper, type PersistentDisk } from './disk.js';
import { HutchError } from './errors.js';
import { RANGE_SIZE } from './identity.js';
import { acquireIds, type SandboxIds } from './idrange.js';
import type { ImageStore } from './image/store.js';
import type { ResolvedImage } from './image/types.js';
import { isFailure, native, type NativeFailure, type Spawned } from './native.js';
import type { ResolvedSandboxOptions } from './options.js';
import { KERNEL_HAS_LOWERDIR_PLUS, TMPFS_USER_XATTR, rootMountpoint } from './plan.js';
import { setupError } from './setup-errors.js';
import { isDirFd, killAndReap, waitSetup } from './spawn.js';
import type { Trace } from './trace.js';
import { takeBlank } from './warm.js';

/**
 * Default size of the writable layer, 1 GiB (a tmpfs, charged to the sandbox's memory as it
 * fills), when `limits.disk` is not given.
 *
 * @example
 * ```ts
 * const sb = await Sandbox.create({ limits: { disk: DEFAULT_DISK_BYTES * 4 } }); // 4 GiB
 * ```
 */
export const DEFAULT_DISK_BYTES = 1024 * 1024 * 1024;
/**
 * Size of the sandbox's /dev/shm, 64 MiB (a tmpfs: its pages are charged to the sandbox's
 * memory as they fill, like Docker's default `--shm-size`).
 */
export const DEFAULT_SHM_BYTES = 64 * 1024 * 1024;
/** Paths hidden from the sandbox and paths made read-only (relative to its root). */
const MASKED = ['proc/acpi', 'proc/asound', 'proc/kcore', 'proc/keys', 'proc/latency_stats', 'proc/timer_list',
  'proc/timer_stats', 'proc/sched_debug', 'proc/scsi', 'sys/firmware'];
const READONLY = ['proc/bus', 'proc/fs', 'proc/irq', 'proc/sys', 'proc/sysrq-trigger'];

/** A sandbox whose init runs: what Sandbox keeps of its start. */
export interface StartedSandbox {
  id: string;
  ids: SandboxIds;
  cgroup: SandboxCgroup;
  disk: PersistentDisk | null;
  spawned: Spawned;
  /** Sandbox.run: the key of the blank to make for the next run like this one, or null. */
  warmKey: string | null;
}

export interface StartHooks {
  /** Sandbox.run: use and make blanks (an ephemeral tmpfs layer only). */
  warm: boolean;
  /** Called once the child exists, before its setup is awaited. */
  spawned?(s: StartedSandbox): void;
  /** Called when the start fails after `spawned` was, before the child is killed. */
  failed?(): void;
}

export async function startSandbox(opts: ResolvedSandboxOptions, store: ImageStore, image: ResolvedImage, tr: Trace, hooks: StartHooks): Promise<StartedSandbox> {
  const n = native();
  // Sandbox.run: a blank made ahead for this store and these limits saves the clone, the
  // cgroup and the id range (lib/warm.ts); an ephemeral tmpfs layer only (no disk to make).
  const warmKey = hooks.warm && !opts.persistent && TMPFS_USER_XATTR ? `${image.layersDir}\0${image.image.id}\0${JSON.stringify(opts.limits.cgroup)}` : null;
  const blank = warmKey !== null ? await takeBlank(warmKey) : undefined;
  const id = blank?.id ?? randomBytes(6).toString('hex');
  const ids = blank?.ids ?? acquireIds(image.layersDir);
  tr.mark('ids');
  const fds: number[] = [];
  let cgroup: SandboxCgroup | null = null;
  let spawned: Spawned | undefined;
  let disk: PersistentDisk | null = null;
  let marked = false;
  let started: StartedSandbox | undefined;
  try {
    // The owner record comes first: a prune in another process then never takes this
    // sandbox's cgroup or disk, made below, for a crashed one's.
    if (!blank) await store.markInUse(image.image.id, id); // a blank's was written with it
    marked = true;
    tr.mark('record');
    if (opts.persistent) disk = await preparePersistentDisk(store.root, id, opts.limits.diskBytes ?? DEFAULT_DISK_BYTES, ids);
    else if (!TMPFS_USER_XATTR) {
      // Before 6.6 the writable layer goes to the store's disk: a loop image when a disk
      // limit was asked for (enforced), else a plain directory.
      disk = opts.limits.diskBytes !== null ? await preparePersistentDisk(store.root, id, opts.limits.diskBytes, ids) : await preparePlainUpper(store.root, id, ids);
    }
    cgroup = blank?.cgroup ?? cgroupDriver().create(id, opts.limits.cgroup, disk ? { ioDevice: disk.device } : undefined);
    if (blank) spawned = blank.spawned; // from here on, a failure kills it like any child
    tr.mark('cgroup');
    const binds: { fd: number; target: string; file: boolean }[] = [];
    const bind = (source: string, target: string, readonly: boolean): void => {
      const t = n.openTree(source, readonly);
      if (isFailure(t)) throw setupError(t);
      const fd = t.fd;
      fds.push(fd);
      // The tree is what the user named: a path that reaches elsewhere through a symlink
      // (swapped in, or not) is refused rather than followed.
      const real = t.real;
      if (real !== source) {
        throw new HutchError('EINVAL', `invalid option mounts: source ${source} resolves through a symlink to ${real}; name the real path`, { path: source });
      }
      binds.push({ fd, target: target.replace(/^\/+/, ''), file: !isDirFd(fd) });
    };
    // The host image's system dirs are read-only and never idmapped: inside, host files show
    // as an unprivileged host user sees them (owned by ids the sandbox does not map, shown as
    // nobody), so a host file closed to others stays closed to the sandbox's root whatever its
    // capabilities. Volumes are not idmapped either: what the sandbox writes there belongs to
    // its own unprivileged range. Both are locked read-only (addon/child_lock.cc).
    for (const p of image.hostBinds) bind(p, p, true);
    for (const m of opts.mounts) bind(m.source, m.target, m.readonly);
    const layerFds: number[] = [];
    if (ids.layersUserns !== null) {
      for (const hex of image.lowerdirs) {
        const t = n.openTree(join(image.layersDir, hex), true, ids.layersUserns);
        if (isFailure(t)) throw setupError({ ...t, step: 'layers' });
        fds.push(t.fd);
        layerFds.push(t.fd);
      }
    }
    const diskBytes = opts.limits.diskBytes ?? DEFAULT_DISK_BYTES;
    tr.mark('trees');
    const setupPlan = {
      hostname: opts.hostname ?? `hutch-${id}`,
      layersDir: image.layersDir,
      lowerdirs: image.lowerdirs.join(':'),
      legacyOverlay: !KERNEL_HAS_LOWERDIR_PLUS,
      ...(layerFds.length > 0 ? { layerFds } : {}),
      scratchSize: String(diskBytes),
      shmSize: String(DEFAULT_SHM_BYTES),
      ...(disk ? { upperDir: disk.upperDir } : {}),
      rootMountpoint: rootMountpoint(store),
      binds,
      masked: MASKED,
      readonly: READONLY,
      readonlyRoot: opts.readonlyRootfs,
    };
    let s: Spawned | NativeFailure | undefined;
    if (blank) {
      const r = n.releaseBlank(blank.spawned.pid, setupPlan);
      if (!isFailure(r)) s = blank.spawned;
      else {
        // The blank died while it waited (killed by someone): start the ordinary way, in
        // its cgroup and id range, once it is reaped.
        spawned = undefined;
        await killAndReap(blank.spawned);
      }
    }
    s ??= n.spawn({
      ...setupPlan,
      uidMap: `0 ${ids.uid} ${RANGE_SIZE}\n`,
      gidMap: `0 ${ids.gid} ${RANGE_SIZE}\n`,
      cgroupFd: cgroup.cloneIntoFd ?? -1,
      // v1: the child joins these itself, first thing (SandboxCgroup.joinFiles).
      joinFiles: [...cgroup.joinFiles],
    });
    tr.mark('clone');
    for (const fd of fds.splice(0)) n.close(fd);
    if (isFailure(s)) throw setupError(s);
    spawned = s;
    started = { id, ids, cgroup, disk, spawned: s, warmKey };
    hooks.spawned?.(started);
    const setup = await waitSetup(s);
    tr.mark('setup');
    if (setup) throw setupError(setup);
  } catch (e) {
    for (const fd of fds) n.close(fd);
    if (started) hooks.failed?.();
    if (spawned) await killAndReap(spawned);
    await cgroup?.destroy().catch(() => undefined);
    await disk?.release().catch(() => undefined);
    if (marked) await store.release(id).catch(() => undefined);
    ids.release();
    throw e;
  }
  return started!;
}

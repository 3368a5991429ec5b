/**
 * The plan of one sandbox: every decision its start needs, made here from the resolved
 * options, the image and the host's kernel features, before anything is made. The writable
 * layer's kind and size, the overlay's path on this kernel, every mount in the order the child
 * makes it (the /dev nodes and /dev/shm's size included), the masked and read-only paths and
 * their attributes, the id map's shape, the cgroup's limits, the fd layout init is given.
 * lib/start.ts then makes the resources (ids, cgroup, disk, detached trees) and
 * lib/plan/encode.ts turns the plan and those into the buffer the setup child walks.
 */
import { idSource } from '../host/ids.js';
import { hostMode } from '../host/mode.js';
import { HutchError } from '../errors.js';
import { kernelFeatures, type KernelFeatures } from '../host/features.js';
import type { ImageStore } from '../image/store.js';
import type { ResolvedImage } from '../image/types.js';
import type { CgroupLimits } from '../limits.js';
import type { ResolvedSandboxOptions } from '../options.js';
import { rootMountpoint } from './image.js';

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
/** mount(2)'s data is one page: the legacy overlay path holds this much layer list. */
export const LEGACY_LOWERDIRS_MAX = 4096 - 128;

/** Paths hidden from the sandbox and paths made read-only (relative to its root). */
export const MASKED = ['proc/acpi', 'proc/asound', 'proc/kcore', 'proc/keys', 'proc/latency_stats', 'proc/timer_list',
  'proc/timer_stats', 'proc/sched_debug', 'proc/scsi', 'sys/firmware'];
export const READONLY = ['proc/bus', 'proc/fs', 'proc/irq', 'proc/sys', 'proc/sysrq-trigger'];
/** The host device nodes a sandbox gets, bound onto files in its /dev (a user namespace cannot mknod). */
const DEV_NODES = ['null', 'zero', 'full', 'random', 'urandom', 'tty'];
const DEV_LINKS: [text: string, path: string][] = [['pts/ptmx', '/dev/ptmx'], ['/proc/self/fd', '/dev/fd'],
  ['/proc/self/fd/0', '/dev/stdin'], ['/proc/self/fd/1', '/dev/stdout'], ['/proc/self/fd/2', '/dev/stderr']];

export type MountAttr = 'rdonly' | 'nosuid' | 'nodev' | 'noexec';

/** One mount of the sandbox, after its root: in the order the child makes them. */
export type PlanMount =
  /** A host path (a detached tree opened by the parent) at `target` (relative to the root). */
  | { kind: 'bind'; source: string; target: string; readonly: boolean; origin: 'image' | 'volume' }
  /** A new filesystem; `target` is absolute inside the root. */
  | { kind: 'fs'; step: 'proc' | 'dev'; fstype: 'proc' | 'tmpfs' | 'devpts'; target: string; attrs: MountAttr[]; options: [string, string][] }
  /** A host device node bound onto a file at `target`. */
  | { kind: 'devNode'; host: string; target: string }
  | { kind: 'symlink'; text: string; path: string };

/** The writable layer: a tmpfs (its size is the disk quota), or a directory in the store. */
export type PlanUpper =
  | { kind: 'tmpfs'; sizeBytes: number }
  /** A loop image (or project quota) of this size in the store, mounted: persistent, or before 6.6 with a disk limit. */
  | { kind: 'disk'; sizeBytes: number }
  /** A plain directory in the store (before 6.6, no disk limit asked). */
  | { kind: 'dir' };

export interface SandboxPlan {
  /** null: `hutch-<id>`, named once the id is known (a blank brings its own). */
  hostname: string | null;
  overlay: {
    /** 'lowerdir+' (6.8+: one fsconfig per layer) or 'legacy' (mount(2)'s data, one page). */
    mode: 'lowerdir+' | 'legacy';
    layersDir: string;
    /** Layer names inside layersDir, top first. */
    layers: string[];
    /** The legacy path's mount(2) data up to ",upperdir=" (the child adds the scratch dirs). */
    legacyData: string | null;
  };
  upper: PlanUpper;
  /** The host directory the root is attached at before pivot_root. */
  rootMountpoint: string;
  mounts: PlanMount[];
  masked: string[];
  /** A masked directory gets an empty tmpfs with these attributes and options. */
  maskDir: { attrs: MountAttr[]; options: [string, string][] };
  readonly: string[];
  readonlyAttrs: MountAttr[];
  readonlyRoot: boolean;
  /** uid/gid 0..size-1 inside map to a host range of this size (lib/idrange.ts picks it). */
  /** How many ids the sandbox maps, and whether its setup may drop supplementary groups (not with a one-id map written unprivileged). */
  idMap: { size: number; setgroups: boolean };
  cgroup: { limits: CgroupLimits; ioOnDisk: boolean };
  /** init's fds: the control socket, the writable layer's root, the ready/error pipe. */
  fds: { ctl: 3; scratch: 4; ready: 5 };
  /** Sandbox.run's warm starts apply (an ephemeral tmpfs layer only). */
  warmable: boolean;
}

/**
 * Where a sandbox's writable layer goes (also each template fork's, lib/template/fork.ts):
 * persistent, on the store's disk; else a tmpfs of `limits.disk` (default 1 GiB), except
 * before 6.6, whose tmpfs keeps no user.* xattrs (overlay's upper dir needs them inside a user
 * namespace): then on the store's disk too, a loop image (or XFS project) when a disk limit
 * was asked for (enforced), else a plain directory. Outside root mode a persistent layer is a
 * plain directory (planSandbox refuses a size limit for it).
 */
export function writableLayer(opts: ResolvedSandboxOptions, features: KernelFeatures = kernelFeatures()): PlanUpper {
  const diskBytes = opts.limits.diskBytes ?? DEFAULT_DISK_BYTES;
  if (opts.persistent) return hostMode() === 'root' ? { kind: 'disk', sizeBytes: diskBytes } : { kind: 'dir' };
  if (features.tmpfsUserXattr) return { kind: 'tmpfs', sizeBytes: diskBytes };
  return opts.limits.diskBytes !== null ? { kind: 'disk', sizeBytes: opts.limits.diskBytes } : { kind: 'dir' };
}

/**
 * Plans a sandbox. Throws EUNSUPPORTED for what this host cannot do with these options,
 * before anything is made.
 */
export function planSandbox(opts: ResolvedSandboxOptions, image: ResolvedImage, store: ImageStore, features: KernelFeatures = kernelFeatures()): SandboxPlan {
  if (opts.limits.cgroup.io && !opts.persistent) {
    throw new HutchError('EUNSUPPORTED', 'limits.io cannot apply: the writable layer of an ephemeral sandbox is a tmpfs (memory), not a block device; use persistent: true to keep it on disk, where io limits apply');
  }
  const legacy = !features.overlayLowerdirPlus;
  const lowerdirs = image.lowerdirs.join(':');
  if (legacy && lowerdirs.length > LEGACY_LOWERDIRS_MAX) {
    throw new HutchError('EUNSUPPORTED', `image ${image.image.id} has ${image.lowerdirs.length} layers: before Linux 6.8 overlay takes its layer list in one page (about 60 layers); flatten the image (commit it, or build it with fewer steps) or upgrade the kernel`);
  }
  // Outside root mode a persistent layer is a plain directory (writableLayer): its size limit
  // (a loop mount or XFS project quotas) is host root's to set up (docs/rootless.md).
  if (opts.persistent && hostMode() !== 'root' && opts.limits.diskBytes !== null) {
    throw new HutchError('EUNSUPPORTED', `limits.disk of a persistent sandbox is not supported outside host root (this is ${hostMode()} mode): its size limit needs a loop mount or XFS project quotas, which only host root may set up; drop limits.disk (the layer then has no size limit), use an ephemeral sandbox (its limits.disk is a tmpfs size), or run as root`);
  }
  const upper = writableLayer(opts, features);
  const mounts: PlanMount[] = [];
  // The host image's system dirs are read-only and never idmapped: inside, host files show as
  // an unprivileged host user sees them. Volumes are not idmapped either: what the sandbox
  // writes there belongs to its own unprivileged range. Both are locked (addon/child_lock.cc).
  for (const p of image.hostBinds) mounts.push({ kind: 'bind', source: p, target: p.replace(/^\/+/, ''), readonly: true, origin: 'image' });
  for (const m of opts.mounts) mounts.push({ kind: 'bind', source: m.source, target: m.target.replace(/^\/+/, ''), readonly: m.readonly, origin: 'volume' });
  mounts.push({ kind: 'fs', step: 'proc', fstype: 'proc', target: '/proc', attrs: ['nosuid', 'nodev', 'noexec'], options: [] });
  // A minimal /dev: a small tmpfs, the harmless host nodes, a private devpts, shm, the links.
  mounts.push({ kind: 'fs', step: 'dev', fstype: 'tmpfs', target: '/dev', attrs: ['nosuid', 'noexec'], options: [['mode', '0755'], ['size', '65536']] });
  for (const d of DEV_NODES) mounts.push({ kind: 'devNode', host: `/dev/${d}`, target: `/dev/${d}` });
  mounts.push({ kind: 'fs', step: 'dev', fstype: 'devpts', target: '/dev/pts', attrs: ['nosuid', 'noexec'], options: [['ptmxmode', '0666'], ['mode', '0620']] });
  mounts.push({ kind: 'fs', step: 'dev', fstype: 'tmpfs', target: '/dev/shm', attrs: ['nosuid', 'nodev'], options: [['mode', '1777'], ['size', String(DEFAULT_SHM_BYTES)]] });
  for (const [text, path] of DEV_LINKS) mounts.push({ kind: 'symlink', text, path });
  return {
    hostname: opts.hostname ?? null,
    overlay: {
      mode: legacy ? 'legacy' : 'lowerdir+',
      layersDir: image.layersDir,
      layers: [...image.lowerdirs],
      // Layers by name, relative to the layers dir (the child's cwd when it mounts).
      legacyData: legacy ? `userxattr,lowerdir=${lowerdirs}` : null,
    },
    upper,
    rootMountpoint: rootMountpoint(store),
    mounts,
    masked: MASKED,
    maskDir: { attrs: ['rdonly', 'nosuid', 'nodev', 'noexec'], options: [['size', '0']] },
    readonly: READONLY,
    readonlyAttrs: ['rdonly', 'nosuid', 'nodev'],
    readonlyRoot: opts.readonlyRootfs,
    idMap: { size: idSource().size, setgroups: !idSource().denySetgroups },
    cgroup: { limits: opts.limits.cgroup, ioOnDisk: upper.kind !== 'tmpfs' },
    fds: { ctl: 3, scratch: 4, ready: 5 },
    warmable: upper.kind === 'tmpfs',
  };
}

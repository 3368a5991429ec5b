/**
 * What this host's kernel can do, probed once per process: the one place that reads the
 * kernel release. Planning (lib/plan/), the id ranges (lib/idrange.ts), seccomp's `minKernel`
 * conditions and `checkHost()` all ask here, so that they can never disagree. Nothing here
 * falls back: a feature is there or not, the planner decides what that means, and
 * `checkHost()` reports it.
 */
import { release } from 'node:os';

export interface KernelFeatures {
  /** The release as `uname -r` prints it. */
  kernelRelease: string;
  /** [major, minor] of the release; [0, 0] when it cannot be read. */
  version: [number, number];
  /** clone3 with CLONE_PIDFD and CLONE_INTO_CGROUP (5.7). */
  clone3: boolean;
  /** overlayfs mountable inside a user namespace (5.11). */
  overlayInUserns: boolean;
  /** fsopen, open_tree, move_mount and mount_setattr complete (5.12). */
  newMountApi: boolean;
  /** Idmapped mounts of tmpfs and overlay lowers (6.3). */
  idmappedMounts: boolean;
  /** tmpfs keeps user.* xattrs: an overlay upper dir on tmpfs in a user namespace (6.6). */
  tmpfsUserXattr: boolean;
  /** overlay's "lowerdir+" (one fsconfig per layer, 6.8); before it, mount(2)'s one-page data. */
  overlayLowerdirPlus: boolean;
}

/** Parses "6.8.0-45-generic" into [6, 8]; [0, 0] when it is not a release. */
export function parseRelease(rel: string): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(rel);
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}

/** The features a kernel of this release has (pure: tests pass any release). */
export function featuresOf(rel: string): KernelFeatures {
  const version = parseRelease(rel);
  const atLeast = (major: number, minor: number): boolean => version[0] > major || (version[0] === major && version[1] >= minor);
  return {
    kernelRelease: rel,
    version,
    clone3: atLeast(5, 7),
    overlayInUserns: atLeast(5, 11),
    newMountApi: atLeast(5, 12),
    idmappedMounts: atLeast(6, 3),
    tmpfsUserXattr: atLeast(6, 6),
    overlayLowerdirPlus: atLeast(6, 8),
  };
}

let probed: KernelFeatures | undefined;

/** This host's kernel features, probed on first use. */
export function kernelFeatures(): KernelFeatures {
  return (probed ??= featuresOf(release()));
}

/** True when this host's kernel is at least major.minor. */
export function kernelAtLeast(major: number, minor: number): boolean {
  const [a, b] = kernelFeatures().version;
  return a > major || (a === major && b >= minor);
}

/**
 * The cgroup driver interface and the choice of driver, made once per process from the
 * detected host layout: pure v2 → V2Driver; pure v1 and hybrid → V1Driver (which on hybrid
 * also makes a leaf in the cgroup2 hierarchy for grouping, cgroup.kill and CLONE_INTO_CGROUP).
 * Callers never branch on the kind.
 */
import { unsupported } from '../errors.js';
import { detectCgroups } from './detect.js';
import { parentCgroupPath } from './parent.js';
import { V1Driver } from './v1.js';
import { V2Driver } from './v2.js';

export { detectCgroups } from './detect.js';
export type { CgroupHost, CgroupHierarchy } from './detect.js';
export type { CgroupUsage, CgroupCreateOptions, SandboxCgroup, CgroupDriver, CgroupDriverOptions } from './types.js';
import type { CgroupDriver, CgroupDriverOptions } from './types.js';

const drivers = new Map<string, CgroupDriver>();

/**
 * The driver for this host, created once per (kind, parent) and cached. Detection reads
 * /proc/self/mountinfo and /proc/self/cgroup once per process.
 */
export function cgroupDriver(options: CgroupDriverOptions = {}): CgroupDriver {
  const host = detectCgroups();
  const fromEnv = options.parent === undefined && process.env.HUTCH_CGROUP_PARENT !== undefined;
  const field = fromEnv ? 'HUTCH_CGROUP_PARENT' : 'parent';
  const parent = options.parent ?? process.env.HUTCH_CGROUP_PARENT;
  const kind = options.kind ?? (host.kind === 'v2' ? 'v2' : 'v1');
  const key = `${kind}\0${parent ?? ''}`;
  let d = drivers.get(key);
  if (!d) {
    const parentPath = parentCgroupPath(host, parent, field);
    if (kind === 'v2') {
      if (!host.unified) throw unsupported('cgroups', 'mount cgroup2 (mount -t cgroup2 none /sys/fs/cgroup) or the v1 controllers memory and pids');
      d = new V2Driver(host, parentPath, field);
    } else {
      if (host.kind === 'v2') throw unsupported('the cgroup v1 driver', 'this host has only cgroup v2; use the default driver');
      d = new V1Driver(host, parentPath, field);
    }
    drivers.set(key, d);
  }
  return d;
}

/**
 * Removes leftover sandbox cgroups of crashed processes under hutch's subtree (ids are the
 * directory names); `isLive(id)` says which ids still belong to a live sandbox.
 */
export async function pruneCgroups(isLive: (id: string) => boolean, options: CgroupDriverOptions = {}): Promise<string[]> {
  return cgroupDriver(options).prune(isLive);
}

/**
 * The cgroup driver interface and the choice of driver, made once per process from the
 * detected host layout: pure v2 → V2Driver; pure v1 and hybrid → V1Driver (which on hybrid
 * also makes a leaf in the cgroup2 hierarchy for grouping, cgroup.kill and CLONE_INTO_CGROUP).
 * Callers never branch on the kind.
 */
import { constants, existsSync } from 'node:fs';
import { unsupported } from '../errors.js';
import { hostMode, mayAccess } from '../host/mode.js';
import { NoCgroupDriver } from './none.js';
import { V1_CONTROLLERS, type CgroupHost } from './detect.js';
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
 * Outside root mode with no HUTCH_CGROUP_PARENT: null when the caller's own cgroup is delegated
 * (hutch may create its subtree there, or already has one it may write), else why not. The
 * caller's cgroup is where hutch's subtree goes by default (parent.ts), so that is what must be
 * writable: the v2 cgroup (pure v2), or each v1 hierarchy's (v1, hybrid).
 */
function undelegated(host: CgroupHost): string | null {
  if (hostMode() === 'root') return null;
  const used = V1_CONTROLLERS.filter((c) => host.kind === 'v1' || c !== 'freezer');
  const dirs = host.kind === 'v2' ? [host.unified] : [...new Set(used.map((c) => host.v1.get(c)).filter((h) => h !== undefined))];
  for (const h of dirs) {
    if (!h) return 'no cgroup2 mount';
    if (h.callerDir === null) return `this process's cgroup is not visible under ${h.mount}`;
    const own = `${h.callerDir}/hutch`;
    if (!mayAccess(h.callerDir, constants.W_OK) && !(existsSync(own) && mayAccess(own, constants.W_OK))) return `this process's cgroup ${h.callerDir} is not delegated to it (not writable)`;
  }
  return null;
}

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
    const missing = parentPath === null && options.kind === undefined ? undelegated(host) : null;
    if (missing !== null) {
      d = new NoCgroupDriver(missing);
      drivers.set(key, d);
      return d;
    }
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

/**
 * No cgroups: outside root mode when the caller has no delegated cgroup (API.md "Where hutch
 * runs"). Sandboxes still run with their namespaces, rlimits, timeouts and output caps; a
 * sandbox is ended by killing its init (PID 1 of its pid namespace: the kernel kills every
 * other process of the namespace with it). A limit only a cgroup enforces is EUNSUPPORTED,
 * naming how to get a delegated cgroup; the default `pids` is replaced by a default `nproc`
 * rlimit (lib/limits.ts), which the kernel counts per user namespace, so per sandbox.
 */
import { unsupported } from '../errors.js';
import type { CgroupDriver, CgroupLimits, CgroupUsage, SandboxCgroup } from './types.js';

/** How to get cgroups without root: said by every EUNSUPPORTED of this driver and by checkHost(). */
export const DELEGATION_FIX =
  'run hutch in a delegated cgroup (systemd-run --user --scope -p Delegate=yes node app.js, or a container with a writable cgroup namespace), or set HUTCH_CGROUP_PARENT to a cgroup directory this user may create children in';

/** The limits of `l` that need a cgroup, by option name (empty: none asked for). */
export function cgroupOnlyLimits(l: CgroupLimits): string[] {
  const out: string[] = [];
  if (l.memoryBytes !== null) out.push('memory');
  if (l.swapExplicit) out.push('memorySwap');
  if (l.memoryAccounting === 'sandbox' && l.memoryBytes === null && !l.swapExplicit) out.push('memoryAccounting');
  if (l.cpuQuotaUs !== null) out.push('cpus');
  if (l.cpuset !== null) out.push('cpuset');
  if (l.pidsExplicit) out.push('pids');
  if (l.io !== null) out.push('io');
  return out;
}

const EMPTY: CgroupUsage = { pids: 0, oomKills: 0 };

class NoCgroup implements SandboxCgroup {
  readonly cloneIntoFd = null;
  closeCloneFd(): void {}
  readonly procsFiles: readonly string[] = [];
  readonly joinFiles: readonly string[] = [];
  readonly dirs: readonly string[] = [];
  readonly joinDirs: readonly string[] = [];
  readonly ownMemory = false;
  constructor(readonly id: string) {}
  liveRssPeak(): number {
    return 0;
  }
  usage(): CgroupUsage {
    return { ...EMPTY };
  }
  oomKills(): number {
    return 0;
  }
  resetPeak(): boolean {
    return false;
  }
  /** Nothing to do: the runtime kills the sandbox's init, which ends its pid namespace. */
  kill(): void {}
  freeze(): Promise<boolean> {
    return Promise.reject(unsupported('freezing a sandbox (pause, commit of a running sandbox) without a cgroup', DELEGATION_FIX));
  }
  async thaw(): Promise<void> {}
  async destroy(): Promise<void> {}
}

export class NoCgroupDriver implements CgroupDriver {
  readonly kind = 'none' as const;
  readonly subtreeRoots: readonly string[] = [];
  readonly leafParents: readonly string[] = [];
  constructor(readonly reason: string) {}
  create(id: string, limits: CgroupLimits): SandboxCgroup {
    const asked = cgroupOnlyLimits(limits);
    if (asked.length > 0) {
      throw unsupported(`limits.${asked.join(', limits.')} (a cgroup limit; ${this.reason})`, DELEGATION_FIX);
    }
    return new NoCgroup(id);
  }
  async prune(): Promise<string[]> {
    return [];
  }
}

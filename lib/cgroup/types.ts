/** The cgroup layer's types, shared by the driver front door (driver.ts) and its backends (v1.ts, v2.ts). */

/**
 * The memory cgroup 'shared' sandboxes are charged to, made once below hutch's subtree root:
 * v1 and hybrid, in the memory hierarchy (tasks join it); v2, the parent of those sandboxes'
 * leaves (memory enabled above it, not in it). A name no sandbox id can take (ids do not start
 * with "."), so prune and listings never take it for a sandbox.
 */
export const SHARED_MEMCG = '.shared';
/**
 * v1/hybrid: the name prefix of a process's pin in the shared memory cgroup
 * (`.pin-<pid>-<start>`, lib/cgroup/v1.ts prepareShared): a child cgroup with no task that
 * keeps another process's exit from removing the shared cgroup while this process may join it.
 */
export const SHARED_PIN = '.pin-';

/** CFS period used for `cpus` (the kernel's and Docker's default). */
export const CPU_PERIOD_US = 100_000;

/** Limits a cgroup enforces, all numbers. `null` means "not limited". */
export interface CgroupLimits {
  /** memory.max / memory.limit_in_bytes. */
  memoryBytes: number | null;
  /** memory.swap.max / (memsw - memory). 0 by default: no swap. */
  swapBytes: number;
  /** True when the caller asked for memorySwap, false when it is the default 0. */
  swapExplicit: boolean;
  /**
   * 'sandbox': a memory cgroup of the sandbox's own (always with memoryBytes or swapExplicit;
   * exact peak and OOM counts). 'shared': none; the sandbox's tasks are charged to one memory
   * cgroup hutch makes once in its subtree (SHARED_MEMCG), shared by every such sandbox.
   */
  memoryAccounting: 'sandbox' | 'shared';
  /** cpu.max "quota period" / cfs_quota_us, cfs_period_us. Both null or both set. */
  cpuQuotaUs: number | null;
  cpuPeriodUs: number | null;
  /** Normalized cpuset list ('0-1,3'), checked against the online CPUs. */
  cpuset: string | null;
  /** pids.max (lib/limits.ts DEFAULT_PIDS unless given). */
  pids: number | null;
  /** True when the caller asked for pids; the default is skipped on a host without the pids controller. */
  pidsExplicit: boolean;
  /** io.max / blkio.throttle.*; null when no io limit is asked for. */
  io: { readBps: number | null; writeBps: number | null; readIops: number | null; writeIops: number | null } | null;
}

/** What a sandbox's cgroup(s) counted. Fields a host does not count are absent (optional) or 0 (documented per field). */
export interface CgroupUsage {
  /**
   * Highest memory charge of the sandbox's cgroup (anon + page cache + kernel memory) since
   * creation or the last resetPeak(), in bytes. v2: memory.peak (5.19+; per-fd reset on
   * 6.12+), else the current charge (memory.current) when the kernel has no peak; v1:
   * memory.max_usage_in_bytes. Absent when the sandbox has no memory cgroup of its own
   * (memoryAccounting 'shared', or no memory controller): the caller then reports the largest
   * resident set of its processes instead (wait4's ru_maxrss, /proc/<pid>/status VmHWM).
   */
  memoryPeakBytes?: number;
  /** Tasks (processes and threads) in the sandbox now: pids.current. 0 when the pids controller is not available. */
  pids: number;
  /**
   * Processes of the sandbox killed by the OOM killer since creation: memory.events oom_kill /
   * memory.oom_control oom_kill. 0 without a memory cgroup of its own (no limit of its own to
   * hit; the host's OOM killer shows as SIGKILL).
   */
  oomKills: number;
  /** CPU time of every task that ran in the sandbox since creation: cpu.stat (v2 and hybrid) / cpuacct (v1). */
  cpuUserMs?: number;
  cpuSystemMs?: number;
  /** Bytes read from / written to block devices by the sandbox: io.stat (v2 with io) / blkio.throttle.io_service_bytes_recursive (v1 with an io limit). */
  ioReadBytes?: number;
  ioWriteBytes?: number;
}

export interface CgroupCreateOptions {
  /** 'major:minor' of the block device io limits apply to (the one backing the writable layer). Required when limits.io is set. */
  ioDevice?: string;
}

export interface SandboxCgroup {
  /** The sandbox id; also the leaf directory name in every hierarchy. */
  readonly id: string;
  /**
   * An O_DIRECTORY|O_CLOEXEC fd of the sandbox's cgroup2 leaf, for clone3's
   * CLONE_INTO_CGROUP (5.7+): set on v2 and on hybrid (the cgroup2 leaf that groups the
   * sandbox and carries cgroup.kill); null on pure v1. Owned by this object: destroy()
   * closes it; the caller must not.
   */
  readonly cloneIntoFd: number | null;
  /**
   * Closes the fd of `cloneIntoFd` once the clone is done (a live sandbox then holds no fd
   * of its cgroup); a later read of `cloneIntoFd` opens it again, until destroy().
   */
  closeCloneFd(): void;
  /**
   * v1 and hybrid: the cgroup.procs file of each v1 leaf (kill and emptiness look there).
   * Empty on v2.
   */
  readonly procsFiles: readonly string[];
  /**
   * v1 and hybrid: the `tasks` file of each v1 leaf, in join order: cpuset first (the
   * child's next allocations follow the sandbox's memory nodes), then memory (its charges go
   * to the sandbox's memory cgroup, or the shared one, from then on), then pids, cpu,
   * cpuacct, blkio. The parent opens them and
   * the setup child writes "0" to each as its first step, before anything else it does
   * (addon/child.cc says why not the pid into cgroup.procs). Empty on v2 (CLONE_INTO_CGROUP
   * places the child).
   */
  readonly joinFiles: readonly string[];
  /** Every directory this sandbox's cgroup consists of (the leaf in each hierarchy used). */
  readonly dirs: readonly string[];
  /**
   * Where a task must be written (cgroup.procs) to be in the sandbox: `dirs`, plus on v1 and
   * hybrid the shared memory cgroup when the sandbox has none of its own (it is not in
   * `dirs`: kill and destroy never touch it).
   */
  readonly joinDirs: readonly string[];
  /** Whether the sandbox has a memory cgroup of its own (usage().memoryPeakBytes is then set). */
  readonly ownMemory: boolean;
  /**
   * The largest resident set high-water mark (VmHWM) of the tasks in the sandbox now, in
   * bytes (0 when none can be read): what stands for a peak without a memory cgroup of its own.
   */
  liveRssPeak(): number;
  /** What the sandbox used so far; see CgroupUsage for each field. */
  usage(): CgroupUsage;
  /** Cheap: OOM kills so far (one small read). */
  oomKills(): number;
  /**
   * Restarts the memory peak so that usage().memoryPeakBytes covers what follows (per-exec
   * peaks). v1: writes memory.max_usage_in_bytes. v2: writes memory.peak where the kernel
   * allows it (6.12+, a reset local to the fd hutch keeps open); on older v2 kernels a no-op,
   * and memoryPeakBytes stays the peak since creation. Returns whether a reset happened.
   */
  resetPeak(): boolean;
  /** SIGKILLs every task of the sandbox: cgroup.kill (5.14+), else each pid listed in cgroup.procs. */
  kill(): void;
  /**
   * Stops every task of the sandbox where it is (cgroup freezer) and resolves once the kernel
   * reports them all stopped: cgroup2 `cgroup.freeze` (v2, and the cgroup2 leaf on hybrid
   * hosts), else the v1 `freezer` controller. Idempotent; kill() and destroy() work on a
   * frozen cgroup. Resolves true when this call froze it, false when it was frozen (or
   * freezing) already: a caller thaws only what it froze. lib/cgroup/freezer.ts.
   *
   * @throws HutchError EUNSUPPORTED when this host has no freezer for the sandbox (pure v1
   *   without a freezer hierarchy); ESETUP (step 'cgroup') when a task would not stop within
   *   10 s (it is thawed again).
   */
  freeze(): Promise<boolean>;
  /** Lets the tasks run again. Idempotent; a no-op once the cgroup is gone. */
  thaw(): Promise<void>;
  /**
   * Kills, waits until the cgroups are empty (bounded), removes every directory it created
   * and closes its fds. Idempotent: later calls return the first call's promise.
   */
  destroy(): Promise<void>;
}

export interface CgroupDriver {
  /** 'none': no cgroup (outside root mode without a delegated cgroup: lib/cgroup/none.ts). */
  readonly kind: 'v2' | 'v1' | 'hybrid' | 'none';
  /** hutch's subtree root in each hierarchy used. */
  readonly subtreeRoots: readonly string[];
  /**
   * Every directory sandbox cgroups are created in: the subtree roots, and on v2 the shared
   * memory cgroup (SHARED_MEMCG) below the root, the parent of the 'shared' sandboxes' leaves.
   */
  readonly leafParents: readonly string[];
  /**
   * Creates the sandbox's cgroup(s) under hutch's subtree and writes its limits. Synchronous
   * (on the create hot path: a mkdir per hierarchy, a write per limit, one open on v2/hybrid).
   *
   * @throws HutchError EINVAL for a bad id; EUNSUPPORTED for a limit this host cannot enforce,
   *   saying how to get it; ESETUP (step 'cgroup') when the kernel refuses, with the errno and path.
   */
  create(id: string, limits: CgroupLimits, options?: CgroupCreateOptions): SandboxCgroup;
  /**
   * Removes sandbox cgroups left by crashed processes: every directory under hutch's
   * subtree roots whose name `isLive` rejects is killed, emptied and removed. Never touches
   * a directory that holds the calling process. Returns the ids removed.
   */
  prune(isLive: (id: string) => boolean): Promise<string[]>;
}

export interface CgroupDriverOptions {
  /**
   * Where sandbox cgroups go: they are created directly below this cgroup, which hutch
   * then owns (it may create it and write its cgroup.subtree_control). A cgroup path as in
   * /proc/self/cgroup ('/hutch.slice/sandboxes') or a directory under a cgroup mount
   * ('/sys/fs/cgroup/unified/hutch-test'), which names the same cgroup path in every
   * hierarchy used. Default: $HUTCH_CGROUP_PARENT, else `<caller's cgroup>/hutch` in each
   * hierarchy. It must not be the caller's own cgroup or one of its ancestors.
   */
  parent?: string;
  /** Force a driver kind (tests: the v2 driver on a hybrid host's cgroup2 hierarchy). */
  kind?: 'v2' | 'v1';
}

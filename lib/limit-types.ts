/**
 * The shape of a sandbox's `limits` ({@link Limits}), apart from their parsing (lib/limits.ts):
 * a type only, in the base layer, so the image store's BuildOptions can name it (issue 14: no
 * import upward, type-only included).
 */
import type { ByteSize } from './units.js';

/**
 * Resource limits of a sandbox ({@link SandboxOptions.limits}). Every field is optional;
 * absent means not limited (except `disk`, see there). Sizes are {@link ByteSize}, durations
 * ms. Each value is checked before anything is created: an out-of-range value, an unknown
 * key (with a suggestion such as `'timeout'` -> `'timeoutMs'`), or an rlimit above the Node
 * process's own hard limit rejects with `HutchError` `EINVAL` naming the field.
 * docs/limits.md says how each is enforced and measured.
 *
 * @example
 * ```ts
 * const sb = await Sandbox.create({
 *   limits: {
 *     memory: '256MiB', cpus: 1.5, pids: 100, disk: '512MiB',
 *     nofile: 1024, cpuTimeMs: 10_000, timeoutMs: 30_000, output: '4MiB',
 *   },
 * });
 * ```
 */
export interface Limits {
  /**
   * cgroup memory limit (at least 1 MiB); exceeding it OOM-kills inside the sandbox only
   * (the exec's reason is `'oom'`, the sandbox emits `'oom'`). Default: not limited.
   */
  memory?: ByteSize;
  /** Swap the sandbox may use on top of `memory`; default 0: no swap. */
  memorySwap?: ByteSize;
  /**
   * Whether the sandbox gets a memory cgroup of its own. `'sandbox'`: yes, with or without a
   * limit: `usage.memoryPeakBytes` is the cgroup's peak (everything charged: processes, page
   * cache, tmpfs and /dev/shm, kernel memory) and `oomKills` counts. `'shared'`: no; its
   * processes are charged to one memory cgroup hutch shares among all such sandboxes, and
   * `memoryPeakBytes` is the largest resident set of a process of the sandbox (`ru_maxrss`),
   * `oomKills` 0. A memory cgroup costs the kernel memory that grows with the number of live
   * sandboxes (docs/limits.md), so the default is `'sandbox'` when `memory` or `memorySwap` is
   * set (a limit needs it; `'shared'` with either is `EINVAL`) and `'shared'` otherwise.
   */
  memoryAccounting?: 'sandbox' | 'shared';
  /**
   * 0.5 = half a core (cgroup CPU quota over a 100 ms period); from 0.01 up to the number
   * of online CPUs. Default: not limited.
   */
  cpus?: number;
  /** CPUs the sandbox may run on, e.g. '0-1' or '0,2'; each must be online. Default: all. */
  cpuset?: string;
  /**
   * Max tasks (processes and threads) in the whole sandbox, 1 to 4194304; past it fork fails
   * with EAGAIN. Default {@link DEFAULT_PIDS} (1024), so a fork bomb stops there; a host
   * without the pids controller runs a sandbox that did not ask for it without that default.
   */
  pids?: number;
  /**
   * All writes inside (root, /tmp, /var...), at least 1 MiB; past it: ENOSPC. /dev/shm
   * counts as memory. Default {@link DEFAULT_DISK_BYTES} (1 GiB). Ephemeral sandboxes write
   * to a tmpfs, which is charged to `memory` as it fills.
   */
  disk?: ByteSize;
  /**
   * Throttling on the block device that backs the writable layer. Needs
   * `persistent: true` (an ephemeral layer is memory): otherwise `create` rejects with
   * `EUNSUPPORTED`.
   */
  io?: {
    /** Bytes per second read. */
    readBps?: ByteSize;
    /** Bytes per second written. */
    writeBps?: ByteSize;
    /** Read operations per second. */
    readIops?: number;
    /** Write operations per second. */
    writeIops?: number;
  };
  /** RLIMIT_NOFILE per process (soft = hard), at least 1; at most the Node process's own hard limit. */
  nofile?: number;
  /** RLIMIT_NPROC per process (soft = hard), at least 1; counted per uid inside. */
  nproc?: number;
  /** RLIMIT_FSIZE per process (soft = hard): a bigger write gets SIGXFSZ / EFBIG. */
  fileSize?: ByteSize;
  /** RLIMIT_STACK per process (soft = hard), at least 16 KiB. */
  stack?: ByteSize;
  /** RLIMIT_CPU per process, in ms (rounded up to whole seconds); past it the kernel sends SIGXCPU, then SIGKILL. */
  cpuTimeMs?: number;
  /** Wall clock per exec, ms (also settable per exec: {@link ExecOptions.timeoutMs}). Default: none. */
  timeoutMs?: number;
  /**
   * Cap on captured stdout+stderr per exec (also settable per exec: {@link ExecOptions.output});
   * past it the process is killed, reason `'output-limit'`, `truncated: true`. Default
   * {@link DEFAULT_OUTPUT_BYTES} (16 MiB). `spawn` streams instead, with backpressure: no cap.
   */
  output?: ByteSize;
}

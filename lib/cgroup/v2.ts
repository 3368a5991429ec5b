/**
 * cgroup v2 driver: one leaf per sandbox, `<subtree root>/<id>`, where the subtree root is
 * `<caller's cgroup>/hutch` or HUTCH_CGROUP_PARENT. The child is placed race-free by
 * clone3(CLONE_INTO_CGROUP) with `cloneIntoFd`.
 *
 * cgroup v2 hands a controller to a cgroup's children only when the cgroup lists it in its
 * cgroup.subtree_control, and a non-root cgroup that has processes of its own may not do
 * so (the "no internal processes" rule: a cgroup's resources are split among its children,
 * so it may have processes or controlled children, not both). hutch therefore enables
 * controllers only in its own subtree root, which never holds a process: every task lives
 * in a sandbox leaf. The root's own parent (normally the caller's cgroup, which holds the
 * Node process) is never written; it must already pass the controllers down.
 *
 * A sandbox with memoryAccounting 'shared' gets no memory cgroup of its own: its leaf sits in
 * `<subtree root>/.shared` (SHARED_MEMCG), a cgroup of hutch's own with no process, whose
 * parent (the root) enables memory and which itself enables every controller its leaves need
 * but memory. The leaves then have no memory controller and their tasks are charged to it.
 */
import { closeSync, existsSync, mkdirSync, openSync, readSync, writeSync, constants } from 'node:fs';
import { unsupported } from '../errors.js';
import { SHARED_MEMCG, type CgroupDriver, type CgroupCreateOptions, type CgroupLimits, type CgroupUsage, type SandboxCgroup } from './types.js';
import type { CgroupHost } from './detect.js';
import { IO_DEVICE, LIMIT_OF, badIoDevice, ioNeedsDevice, swapUnsupported, teardown } from './common.js';
import { cgroupFailure, errnoOf, hintFor, killListed, maxVmHwm, mkdirSubtreeRoot, readControl, readKeyed, readNumber, subdirs, tryRmdir, writeControl } from './files.js';
import { freezeCgroup, thawCgroup } from './freezer.js';
import { checkId, subtreeRootFor } from './parent.js';

/** Controllers hutch enables for every sandbox when the parent offers them (accounting). */
const ALWAYS = ['memory', 'pids'] as const;

/** libuv opens every file with O_CLOEXEC, so these fds never leak into an exec. */
const O_DIR = constants.O_RDONLY | constants.O_DIRECTORY;

function noInternalProcesses(root: string): string {
  return (
    `cgroup v2's "no internal processes" rule: a non-root cgroup that has processes of its own cannot enable controllers ` +
    `for its children, and ${root} (hutch's subtree root) has some. hutch puts every task in a leaf below it, so it should ` +
    `hold none: move those processes out, or set HUTCH_CGROUP_PARENT to an empty cgroup hutch may own`
  );
}

interface Prepared {
  /** Controllers enabled in the subtree root's cgroup.subtree_control: what each leaf has. */
  enabled: Set<string>;
  /** The leaf has memory.swap.max (memory enabled and swap accounting compiled in). */
  swapFile: boolean;
  /** cgroup.kill exists (5.14+). */
  killFile: boolean;
}

export class V2Driver implements CgroupDriver {
  readonly kind = 'v2' as const;
  readonly root: string;
  private prepared: Prepared | undefined;
  private available = new Set<string>();
  /** The shared memory cgroup's path and the controllers its cgroup.subtree_control enables, once made. */
  private shared: { dir: string; enabled: Set<string> } | undefined;

  constructor(
    private readonly host: CgroupHost,
    private readonly parentPath: string | null,
    field: string,
  ) {
    this.root = subtreeRootFor(host.unified!, parentPath, field);
  }

  get subtreeRoots(): readonly string[] {
    return [this.root];
  }

  get leafParents(): readonly string[] {
    return [this.root, `${this.root}/${SHARED_MEMCG}`];
  }

  /**
   * Makes the shared memory cgroup once: below the root (which enables memory), with no
   * process of its own, and no memory in its own cgroup.subtree_control. Held off swap when
   * the host has swap (memorySwap's default 0), as a sandbox's own cgroup would be.
   */
  private prepareShared(): { dir: string; enabled: Set<string> } {
    if (this.shared) return this.shared;
    const dir = `${this.root}/${SHARED_MEMCG}`;
    mkdirSubtreeRoot(dir);
    const enabled = new Set((readControl(`${dir}/cgroup.subtree_control`) ?? '').trim().split(/\s+/).filter(Boolean));
    if (enabled.has('memory')) writeControl(dir, 'cgroup.subtree_control', '-memory');
    enabled.delete('memory');
    if (this.prepared!.swapFile && this.host.swapActive) writeControl(dir, 'memory.swap.max', '0');
    this.shared = { dir, enabled };
    return this.shared;
  }

  /** Enables `controller` for the shared memory cgroup's leaves (after the root); false when the root cannot. */
  private enableShared(controller: string): boolean {
    if (!this.enable(controller)) return false;
    const s = this.prepareShared();
    if (s.enabled.has(controller)) return true;
    writeControl(s.dir, 'cgroup.subtree_control', `+${controller}`, (errno) => (errno === 'EBUSY' ? noInternalProcesses(s.dir) : undefined));
    s.enabled.add(controller);
    return true;
  }

  /**
   * Creates hutch's subtree root once and enables memory and pids (accounting for every
   * sandbox). cpu, cpuset and io are enabled on first use only: each enabled controller
   * makes every later leaf's mkdir costlier (cpu allocates per-CPU scheduler state).
   */
  private prepare(): Prepared {
    if (this.prepared) return this.prepared;
    mkdirSubtreeRoot(this.root);
    const words = (f: string) => new Set((readControl(`${this.root}/${f}`) ?? '').trim().split(/\s+/).filter(Boolean));
    this.available = words('cgroup.controllers');
    const enabled = words('cgroup.subtree_control');
    this.prepared = { enabled, swapFile: false, killFile: existsSync(`${this.root}/cgroup.kill`) };
    for (const c of ALWAYS) if (this.available.has(c)) this.enable(c);
    this.prepared.swapFile = enabled.has('memory') && existsSync(`${this.root}/memory.swap.max`);
    return this.prepared;
  }

  /** Enables `controller` for hutch's leaves (a write to hutch's own subtree root only); false when the parent does not offer it. */
  private enable(controller: string): boolean {
    const p = this.prepared!;
    if (p.enabled.has(controller)) return true;
    if (!this.available.has(controller)) return false;
    writeControl(this.root, 'cgroup.subtree_control', `+${controller}`, (errno) => (errno === 'EBUSY' ? noInternalProcesses(this.root) : undefined));
    p.enabled.add(controller);
    return true;
  }

  private notDelegated(controller: string): Error {
    const parent = this.root.slice(0, this.root.lastIndexOf('/'));
    const callers = this.parentPath === null;
    return unsupported(
      `limits.${LIMIT_OF[controller]} (the cgroup v2 ${controller} controller)`,
      `the ${controller} controller is not available in hutch's cgroup ${this.root}, because its parent ${parent} does not enable it in cgroup.subtree_control. ` +
        (parent === this.host.unified!.mount
          ? `That is the root cgroup, which hutch does not write either: enable it there (echo +${controller} > ${parent}/cgroup.subtree_control). Otherwise: `
          : callers
            ? `That parent is this process's own cgroup: hutch never writes it, and cgroup v2's "no internal processes" rule forbids enabling controllers in a non-root cgroup while this process lives in it. `
            : '') +
        `run Node in a leaf of a delegated cgroup and give hutch a sibling (systemd: Delegate=yes and DelegateSubgroup=node, then write "+${controller}" to the delegated cgroup's cgroup.subtree_control and set HUTCH_CGROUP_PARENT=<delegated cgroup>/sandboxes), ` +
        `or set HUTCH_CGROUP_PARENT to any cgroup whose parent enables ${controller}`,
    );
  }

  create(id: string, limits: CgroupLimits, options: CgroupCreateOptions = {}): SandboxCgroup {
    checkId(id);
    let p = this.prepare();
    const needed: string[] = [];
    const own = limits.memoryAccounting === 'sandbox';
    if (own) needed.push('memory');
    // 'shared' needs the shared memory cgroup only where there is memory to account.
    const shared = !own && p.enabled.has('memory');
    if (shared) this.prepareShared();
    const enable = (c: string) => (shared ? this.enableShared(c) : this.enable(c));
    // The default pids limit only where the controller can be had; an asked-for one is required.
    const pids = limits.pids !== null && (limits.pidsExplicit || enable('pids')) ? limits.pids : null;
    if (pids !== null) needed.push('pids');
    if (limits.cpuQuotaUs !== null) needed.push('cpu');
    if (limits.cpuset !== null) needed.push('cpuset');
    if (limits.io !== null) needed.push('io');
    const enableNeeded = () => {
      for (const c of needed) if (!enable(c)) throw this.notDelegated(c);
    };
    enableNeeded();
    if (!p.swapFile && (limits.swapExplicit || (limits.memoryBytes !== null && this.host.swapActive))) {
      throw swapUnsupported(
        limits.swapExplicit,
        p.enabled.has('memory')
          ? 'this kernel has no memory.swap.max (swap accounting off: CONFIG_MEMCG_SWAP, or boot with swapaccount=1 on older kernels)'
          : this.notDelegated('memory').message,
        this.host.swapActive,
      );
    }
    if (limits.io !== null) {
      if (options.ioDevice === undefined) throw ioNeedsDevice();
      if (!IO_DEVICE.test(options.ioDevice)) throw badIoDevice(options.ioDevice);
    }

    const dir = shared ? `${this.root}/${SHARED_MEMCG}/${id}` : `${this.root}/${id}`;
    try {
      mkdirSync(dir);
    } catch (e) {
      if (errnoOf(e) !== 'ENOENT') throw cgroupFailure('mkdir', dir, e, errnoOf(e) === 'EEXIST' ? `a cgroup for sandbox id ${id} already exists` : hintFor(errnoOf(e), 'mkdir'));
      // The subtree root went away (removed by hand or by a test): make it again, once.
      this.prepared = undefined;
      this.shared = undefined;
      p = this.prepare();
      if (shared) this.prepareShared();
      enableNeeded();
      try {
        mkdirSync(dir);
      } catch (e2) {
        throw cgroupFailure('mkdir', dir, e2, hintFor(errnoOf(e2), 'mkdir'));
      }
    }
    let fd = -1;
    try {
      if (limits.memoryBytes !== null) writeControl(dir, 'memory.max', `${limits.memoryBytes}`);
      // memorySwap's default 0 means no swap at all, with or without a memory limit. On a
      // host with no active swap (read at detection) there is nothing to hold off, and the
      // write is skipped: it is a quarter of create()'s cost.
      if (own && p.swapFile && (limits.swapExplicit || this.host.swapActive)) writeControl(dir, 'memory.swap.max', `${limits.swapBytes}`);
      if (pids !== null) writeControl(dir, 'pids.max', `${pids}`);
      if (limits.cpuQuotaUs !== null) writeControl(dir, 'cpu.max', `${limits.cpuQuotaUs} ${limits.cpuPeriodUs}`);
      if (limits.cpuset !== null) {
        writeControl(dir, 'cpuset.cpus', limits.cpuset, (errno) =>
          errno === 'EINVAL' ? `CPUs ${limits.cpuset} are not all in the parent's cpuset.cpus.effective (${readControl(`${this.root}/cpuset.cpus.effective`)?.trim()})` : undefined,
        );
      }
      if (limits.io !== null) {
        const io = limits.io;
        const kv = [
          io.readBps !== null ? `rbps=${io.readBps}` : '',
          io.writeBps !== null ? `wbps=${io.writeBps}` : '',
          io.readIops !== null ? `riops=${io.readIops}` : '',
          io.writeIops !== null ? `wiops=${io.writeIops}` : '',
        ].filter(Boolean);
        writeControl(dir, 'io.max', `${options.ioDevice} ${kv.join(' ')}`);
      }
      fd = openSync(dir, O_DIR);
    } catch (e) {
      if (fd >= 0) closeSync(fd);
      tryRmdir(dir);
      if (e instanceof Error && 'step' in e) throw e;
      throw cgroupFailure('open', dir, e);
    }
    return new V2Cgroup(id, dir, fd, p, own && p.enabled.has('memory'));
  }

  async prune(isLive: (id: string) => boolean): Promise<string[]> {
    const removed: string[] = [];
    const caller = this.host.unified?.callerDir ?? null;
    const p = existsSync(this.root) ? this.prepare() : undefined;
    const leaves = this.leafParents.flatMap((parent) => subdirs(parent).filter((id) => id !== SHARED_MEMCG).map((id) => ({ id, dir: `${parent}/${id}` })));
    for (const { id, dir } of leaves) {
      if (isLive(id)) continue;
      if (caller !== null && (caller === dir || caller.startsWith(dir + '/'))) continue;
      await new V2Cgroup(id, dir, null, p ?? { enabled: new Set(), swapFile: false, killFile: existsSync(`${dir}/cgroup.kill`) }, false).destroy();
      removed.push(id);
    }
    return removed;
  }
}

/** One sandbox's v2 leaf. */
export class V2Cgroup implements SandboxCgroup {
  readonly procsFiles: readonly string[] = [];
  readonly joinFiles: readonly string[] = [];
  readonly dirs: readonly string[];
  private fd: number | null;
  /** Made with an fd (not prune's): cloneIntoFd may open it again until destroy. */
  private reopenable: boolean;
  /** An fd of memory.peak written with "reset" (6.12+): reads through it see the peak since the reset. */
  private peakFd: number | null = null;
  private peakResettable = true;
  private destroying: Promise<void> | undefined;

  readonly joinDirs: readonly string[];

  /** `ownMemory`: the leaf has the memory controller (memoryAccounting 'sandbox' where memory is enabled). */
  constructor(
    readonly id: string,
    readonly dir: string,
    fd: number | null,
    private readonly p: Prepared,
    readonly ownMemory: boolean,
  ) {
    this.fd = fd;
    this.reopenable = fd !== null;
    this.dirs = [dir];
    this.joinDirs = this.dirs;
  }

  liveRssPeak(): number {
    return maxVmHwm(`${this.dir}/cgroup.procs`);
  }

  get cloneIntoFd(): number | null {
    // Closed after the clone (closeCloneFd): opened again if a start needs it once more.
    if (this.fd === null && this.reopenable) this.fd = openSync(this.dir, O_DIR);
    return this.fd;
  }

  closeCloneFd(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }

  private peak(): number {
    if (this.peakFd !== null) {
      const buf = Buffer.alloc(32);
      const n = readSync(this.peakFd, buf, 0, buf.length, 0);
      return Number(buf.subarray(0, n).toString().trim()) || 0;
    }
    const peak = readControl(`${this.dir}/memory.peak`);
    if (peak !== null) return Number(peak.trim()) || 0;
    // Kernels before 5.19 keep no peak on v2: the current charge is the best there is.
    return readNumber(`${this.dir}/memory.current`);
  }

  usage(): CgroupUsage {
    const cpu = readKeyed(`${this.dir}/cpu.stat`);
    const u: CgroupUsage = {
      ...(this.ownMemory ? { memoryPeakBytes: this.peak() } : {}),
      pids: readNumber(`${this.dir}/pids.current`),
      oomKills: this.oomKills(),
    };
    if (cpu.has('user_usec')) {
      u.cpuUserMs = cpu.get('user_usec')! / 1000;
      u.cpuSystemMs = (cpu.get('system_usec') ?? 0) / 1000;
    }
    const io = readControl(`${this.dir}/io.stat`);
    if (io !== null) {
      let r = 0;
      let w = 0;
      for (const m of io.matchAll(/\brbytes=(\d+)|\bwbytes=(\d+)/g)) {
        if (m[1] !== undefined) r += Number(m[1]);
        else w += Number(m[2]);
      }
      u.ioReadBytes = r;
      u.ioWriteBytes = w;
    }
    return u;
  }

  oomKills(): number {
    return this.ownMemory ? (readKeyed(`${this.dir}/memory.events`).get('oom_kill') ?? 0) : 0;
  }

  resetPeak(): boolean {
    if (!this.ownMemory || !this.peakResettable) return false;
    if (this.peakFd !== null) closeSync(this.peakFd);
    this.peakFd = null;
    let fd = -1;
    try {
      fd = openSync(`${this.dir}/memory.peak`, constants.O_RDWR);
      writeSync(fd, 'reset\n');
      this.peakFd = fd;
      return true;
    } catch {
      // Before 6.12 memory.peak is read-only (or absent before 5.19): no per-exec peak.
      if (fd >= 0) closeSync(fd);
      this.peakResettable = false;
      return false;
    }
  }

  kill(): void {
    if (this.p.killFile) {
      try {
        writeControl(this.dir, 'cgroup.kill', '1');
        return;
      } catch (e) {
        if (!existsSync(this.dir)) return;
        throw e;
      }
    }
    killListed(`${this.dir}/cgroup.procs`);
  }

  freeze(): Promise<boolean> {
    return freezeCgroup(this.id, { kind: 'v2', dir: this.dir });
  }

  async thaw(): Promise<void> {
    if (existsSync(this.dir)) await thawCgroup({ kind: 'v2', dir: this.dir });
  }

  private populated(): boolean {
    const ev = readKeyed(`${this.dir}/cgroup.events`);
    return (ev.get('populated') ?? 0) !== 0;
  }

  destroy(): Promise<void> {
    this.destroying ??= teardown(this.id, this.dirs, () => this.kill(), () => !this.populated()).then(
      () => this.closeFds(),
      (e: unknown) => {
        this.destroying = undefined; // let a later call try again
        throw e;
      },
    );
    return this.destroying;
  }

  private closeFds(): void {
    this.reopenable = false;
    if (this.fd !== null) closeSync(this.fd);
    if (this.peakFd !== null) closeSync(this.peakFd);
    this.fd = null;
    this.peakFd = null;
  }
}

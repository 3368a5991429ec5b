/**
 * cgroup v1 and hybrid driver: one cgroup per controller hierarchy, `<subtree root>/<id>`,
 * joined by the setup child itself (it writes "0" to each `joinFiles` entry, opened by the parent,
 * before anything else it does). On hybrid hosts, a leaf in the cgroup2 hierarchy as well: it groups
 * the sandbox's tasks race-free (CLONE_INTO_CGROUP with `cloneIntoFd`), kills them all at
 * once (cgroup.kill) and reports CPU time (cpu.stat, which cgroup2 keeps without a controller).
 *
 * The subtree root in each hierarchy is `<caller's cgroup in that hierarchy>/hutch` (or
 * HUTCH_CGROUP_PARENT): below the caller, so the limits and accounting the caller is under
 * (here, a memory cgroup per session) still cover its sandboxes, which cannot escape them
 * by being placed at the hierarchy's root; and in a container with a cgroup namespace the
 * caller's own cgroup is usually the only writable place. v1 has no "no internal
 * processes" rule, so a child of a cgroup with processes is fine. hutch writes only in
 * directories it creates: the subtree roots (cpuset needs cpus and mems set there before a
 * child may join) and the sandbox leaves.
 */
import { closeSync, existsSync, mkdirSync, openSync, constants } from 'node:fs';
import { HutchError, unsupported } from '../errors.js';
import { isAlive, ownerTag, type Owner } from '../host/liveness.js';
import { CPU_PERIOD_US, SHARED_MEMCG, SHARED_PIN, type CgroupDriver, type CgroupCreateOptions, type CgroupLimits, type CgroupUsage, type SandboxCgroup } from './types.js';
import { type CgroupHierarchy, type CgroupHost, V1_CONTROLLERS, type V1Controller } from './detect.js';
import { IO_DEVICE, LIMIT_OF, badIoDevice, ioNeedsDevice, swapUnsupported, teardown } from './common.js';
import { cgroupFailure, errnoOf, hintFor, killListed, maxVmHwm, mkdirSubtreeRoot, readControl, readKeyed, readNumber, readPids, subdirs, tryRmdir, writeControl } from './files.js';
import { freezeCgroup, thawCgroup, type Freezer } from './freezer.js';
import { checkId, subtreeRootFor } from './parent.js';

/** libuv opens every file with O_CLOEXEC, so these fds never leak into an exec. */
const O_DIR = constants.O_RDONLY | constants.O_DIRECTORY;

/** One hierarchy hutch uses: its subtree root and the controllers it carries. */
interface Tree {
  h: CgroupHierarchy;
  root: string;
  /** The controller of V1_CONTROLLERS this tree is named by (the first it carries). */
  ctrl: V1Controller;
  prepared: boolean;
}

/** A sandbox's directories by controller (co-mounted controllers point at the same directory). */
type Dirs = Partial<Record<V1Controller, string>>;

/** The process a pin's name (`.pin-<pid>-<start>`) names, or undefined for any other name. */
export function pinOwner(name: string): Owner | undefined {
  const m = name.startsWith(SHARED_PIN) ? /^(\d+)-(\d+)$/.exec(name.slice(SHARED_PIN.length)) : null;
  return m ? { pid: Number(m[1]), start: m[2]! } : undefined;
}

/** The pins this process made (prepareShared), every driver's. */
const sharedPins = new Set<string>();

/**
 * Removes this process's pins now (tests: vitest ends its workers with a signal, so the exit
 * handler that removes them would not run). A later 'shared' sandbox pins again. @internal
 */
export function dropSharedPins(): void {
  for (const p of sharedPins) tryRmdir(p);
  sharedPins.clear();
}

export class V1Driver implements CgroupDriver {
  readonly kind: 'v1' | 'hybrid';
  private readonly trees = new Map<V1Controller, Tree>();
  /** hybrid: hutch's subtree root in the cgroup2 hierarchy; null on pure v1 or when unusable. */
  private readonly unifiedRoot: string | null;
  private unifiedPrepared = false;
  private memsw = false;
  private killFile = false;
  /** The shared memory cgroup ('shared' sandboxes' tasks join it), once made. */
  private sharedMemDir: string | null = null;
  /** This process's pin in it (prepareShared). */
  private sharedPin: string | null = null;

  constructor(
    private readonly host: CgroupHost,
    parentPath: string | null,
    field: string,
  ) {
    this.kind = host.kind === 'hybrid' ? 'hybrid' : 'v1';
    let unifiedRoot: string | null = null;
    if (this.kind === 'hybrid' && host.unified) {
      try {
        unifiedRoot = subtreeRootFor(host.unified, parentPath, field);
      } catch {
        // The cgroup2 mount does not show the caller's cgroup: fall back to killing by pid.
        unifiedRoot = null;
      }
    }
    this.unifiedRoot = unifiedRoot;
    const byMount = new Map<string, Tree>();
    for (const c of V1_CONTROLLERS) {
      const h = host.v1.get(c);
      if (!h) continue;
      // The cgroup2 leaf freezes the sandbox (cgroup.freeze) where there is one.
      if (c === 'freezer' && unifiedRoot !== null) continue;
      let t = byMount.get(h.mount);
      if (!t) {
        t = { h, root: subtreeRootFor(h, parentPath, field), ctrl: c, prepared: false };
        byMount.set(h.mount, t);
      }
      this.trees.set(c, t);
    }
  }

  get subtreeRoots(): readonly string[] {
    const roots = new Set([...this.trees.values()].map((t) => t.root));
    if (this.unifiedRoot) roots.add(this.unifiedRoot);
    return [...roots];
  }

  /** The shared memory cgroup holds tasks, never sandbox directories: the roots are all. */
  get leafParents(): readonly string[] {
    return this.subtreeRoots;
  }

  /**
   * Makes the shared memory cgroup below the memory hierarchy's subtree root, and this
   * process's pin in it, once. Sandbox tasks join the shared cgroup directly, with no directory
   * of their own in it, so it is empty between two sandboxes; the process that made it removes
   * it at exit when it is empty. The pin (`.pin-<pid>-<start>`, a child cgroup with no task,
   * removed at this process's exit) makes that removal fail (EBUSY) while any other process
   * that may join it lives: without it, one process's exit could remove the shared cgroup
   * between another's check below and its setup child's join, and that start would fail.
   */
  private prepareShared(): string {
    // One stat per create: our pin holds the shared cgroup, unless it was removed by hand (a
    // test) or by dropSharedPins: then both are made again.
    if (this.sharedMemDir !== null && this.sharedPin !== null && existsSync(this.sharedPin)) return this.sharedMemDir;
    const t = this.trees.get('memory')!;
    for (let attempt = 0; ; attempt++) {
      // Gone, perhaps with the subtree root around it (another process's exit removes an
      // empty root it made, and the shared cgroup in it): the root is made again too.
      if (this.sharedMemDir !== null || attempt > 0) t.prepared = false;
      this.prepareTree(t);
      const dir = `${t.root}/${SHARED_MEMCG}`;
      mkdirSubtreeRoot(dir);
      const pin = `${dir}/${SHARED_PIN}${ownerTag()}`;
      try {
        // Registered after the shared cgroup: removed before it at exit.
        mkdirSubtreeRoot(pin);
      } catch (e) {
        // Removed by another process's exit between our mkdir and this one: again.
        if (attempt < 3 && e instanceof HutchError && e.errno === 'ENOENT') continue;
        throw e;
      }
      sharedPins.add(pin);
      this.sharedPin = pin;
      this.sharedMemDir = dir;
      return dir;
    }
  }

  /** Creates hutch's subtree root in one hierarchy, once; cpuset needs cpus and mems before any child may join. */
  private prepareTree(t: Tree): void {
    if (t.prepared) return;
    mkdirSubtreeRoot(t.root);
    if (t.h.controllers.includes('cpuset')) {
      const parent = t.root.slice(0, t.root.lastIndexOf('/'));
      for (const f of ['cpuset.cpus', 'cpuset.mems']) {
        if ((readControl(`${t.root}/${f}`) ?? '').trim() === '') {
          writeControl(t.root, f, (readControl(`${parent}/${f}`) ?? '').trim() || '\n');
        }
      }
      // Leaves then start with the root's cpus and mems, saving two writes per sandbox.
      if ((readControl(`${t.root}/cgroup.clone_children`) ?? '').trim() !== '1') writeControl(t.root, 'cgroup.clone_children', '1');
    }
    if (t.h.controllers.includes('memory')) this.memsw = existsSync(`${t.root}/memory.memsw.limit_in_bytes`);
    t.prepared = true;
  }

  private prepareUnified(): void {
    if (this.unifiedPrepared || this.unifiedRoot === null) return;
    mkdirSubtreeRoot(this.unifiedRoot);
    this.killFile = existsSync(`${this.unifiedRoot}/cgroup.kill`);
    this.unifiedPrepared = true;
  }

  private missing(ctrl: V1Controller): Error {
    return unsupported(
      `limits.${LIMIT_OF[ctrl]} (the cgroup v1 ${ctrl} controller)`,
      `no ${ctrl} hierarchy is mounted; mount it (mount -t cgroup -o ${ctrl} cgroup /sys/fs/cgroup/${ctrl}) or boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1)`,
    );
  }

  /**
   * The controllers this sandbox gets a directory for, in join order. memory only for
   * memoryAccounting 'sandbox', or where the sandbox would otherwise have no directory to be
   * killed by (pure v1 with no other hierarchy) or the memory hierarchy is co-mounted with one
   * it gets a directory in (that directory is a memory cgroup anyway).
   */
  private plan(limits: CgroupLimits, options: CgroupCreateOptions): V1Controller[] {
    const want = new Set<V1Controller>();
    const require = (c: V1Controller) => {
      if (!this.trees.has(c)) throw this.missing(c);
      want.add(c);
    };
    if (limits.memoryAccounting === 'sandbox') require('memory');
    // The default pids limit only where the controller is mounted; an asked-for one is required.
    if (limits.pids !== null && limits.pidsExplicit) require('pids');
    if (limits.cpuQuotaUs !== null) require('cpu');
    if (limits.cpuset !== null) require('cpuset');
    if (limits.io !== null) {
      require('blkio');
      if (options.ioDevice === undefined) throw ioNeedsDevice();
      if (!IO_DEVICE.test(options.ioDevice)) throw badIoDevice(options.ioDevice);
    }
    // Accounting even without limits: task count, and CPU time on pure v1 (hybrid reads it
    // from the cgroup2 leaf's cpu.stat instead).
    if (this.trees.has('pids')) want.add('pids');
    if (this.kind === 'v1' && this.trees.has('cpuacct')) want.add('cpuacct');
    // Without a cgroup2 leaf only the v1 freezer can stop the sandbox (commit, pause).
    if (this.trees.has('freezer')) want.add('freezer');
    const mem = this.trees.get('memory');
    if (mem && !want.has('memory') && ((want.size === 0 && this.unifiedRoot === null) || [...want].some((c) => this.trees.get(c) === mem))) want.add('memory');
    return V1_CONTROLLERS.filter((c) => want.has(c));
  }

  create(id: string, limits: CgroupLimits, options: CgroupCreateOptions = {}): SandboxCgroup {
    checkId(id);
    const ctrls = this.plan(limits, options);
    for (const c of ctrls) this.prepareTree(this.trees.get(c)!);
    this.prepareUnified();
    const shared = !ctrls.includes('memory') && this.trees.has('memory') ? this.prepareShared() : null;
    if (ctrls.includes('memory')) {
      // memsw bounds memory + swap, so it can only bound swap together with a memory limit.
      if (limits.memoryBytes === null && limits.swapExplicit) {
        throw swapUnsupported(true, 'cgroup v1 limits swap only as memory + swap (memory.memsw.limit_in_bytes), so memorySwap needs memory set too; or use cgroup v2, which limits swap alone', this.host.swapActive);
      }
      if (limits.memoryBytes !== null && !this.memsw && (limits.swapExplicit || this.host.swapActive)) {
        throw swapUnsupported(limits.swapExplicit, 'this kernel has no memory.memsw.limit_in_bytes (swap accounting off: boot with swapaccount=1)', this.host.swapActive);
      }
    }

    const dirs: Dirs = {};
    const made: string[] = [];
    let fd = -1;
    let unifiedDir: string | null = null;
    try {
      for (const c of ctrls) {
        const t = this.trees.get(c)!;
        const dir = `${t.root}/${id}`;
        if (!made.includes(dir)) {
          this.mkdirLeaf(t, dir, id);
          made.push(dir);
        }
        dirs[c] = dir;
      }
      if (this.unifiedPrepared) {
        unifiedDir = `${this.unifiedRoot}/${id}`;
        this.mkdirLeaf(null, unifiedDir, id);
        made.push(unifiedDir);
      }
      if (limits.memoryBytes !== null) {
        // limit_in_bytes first: memsw may never be below it.
        writeControl(dirs.memory!, 'memory.limit_in_bytes', `${limits.memoryBytes}`);
        // Skipped when the host has no active swap (read at detection) and none was asked
        // for: nothing could be swapped, and the write costs as much as the limit itself.
        if (this.memsw && (limits.swapExplicit || this.host.swapActive)) {
          writeControl(dirs.memory!, 'memory.memsw.limit_in_bytes', `${limits.memoryBytes + limits.swapBytes}`);
        }
      }
      if (limits.pids !== null && dirs.pids !== undefined) writeControl(dirs.pids, 'pids.max', `${limits.pids}`);
      if (limits.cpuQuotaUs !== null) {
        // A new cpu cgroup starts with the kernel's default period, 100 ms: write it only if ours differs.
        if (limits.cpuPeriodUs !== 100_000 || CPU_PERIOD_US !== 100_000) writeControl(dirs.cpu!, 'cpu.cfs_period_us', `${limits.cpuPeriodUs}`);
        writeControl(dirs.cpu!, 'cpu.cfs_quota_us', `${limits.cpuQuotaUs}`);
      }
      if (limits.cpuset !== null) {
        writeControl(dirs.cpuset!, 'cpuset.cpus', limits.cpuset, (errno) =>
          errno === 'EINVAL' ? `CPUs ${limits.cpuset} are not all in hutch's cpuset (${readControl(`${this.trees.get('cpuset')!.root}/cpuset.cpus`)?.trim()})` : undefined,
        );
      }
      if (limits.io !== null) {
        const dev = options.ioDevice!;
        const io = limits.io;
        if (io.readBps !== null) writeControl(dirs.blkio!, 'blkio.throttle.read_bps_device', `${dev} ${io.readBps}`);
        if (io.writeBps !== null) writeControl(dirs.blkio!, 'blkio.throttle.write_bps_device', `${dev} ${io.writeBps}`);
        if (io.readIops !== null) writeControl(dirs.blkio!, 'blkio.throttle.read_iops_device', `${dev} ${io.readIops}`);
        if (io.writeIops !== null) writeControl(dirs.blkio!, 'blkio.throttle.write_iops_device', `${dev} ${io.writeIops}`);
      }
      if (unifiedDir !== null) fd = openSync(unifiedDir, O_DIR);
    } catch (e) {
      if (fd >= 0) closeSync(fd);
      for (const d of made.reverse()) tryRmdir(d);
      if (e instanceof Error && 'step' in e) throw e;
      throw cgroupFailure('open', unifiedDir ?? made[0] ?? '', e);
    }
    return new V1Cgroup(id, dirs, unifiedDir, fd >= 0 ? fd : null, this.kind, this.killFile, shared);
  }

  private mkdirLeaf(t: Tree | null, dir: string, id: string): void {
    try {
      mkdirSync(dir);
      return;
    } catch (e) {
      if (errnoOf(e) !== 'ENOENT') {
        throw cgroupFailure('mkdir', dir, e, errnoOf(e) === 'EEXIST' ? `a cgroup for sandbox id ${id} already exists` : hintFor(errnoOf(e), 'mkdir'));
      }
    }
    // The subtree root went away (removed by hand or by a test): make it again, once.
    if (t) {
      t.prepared = false;
      this.prepareTree(t);
      if (t === this.trees.get('memory')) this.sharedMemDir = null;
    } else {
      this.unifiedPrepared = false;
      this.prepareUnified();
    }
    try {
      mkdirSync(dir);
    } catch (e) {
      throw cgroupFailure('mkdir', dir, e, hintFor(errnoOf(e), 'mkdir'));
    }
  }

  async prune(isLive: (id: string) => boolean): Promise<string[]> {
    // The pins of processes that are gone (killed: their exit never removed them).
    const mem = this.trees.get('memory');
    if (mem) {
      for (const name of subdirs(`${mem.root}/${SHARED_MEMCG}`)) {
        const owner = pinOwner(name);
        if (owner && !isAlive(owner)) tryRmdir(`${mem.root}/${SHARED_MEMCG}/${name}`);
      }
    }
    const ids = new Set<string>();
    for (const r of this.subtreeRoots) for (const id of subdirs(r)) if (id !== SHARED_MEMCG) ids.add(id);
    const callerDirs = [...this.trees.values()].map((t) => t.h.callerDir).concat(this.host.unified?.callerDir ?? null);
    const removed: string[] = [];
    for (const id of [...ids].sort()) {
      if (isLive(id)) continue;
      const dirs: Dirs = {};
      for (const [c, t] of this.trees) if (existsSync(`${t.root}/${id}`)) dirs[c] = `${t.root}/${id}`;
      const u = this.unifiedRoot && existsSync(`${this.unifiedRoot}/${id}`) ? `${this.unifiedRoot}/${id}` : null;
      const all = [...Object.values(dirs), ...(u ? [u] : [])];
      if (all.some((d) => callerDirs.some((cd) => cd !== null && (cd === d || cd.startsWith(d + '/'))))) continue;
      await new V1Cgroup(id, dirs, u, null, this.kind, u !== null && existsSync(`${u}/cgroup.kill`)).destroy();
      removed.push(id);
    }
    return removed;
  }
}

/** One sandbox's v1 directories (and its cgroup2 leaf on hybrid). */
export class V1Cgroup implements SandboxCgroup {
  readonly procsFiles: readonly string[];
  readonly joinFiles: readonly string[];
  readonly dirs: readonly string[];
  readonly joinDirs: readonly string[];
  readonly ownMemory: boolean;
  private fd: number | null;
  /** Made with an fd (not prune's): cloneIntoFd may open it again until destroy. */
  private reopenable: boolean;
  private destroying: Promise<void> | undefined;

  /** `sharedMem`: the shared memory cgroup the sandbox's tasks join instead of one of their own (joined, never killed or removed). */
  constructor(
    readonly id: string,
    private readonly byCtrl: Dirs,
    private readonly unifiedDir: string | null,
    fd: number | null,
    private readonly kind: 'v1' | 'hybrid',
    private readonly killFile: boolean,
    sharedMem: string | null = null,
  ) {
    this.fd = fd;
    this.reopenable = fd !== null;
    this.ownMemory = byCtrl.memory !== undefined;
    const v1Dirs = [...new Set(V1_CONTROLLERS.map((c) => byCtrl[c]).filter((d): d is string => d !== undefined))];
    // In join order: the shared memory cgroup where the sandbox's own would be (after cpuset).
    const joined = [...new Set(V1_CONTROLLERS.map((c) => (c === 'memory' && !this.ownMemory && sharedMem !== null ? sharedMem : byCtrl[c])).filter((d): d is string => d !== undefined))];
    this.procsFiles = v1Dirs.map((d) => `${d}/cgroup.procs`);
    this.joinFiles = joined.map((d) => `${d}/tasks`);
    this.dirs = unifiedDir ? [...v1Dirs, unifiedDir] : v1Dirs;
    this.joinDirs = unifiedDir ? [...joined, unifiedDir] : joined;
  }

  liveRssPeak(): number {
    const f = this.unifiedDir ? `${this.unifiedDir}/cgroup.procs` : this.procsFiles[0];
    return f ? maxVmHwm(f) : 0;
  }

  get cloneIntoFd(): number | null {
    // Closed after the clone (closeCloneFd): opened again if a start needs it once more.
    if (this.fd === null && this.reopenable && this.unifiedDir !== null) this.fd = openSync(this.unifiedDir, O_DIR);
    return this.fd;
  }

  closeCloneFd(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }

  usage(): CgroupUsage {
    const mem = this.byCtrl.memory;
    const u: CgroupUsage = {
      ...(mem ? { memoryPeakBytes: readNumber(`${mem}/memory.max_usage_in_bytes`) } : {}),
      pids: this.byCtrl.pids ? readNumber(`${this.byCtrl.pids}/pids.current`) : 0,
      oomKills: this.oomKills(),
    };
    if (this.unifiedDir) {
      const cpu = readKeyed(`${this.unifiedDir}/cpu.stat`);
      if (cpu.has('user_usec')) {
        u.cpuUserMs = cpu.get('user_usec')! / 1000;
        u.cpuSystemMs = (cpu.get('system_usec') ?? 0) / 1000;
      }
    }
    if (u.cpuUserMs === undefined && this.byCtrl.cpuacct) {
      const user = readControl(`${this.byCtrl.cpuacct}/cpuacct.usage_user`);
      if (user !== null) {
        u.cpuUserMs = Number(user.trim()) / 1e6;
        u.cpuSystemMs = readNumber(`${this.byCtrl.cpuacct}/cpuacct.usage_sys`) / 1e6;
      }
    }
    if (this.byCtrl.blkio) {
      const t = readControl(`${this.byCtrl.blkio}/blkio.throttle.io_service_bytes_recursive`);
      if (t !== null) {
        let r = 0;
        let w = 0;
        for (const m of t.matchAll(/^\d+:\d+ (Read|Write) (\d+)$/gm)) {
          if (m[1] === 'Read') r += Number(m[2]);
          else w += Number(m[2]);
        }
        u.ioReadBytes = r;
        u.ioWriteBytes = w;
      }
    }
    return u;
  }

  oomKills(): number {
    const mem = this.byCtrl.memory;
    return mem ? (readKeyed(`${mem}/memory.oom_control`).get('oom_kill') ?? 0) : 0;
  }

  resetPeak(): boolean {
    const mem = this.byCtrl.memory;
    if (!mem) return false;
    writeControl(mem, 'memory.max_usage_in_bytes', '0');
    return true;
  }

  kill(): void {
    if (this.unifiedDir && this.killFile) {
      try {
        writeControl(this.unifiedDir, 'cgroup.kill', '1');
      } catch (e) {
        if (existsSync(this.unifiedDir)) throw e;
      }
    } else if (this.unifiedDir) {
      killListed(`${this.unifiedDir}/cgroup.procs`);
    }
    // Tasks the caller joined to the v1 cgroups only (not via CLONE_INTO_CGROUP) are not in the cgroup2 leaf.
    for (const f of this.procsFiles) killListed(f);
    // A task frozen by the v1 freezer takes no signal until thawed (cgroup2's freezer lets
    // SIGKILL through): thaw after the kill, so it dies at once.
    if (this.byCtrl.freezer && existsSync(this.byCtrl.freezer)) writeControl(this.byCtrl.freezer, 'freezer.state', 'THAWED');
  }

  /** cgroup.freeze of the cgroup2 leaf (hybrid), else the v1 freezer leaf, else none. */
  private freezer(): Freezer | null {
    if (this.unifiedDir && existsSync(`${this.unifiedDir}/cgroup.freeze`)) return { kind: 'v2', dir: this.unifiedDir };
    if (this.byCtrl.freezer) return { kind: 'v1', dir: this.byCtrl.freezer };
    return null;
  }

  freeze(): Promise<boolean> {
    const f = this.freezer();
    if (f === null) {
      return Promise.reject(
        unsupported(
          'freezing a sandbox (commit, pause)',
          'no cgroup freezer: mount the v1 freezer controller (mount -t cgroup -o freezer cgroup /sys/fs/cgroup/freezer) or cgroup2 (Linux 5.2+), then start the sandbox again',
        ),
      );
    }
    return freezeCgroup(this.id, f);
  }

  async thaw(): Promise<void> {
    const f = this.freezer();
    if (f !== null && existsSync(f.dir)) await thawCgroup(f);
  }

  private empty(): boolean {
    if (this.unifiedDir) {
      const ev = readKeyed(`${this.unifiedDir}/cgroup.events`);
      if ((ev.get('populated') ?? 0) !== 0) return false;
    }
    return this.procsFiles.every((f) => readPids(f).length === 0);
  }

  destroy(): Promise<void> {
    this.destroying ??= teardown(this.id, this.dirs, () => this.kill(), () => this.empty()).then(
      () => {
        this.reopenable = false;
        this.closeCloneFd();
      },
      (e: unknown) => {
        this.destroying = undefined; // let a later call try again
        throw e;
      },
    );
    return this.destroying;
  }

  /** The kind of host this cgroup lives on. */
  get hostKind(): 'v1' | 'hybrid' {
    return this.kind;
  }
}

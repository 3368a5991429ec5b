/**
 * The Sandbox: create (plan, clone, set up, wait for init), exec/spawn over init's control
 * socket, files, stats, destroy. API.md is the contract.
 */
import { closeSync, constants as fsc, openSync, readSync, writeSync } from 'node:fs';
import { EventEmitter } from 'eventemitter3';
import { HutchError, errnoName, invalid } from './errors.js';
import { dropIdleIds, type SandboxIds } from './idrange.js';
import { isFailure, native, type Spawned, type Watch } from './native.js';
import { decode, encodeExec, encodeKill } from './protocol.js';
import { setupError } from './setup-errors.js';
import { capabilityMask } from './capabilities.js';
import { compileSeccomp } from './seccomp/index.js';
import type { SandboxCgroup } from './cgroup/driver.js';
import { mergeExecLimits } from './limits.js';
import { ImageStore } from './image/store.js';
import type { Image, ResolvedImage } from './image/types.js';
import { attachNetwork, releaseNetwork, hostsFile, settleNetwork, type NetworkAttachment } from './network/index.js';
import {
  RUN_KEYS, checkInsidePath, resolveCommand, resolveExecOptions, resolveSandboxOptions,
  type ExecOptions, type ResolvedExecOptions, type ResolvedSandboxOptions, type RunOptions, type SandboxOptions, type SpawnOptions,
} from './options.js';
import { ProcessState, type ExecResult, type ProcessHost, type ResourceUsage, type SandboxProcess } from './process.js';
import { SandboxPool, type PoolOptions } from './pool.js';
import { checkHost, type HostReport } from './host.js';
import { Trace } from './trace.js';
import { inBackground, takeFailures, teardownsDone } from './teardowns.js';
import { dropBlanks, makeBlank } from './warm.js';
import { imageUser, prepareImageUser, resolveCached } from './plan/index.js';
import { startSandbox, type StartedSandbox } from './start.js';
import type { PersistentDisk } from './disk.js';
import { SandboxFreezer } from './pause.js';

export { DEFAULT_DISK_BYTES } from './start.js';
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';


let defaultStore: ImageStore | undefined;

/** Sandbox.run's command, for createResolved to send during setup; `result` is its exec. */
interface FirstExec {
  command: unknown;
  exec: ResolvedExecOptions;
  result?: Promise<ExecResult>;
}


interface SandboxEvents {
  oom: [ResourceUsage];
  exit: [{ code: number | null; signal: number | null }];
  destroyed: [];
}

function abortError(signal: AbortSignal): HutchError {
  return new HutchError('EDESTROYED', 'the sandbox was aborted through its AbortSignal', { cause: signal.reason });
}

/**
 * An isolated environment: its own user, pid, mount, network, UTS, IPC and cgroup namespaces,
 * a copy-on-write root from an image, limits, seccomp, and PID 1 of its own.
 *
 * A string command is run by `/bin/sh -c` inside; an array is executed directly (looked up
 * in the sandbox's PATH: the image's, else
 * `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`). Processes see only the
 * image's environment, `env` and PATH, never the Node process's.
 *
 * Events (eventemitter3):
 * - `'oom'` `(usage: ResourceUsage)`: the OOM killer ended a process of the sandbox;
 * - `'exit'` `({ code, signal })`: the sandbox's init ended without `destroy()` (the sandbox is then destroyed);
 * - `'destroyed'` `()`: `destroy()` finished.
 *
 * @example
 * ```ts
 * await using sb = await Sandbox.create({ image: 'busybox', limits: { memory: '64MiB' } });
 * sb.on('oom', (u) => console.warn('OOM, peak', u.memoryPeakBytes));
 * const r = await sb.exec('echo hello', { encoding: 'utf8' });
 * console.log(r.stdout); // hello
 * ```
 */
export class Sandbox extends EventEmitter<SandboxEvents> {
  /** Unique id, 12 hex digits; also names the sandbox's host-side resources (cgroup, veth, store entries). */
  readonly id: string;
  /** Host pid of the sandbox's init (PID 1 inside). */
  readonly pid: number;
  /** `'destroyed'` from the moment `destroy()` is called (or the sandbox ended by itself). */
  state: 'running' | 'destroyed' = 'running';
  /** The sandbox's link to the host with `network: { mode: 'bridge' }`; `null` for `'none'`. */
  network: {
    /** The sandbox's IPv4 address (on its `eth0`). */
    address: string;
    /** The host side's address: the sandbox's default gateway, `host.hutch.internal` inside. */
    hostAddress: string;
    /** The interface name inside, `'eth0'`. */
    interface: string;
  } | null = null;

  /** @internal */ readonly image: ResolvedImage;
  private readonly opts: ResolvedSandboxOptions;
  private readonly spawned: Spawned;
  private readonly store: ImageStore;
  private cgroup: SandboxCgroup | null;
  private attachment: NetworkAttachment | null = null;
  private disk: PersistentDisk | null = null;
  /** Sandbox.run: makes the blank for the next run like this one (lib/warm.ts). */
  private warmNext: (() => void) | undefined;
  /** @internal The host ids of this sandbox's range. */
  ids!: SandboxIds;
  private ctlWatch: Watch | null = null;
  private pidWatch: Watch | null = null;
  private readonly procs = new Map<number, ProcessState>();
  private nextId = 1;
  private destroying: Promise<void> | null = null;
  private exitedP: Promise<void>;
  private exitedResolve!: () => void;
  private initExit: { code: number | null; signal: number | null } | null = null;
  /** Resolves when nothing reads the writable layer any more (stopKeepingUpper); destroy frees the disk after it. */
  private upperHeld: Promise<void> = Promise.resolve();
  private readonly seccomp: Buffer | null;
  private readonly caps: bigint;
  private readonly baseEnv: string[];
  private oomSeen = 0;
  private readonly onAbort = (): void => void this.destroy();
  /** pause/resume and commit's freeze (lib/pause.ts). */
  private readonly freezer: SandboxFreezer;

  private constructor(
    id: string,
    opts: ResolvedSandboxOptions,
    store: ImageStore,
    image: ResolvedImage,
    spawned: Spawned,
    cgroup: SandboxCgroup | null,
    seccomp: Buffer | null,
  ) {
    super();
    this.id = id;
    this.opts = opts;
    this.store = store;
    this.image = image;
    this.spawned = spawned;
    this.pid = spawned.pid;
    this.cgroup = cgroup;
    this.caps = capabilityMask(opts.capabilities);
    this.seccomp = seccomp;
    const env = new Map<string, string>();
    for (const kv of image.image.config.env) {
      const i = kv.indexOf('=');
      if (i > 0) env.set(kv.slice(0, i), kv.slice(i + 1));
    }
    if (!env.has('PATH')) env.set('PATH', DEFAULT_PATH);
    for (const [k, v] of Object.entries(opts.env)) env.set(k, v);
    this.baseEnv = [...env].map(([k, v]) => `${k}=${v}`);
    this.exitedP = new Promise((r) => (this.exitedResolve = r));
    this.freezer = new SandboxFreezer(id, () => this.cgroup);
  }

  /**
   * Creates a sandbox and waits until its init runs. Takes some milliseconds (docs/performance.md);
   * for many short-lived sandboxes a {@link Sandbox.pool} hides it.
   *
   * @param options How to make it; all optional. Default: the `'host'` image, no network, no limits but a 1 GiB writable layer.
   * @throws HutchError `EINVAL` (a bad option, named), `ENOIMAGE` (unknown image),
   * `EUNSUPPORTED` (the host lacks a feature asked for; the message says how to get it),
   * `ESETUP` (a setup step failed: `step` and `errno` say which and why), `EDESTROYED`
   * (`signal` was aborted).
   *
   * @example
   * ```ts
   * const sb = await Sandbox.create({ image: 'busybox', network: { mode: 'bridge' } });
   * try {
   *   console.log(sb.id, sb.network?.address);
   * } finally {
   *   await sb.destroy();
   * }
   * ```
   */
  static async create(options?: SandboxOptions): Promise<Sandbox> {
    const opts = resolveSandboxOptions(options);
    return Sandbox.createResolved(opts);
  }

  /** @internal */
  static async createResolved(opts: ResolvedSandboxOptions, how: { warm?: boolean; first?: FirstExec } = {}): Promise<Sandbox> {
    if (opts.signal?.aborted) throw abortError(opts.signal);
    const tr = new Trace('create');
    const n = native();
    // Planning that can still refuse (a profile too large for BPF...) runs before anything is made.
    const seccomp = compileSeccomp(opts.seccomp, { capabilities: opts.capabilities });
    tr.mark('seccomp');
    const store = opts.store ?? (defaultStore ??= ImageStore.default());
    const image = await resolveCached(store, opts.image);
    await prepareImageUser(image);
    tr.mark('resolve');
    // What the host cannot do with these options is refused by the plan (lib/plan/plan.ts),
    // first thing in startSandbox, before anything is made.
    let early: Sandbox | undefined;
    const started = await startSandbox(opts, store, image, tr, {
      warm: how.warm === true,
      // Sandbox.run: its command is sent as soon as the child is cloned, while it sets up.
      // init reads it as it starts, instead of after a round trip through this event loop.
      // Nothing else would happen in between with no network to attach; the v1 cgroups are
      // joined already (the child's first step), the cgroup namespace is made by init at the exec.
      ...(how.first && opts.network.mode === 'none' && !opts.signal
        ? {
            spawned: (st: StartedSandbox) => {
              const first = how.first!;
              early = new Sandbox(st.id, opts, store, image, st.spawned, st.cgroup, seccomp);
              early.watchControl();
              first.result = early.execResolved(first.command ?? early.defaultCommand(), first.exec);
              first.result.catch(() => undefined); // a failed setup is what create reports
            },
            failed: () => early?.abandonEarly(),
          }
        : {}),
    });
    const { id, spawned, cgroup } = started;
    n.close(spawned.errFd);
    tr.mark('wake');
    const sb: Sandbox = early ?? new Sandbox(id, opts, store, image, spawned, cgroup, seccomp);
    const warmKey = started.warmKey;
    if (warmKey !== null) sb.warmNext = () => void makeBlank(warmKey, store, image.image.id, image.layersDir, opts.limits.cgroup);
    sb.disk = started.disk;
    sb.ids = started.ids;
    sb.watch();
    try {
      if (opts.network.mode === 'bridge') {
        sb.attachment = await attachNetwork(opts.network, id, spawned.pid);
        if (sb.attachment) {
          sb.network = { address: sb.attachment.address, hostAddress: sb.attachment.hostAddress, interface: sb.attachment.interface };
          await sb.writeFile('/etc/hosts', hostsFile(opts.hostname ?? `hutch-${id}`, sb.attachment));
        }
      }
      if (opts.signal) {
        if (opts.signal.aborted) throw abortError(opts.signal);
        opts.signal.addEventListener('abort', sb.onAbort, { once: true });
      }
    } catch (e) {
      await sb.destroy();
      throw e;
    }
    tr.mark('ready');
    tr.end();
    return sb;
  }

  /**
   * create + exec + destroy: the one-off path. The sandbox is destroyed however the command
   * ends. Resolves for every way the command ends (see {@link ExecResult}), as soon as it has
   * ended: every process of the sandbox has been killed by then, and its host resources are
   * freed just after, in the background ({@link Sandbox.settle} waits for that). A run also
   * keeps a blank sandbox ready for the next run with the same image and limits (a warm
   * start: docs/performance.md), dropped after 2 s unused, by `settle()`, and at exit.
   *
   * @throws HutchError as {@link Sandbox.create} and {@link Sandbox.exec}; `EINVAL` when
   * `command` is absent and the image has no Entrypoint or Cmd.
   *
   * @example
   * ```ts
   * const r = await Sandbox.run({ image: 'busybox', command: 'echo hi', encoding: 'utf8' });
   * console.log(r.stdout); // 'hi\n'
   * ```
   */
  static async run(options: RunOptions): Promise<ExecResult> {
    if (typeof options !== 'object' || options === null) throw invalid('options', 'an object of RunOptions with a command', options);
    const opts = resolveSandboxOptions(options, RUN_KEYS);
    const exec = resolveExecOptions(options, 'run');
    const first: FirstExec = { command: options.command, exec };
    const sb = await Sandbox.createResolved(opts, { warm: true, first });
    let result: ExecResult;
    try {
      const running = first.result ?? sb.execResolved(options.command ?? sb.defaultCommand(), exec);
      // The next run's blank is made while this command runs: the event loop idles then, and
      // a clone now does not contend with this sandbox's own setup (both want the kernel's
      // network and mount locks).
      sb.warmNext?.();
      result = await running;
    } catch (e) {
      await sb.destroy();
      throw e;
    }
    // Everything in the sandbox is killed now (destroy's first, synchronous step); the
    // rest of the teardown (reaping, cgroup rmdir, releases) finishes off the caller's path.
    inBackground(sb.destroy());
    return result;
  }

  /**
   * Waits until every sandbox that {@link Sandbox.run} has finished with is torn down (its
   * processes were killed before `run` resolved; the cgroup, writable layer, id range and
   * network link are freed just after), and until the network's background releases are
   * done. Also drops what this process keeps for later starts: the blank sandboxes of warm
   * starts, and the id ranges it reuses (with their leases). Rejects with the first teardown
   * failure nobody has seen yet, then forgets it. Call it before checking that nothing is
   * left, or before a planned `process.exit()`.
   *
   * @throws HutchError `ECLEANUP` (a destroy's cleanup) or `ESETUP` with `step: 'network'`: a background teardown failed.
   *
   * @example
   * ```ts
   * await Sandbox.run({ image: 'busybox', command: 'true' });
   * await Sandbox.settle(); // its cgroup is gone now
   * ```
   */
  static async settle(): Promise<void> {
    await dropBlanks();
    await teardownsDone();
    // The id ranges kept for reuse go too, leases included: nothing of this process is left.
    dropIdleIds();
    const failures = takeFailures();
    await settleNetwork();
    if (failures.length > 0) throw failures[0];
  }

  /**
   * Pre-created sandboxes, each handed out once: a caller's run pays only for the exec.
   * Same as `new SandboxPool(options)`; the pool starts filling at once.
   *
   * @throws HutchError `EINVAL` for bad options (synchronously). Failures to create
   * sandboxes in the background surface from the next `acquire()` or `run()`.
   *
   * @example
   * ```ts
   * await using pool = Sandbox.pool({ image: 'busybox', size: 4, limits: { memory: '64MiB' } });
   * const r = await pool.run(['echo', 'hi'], { encoding: 'utf8' });
   * ```
   */
  static pool(options: PoolOptions): SandboxPool {
    return new SandboxPool(options);
  }

  /**
   * What this host supports, and why not: one {@link HostCheck} per feature with what depends
   * on it and how to get it (also `npx hutch doctor`). Does not reject for a missing feature.
   *
   * @example
   * ```ts
   * const report = await Sandbox.checkHost();
   * for (const c of report.checks.filter((c) => !c.ok)) console.log(`${c.name}: ${c.fix}`);
   * ```
   */
  static checkHost(): Promise<HostReport> {
    return checkHost();
  }

  private defaultCommand(): string[] {
    const c = this.image.image.config;
    const cmd = [...(c.entrypoint ?? []), ...(c.cmd ?? [])];
    if (cmd.length === 0) throw new HutchError('EINVAL', `invalid option command: none given and the image ${this.image.image.id} has no Entrypoint or Cmd`);
    return cmd;
  }

  private watch(): void {
    const n = native();
    this.pidWatch = new n.Watch(this.spawned.pidfd, () => this.onInitExit());
    this.pidWatch.unref();
    this.watchControl();
  }

  /** Messages from init: from the first exec on (which Sandbox.run may send during setup). */
  private watchControl(): void {
    if (this.ctlWatch) return;
    const n = native();
    const w = new n.Watch(this.spawned.ctlFd, () => this.onControl());
    if (this.procs.size === 0) w.unref();
    this.ctlWatch = w;
  }

  /** A create that failed after run's first exec was sent: that exec ends as killed. */
  private abandonEarly(): void {
    this.state = 'destroyed';
    this.ctlWatch?.close();
    this.ctlWatch = null;
    for (const p of this.procs.values()) p.onSandboxGone();
  }

  private onControl(): void {
    const n = native();
    for (;;) {
      const m = n.recv(this.spawned.ctlFd);
      if (m === undefined) return;
      if (m === null || isFailure(m)) {
        this.ctlWatch?.close();
        this.ctlWatch = null;
        return;
      }
      const msg = decode(m);
      if (!msg) continue;
      this.procs.get(msg.id)?.onMessage(msg);
      if (msg.type === 'exited') this.checkOom();
    }
  }

  private checkOom(): void {
    if (!this.cgroup) return;
    let k = 0;
    try {
      k = this.cgroup.oomKills();
    } catch {
      return;
    }
    if (k > this.oomSeen) {
      this.oomSeen = k;
      this.stats().then((u) => this.emit('oom', u), () => undefined);
    }
  }

  private onInitExit(): void {
    const r = native().reap(this.spawned.pidfd);
    if (r === null) return;
    this.pidWatch?.close();
    this.pidWatch = null;
    this.initExit = isFailure(r) ? { code: null, signal: null } : r;
    this.exitedResolve();
    for (const p of this.procs.values()) p.onSandboxGone();
    if (!this.destroying) {
      this.emit('exit', this.initExit);
      void this.destroy();
    }
  }

  private host(): ProcessHost {
    return {
      sendExec: (id, message, fds) => {
        const r = native().send(this.spawned.ctlFd, message, fds);
        if (isFailure(r)) throw this.gone(r.errno);
      },
      sendKill: (id, signal) => {
        if (this.state === 'destroyed') return;
        native().send(this.spawned.ctlFd, encodeKill(id, signal, true));
      },
      cgroup: this.cgroup,
      clock: this.freezer.clock,
      release: (id) => {
        this.procs.delete(id);
        if (this.procs.size === 0) this.ctlWatch?.unref();
      },
    };
  }

  private gone(errno?: number): HutchError {
    return new HutchError('EDESTROYED', `sandbox ${this.id} is destroyed${errno ? ` (control socket: errno ${errno})` : ''}; create a new one`);
  }

  private startProcess(command: unknown, o: ResolvedExecOptions, capture: boolean): ProcessState {
    if (this.state === 'destroyed') throw this.gone();
    const argv = resolveCommand('command', command);
    const limits = mergeExecLimits(this.opts.limits, { timeoutMs: o.timeoutMs, output: o.output });
    const user = o.user ?? this.opts.user ?? imageUser(this.image) ?? { uid: 0, gid: 0 };
    const cwd = o.cwd ?? this.opts.cwd ?? (this.image.image.config.workingDir ? checkInsidePath('cwd', this.image.image.config.workingDir) : '/');
    let env = this.baseEnv;
    if (Object.keys(o.env).length > 0) {
      const m = new Map(env.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
      for (const [k, v] of Object.entries(o.env)) m.set(k, v);
      env = [...m].map(([k, v]) => `${k}=${v}`);
    }
    const id = this.nextId++;
    if (this.nextId > 0xfffffff0) this.nextId = 1;
    const p = new ProcessState(this.host(), id, {
      capture,
      timeoutMs: limits.timeoutMs,
      outputBytes: capture ? limits.outputBytes : null,
      encoding: o.encoding,
      signal: o.signal,
      stdin: o.stdin,
      argv0: argv[0]!,
    });
    this.procs.set(id, p);
    this.ctlWatch?.ref();
    try {
      p.start((pid) =>
        encodeExec({
          id: pid,
          uid: user.uid,
          gid: user.gid,
          caps: this.caps,
          noNewPrivs: true,
          rlimits: this.opts.limits.rlimits,
          seccomp: this.seccomp,
          cwd,
          argv,
          env,
        }),
      );
    } catch (e) {
      this.procs.delete(id);
      if (this.procs.size === 0) this.ctlWatch?.unref();
      throw e;
    }
    return p;
  }

  /**
   * Runs a command to its end and returns how it ended, its output and its usage. Resolves
   * for every way the command can end (a non-zero exit, a timeout, an OOM kill, the output
   * cap); rejects only when hutch cannot do what was asked.
   *
   * @param command A string runs under `/bin/sh -c`; an array is executed directly.
   * @throws HutchError `EINVAL` (bad command or options), `EDESTROYED` (the sandbox is
   * destroyed), `ESETUP` (the command could not start, e.g. an array command not found:
   * `step: 'exec'`, `errno: 'ENOENT'`; a string command not found is exit code 127 instead).
   *
   * @example
   * ```ts
   * const r = await sb.exec(['ls', '-l', '/'], { encoding: 'utf8', timeoutMs: 5_000 });
   * if (r.exitCode !== 0) console.error(r.reason, r.stderr);
   * ```
   */
  async exec(command: string[] | string, options?: ExecOptions): Promise<ExecResult> {
    return this.execResolved(command, resolveExecOptions(options, 'exec'));
  }

  /** @internal */
  async execResolved(command: unknown, o: ResolvedExecOptions): Promise<ExecResult> {
    try {
      this.cgroup?.resetPeak();
    } catch {}
    return this.startProcess(command, o, true).result;
  }

  /**
   * Starts a command with its stdio as Node streams, for long-running or interactive
   * processes; its output is not captured (so `output` caps nothing).
   *
   * @throws HutchError `EINVAL` or `EDESTROYED`, synchronously. A failure to start rejects
   * {@link SandboxProcess.result} with `ESETUP`.
   *
   * @example
   * ```ts
   * const server = sb.spawn(['httpd', '-f', '-p', '8080']);
   * server.stderr.pipe(process.stderr);
   * // ... later
   * server.kill();
   * await server.result;
   * ```
   */
  spawn(command: string[] | string, options?: SpawnOptions): SandboxProcess {
    return this.startProcess(command, resolveExecOptions(options, 'spawn'), false);
  }

  /**
   * Writes a file inside the sandbox, creating or truncating it, owned by root inside.
   * The path is resolved in the sandbox's root: a symlink inside never leads out; only
   * regular files are written (as for {@link Sandbox.readFile}).
   *
   * @param path Absolute path inside; its directory must exist.
   * @param options `mode`: permission bits of a new file, default `0o644`.
   * @throws HutchError `EINVAL` (a relative path, a bad mode), `EDESTROYED`, `ENOENT` (a
   * missing directory), `ESETUP` with `step: 'open'` and the kernel's `errno` (e.g. `EROFS`
   * with `readonlyRootfs`).
   *
   * @example
   * ```ts
   * await sb.writeFile('/tmp/main.py', 'print("hi")\n');
   * await sb.writeFile('/tmp/run.sh', '#!/bin/sh\necho ok\n', { mode: 0o755 });
   * ```
   */
  async writeFile(path: string, data: string | Uint8Array, options?: { mode?: number }): Promise<void> {
    const p = checkInsidePath('path', path);
    const mode = options?.mode ?? 0o644;
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw invalid('mode', 'a file mode such as 0o644', mode);
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    const fd = this.openInside(p, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_TRUNC, mode);
    try {
      let off = 0;
      while (off < buf.length) off += writeSync(fd, buf, off);
    } finally {
      closeSync(fd);
    }
  }

  /**
   * Reads a whole file inside the sandbox (resolved in its root: a symlink inside never leads
   * out). Access is checked as root inside. Only regular files: a directory gives `EISDIR`;
   * device nodes, FIFOs and files on proc, sysfs or cgroupfs give `EPERM`.
   *
   * @param path Absolute path inside.
   * @throws HutchError `EINVAL` (a relative path), `EDESTROYED`, `ENOENT` (no such file),
   * `ESETUP` with `step: 'open'` and the kernel's `errno` (e.g. `EISDIR`, `EPERM`).
   *
   * @example
   * ```ts
   * await sb.exec('date > /tmp/now');
   * const text = (await sb.readFile('/tmp/now')).toString('utf8');
   * ```
   */
  async readFile(path: string): Promise<Buffer> {
    const p = checkInsidePath('path', path);
    const fd = this.openInside(p, fsc.O_RDONLY, 0);
    try {
      const chunks: Buffer[] = [];
      for (;;) {
        const b = Buffer.allocUnsafe(65536);
        const k = readSync(fd, b);
        if (k === 0) break;
        chunks.push(b.subarray(0, k));
      }
      return Buffer.concat(chunks);
    } finally {
      closeSync(fd);
    }
  }

  private openInside(p: string, flags: number, mode: number): number {
    if (this.state === 'destroyed') throw this.gone();
    const fd = native().openInRoot(this.pid, p, flags, mode, this.ids.uid, this.ids.gid);
    if (isFailure(fd)) {
      // A missing file is what fs users expect as ENOENT, not a setup failure (issue 14).
      if (errnoName(fd.errno) === 'ENOENT') {
        throw new HutchError('ENOENT', `no such file or directory in sandbox ${this.id}: ${p}`, { step: 'open', errno: 'ENOENT', path: p, hint: 'create it first (writeFile, exec), or check the path' });
      }
      throw setupError({ step: 'open', errno: fd.errno, path: p });
    }
    return fd;
  }

  /**
   * The whole sandbox's usage now: CPU since creation, peak memory, current tasks, OOM kills
   * since creation (`wallMs` is 0).
   *
   * @throws HutchError `EDESTROYED`.
   *
   * @example
   * ```ts
   * const u = await sb.stats();
   * console.log(u.pids, u.memoryPeakBytes, u.oomKills);
   * ```
   */
  async stats(): Promise<ResourceUsage> {
    if (this.state === 'destroyed') throw this.gone();
    const u = this.cgroup?.usage();
    return {
      wallMs: 0,
      cpuUserMs: u?.cpuUserMs ?? 0,
      cpuSystemMs: u?.cpuSystemMs ?? 0,
      memoryPeakBytes: u?.memoryPeakBytes ?? 0,
      pids: u?.pids ?? 0,
      oomKills: u?.oomKills ?? 0,
      ...(u?.ioReadBytes !== undefined ? { ioReadBytes: u.ioReadBytes } : {}),
      ...(u?.ioWriteBytes !== undefined ? { ioWriteBytes: u.ioWriteBytes } : {}),
    };
  }

  /**
   * Freezes every process of the sandbox where it is (cgroup freezer: `cgroup.freeze` on
   * cgroup v2 and on a hybrid host's cgroup2 leaf, else the v1 `freezer` controller) and
   * resolves once all are stopped. Exec timeouts (`timeoutMs`) stop counting until
   * {@link Sandbox.resume}; an exec started meanwhile waits. `stats()`, `commit()` and
   * `destroy()` work on a paused sandbox (a commit leaves it paused). Idempotent.
   * docs/limits.md, "Pause and resume".
   *
   * @throws HutchError `EDESTROYED`; `EUNSUPPORTED` (no cgroup freezer for this sandbox:
   * the message says how to get one); `ESETUP` with `step: 'cgroup'` when a task would not
   * stop within 10 s (a task in uninterruptible sleep; the sandbox is thawed again).
   *
   * @example
   * ```ts
   * const job = sb.exec('./train.sh', { timeoutMs: 60_000 });
   * await sb.pause();  // no CPU used from here; the 60 s stop counting
   * console.log((await sb.stats()).cpuUserMs);
   * await sb.resume(); // goes on where it stopped
   * const r = await job;
   * ```
   */
  async pause(): Promise<void> {
    if (this.state === 'destroyed') throw this.gone();
    try {
      await this.freezer.pause();
    } catch (e) {
      // destroy() removed the cgroup under the freeze.
      throw (this.state as string) === 'destroyed' ? this.gone() : e;
    }
  }

  /**
   * Thaws a sandbox {@link Sandbox.pause | paused} before: its processes go on where they
   * stopped, and exec timeouts count again from where they were. Idempotent (a sandbox that
   * is not paused is left as it is).
   *
   * @throws HutchError `EDESTROYED`.
   *
   * @example
   * ```ts
   * await sb.pause();
   * const img = await sb.commit({ tag: 'snapshot:1' }); // still paused after the commit
   * await sb.resume();
   * ```
   */
  async resume(): Promise<void> {
    if (this.state === 'destroyed') throw this.gone();
    await this.freezer.resume();
  }

  /** Whether {@link Sandbox.pause} froze the sandbox and {@link Sandbox.resume} did not thaw it yet. */
  get paused(): boolean {
    return this.freezer.isPaused;
  }

  /**
   * The writable layer becomes a new image layer: a new image in the sandbox's store, the
   * sandbox's image plus what was changed in it (deletions included). The sandbox goes on
   * running; it is frozen (cgroup freezer) while its writable layer is read, and thawed
   * after. Files with holes keep them. docs/images.md, "Commit".
   *
   * @param options `tag`: a name for the new image, such as `'app:1.0'`.
   * @throws HutchError `EDESTROYED`, `EINVAL` (a bad tag), `ESTORE` with errno `EFBIG` (more
   * file data than the store's layer cap or the sandbox's disk limit; nothing is kept) or
   * with the store's own errno (`ENOSPC`, `EDQUOT`, `EROFS`, `EIO`: the store could not be
   * written; nothing half-made is left, the space comes back, the sandbox keeps working),
   * `EUNSUPPORTED` (no cgroup freezer for this sandbox).
   *
   * @example
   * ```ts
   * const sb = await Sandbox.create({ image: 'busybox' });
   * await sb.exec('echo configured > /etc/app.conf');
   * const img = await sb.commit({ tag: 'app:1' });
   * await sb.destroy();
   * const r = await Sandbox.run({ image: 'app:1', command: 'cat /etc/app.conf' });
   * ```
   */
  async commit(options?: { tag?: string }): Promise<Image> {
    if (this.state === 'destroyed') throw this.gone();
    if (options !== undefined && (typeof options !== 'object' || options === null)) throw invalid('options', 'an object { tag? }', options);
    // Every process of the sandbox is frozen while its writable layer is read (and thawed
    // after, whatever happened): a process swapping a directory for a symlink mid-walk could
    // otherwise steer what host root reads. Without a freezer the commit is refused rather
    // than done on a moving tree.
    this.freezer.check('commit');
    const diskBytes = this.opts.limits.diskBytes;
    // init holds the scratch tmpfs open as its fd 4: the upper dir is reachable from here
    // while the sandbox runs, and nowhere else.
    return this.store.commitUpper({
      base: this.image.image,
      upperDir: `/proc/${this.pid}/fd/4/upper`,
      hostIds: { uid: this.ids.uid, gid: this.ids.gid },
      // A paused sandbox stays so: the cgroup thaws only when no pause or commit holds it.
      hold: { freeze: () => this.freezer.hold('commit'), thaw: () => this.freezer.release() },
      ...(diskBytes !== null ? { cap: { bytes: diskBytes } } : {}),
      ...(options?.tag !== undefined ? { tag: options.tag } : {}),
    });
  }

  /**
   * @internal For a build step, whose layer is written from a sandbox where nothing runs:
   * opens the writable layer (overlay's upper dir) as an fd, then kills every process of the
   * sandbox and resolves once all are gone — init is killed, and the kernel ends its pid
   * namespace only after every other task in it is dead and reaped. The sandbox is destroyed
   * by that (the 'exit' event is not emitted); the fd keeps the layer readable, and the disk
   * under it (persistent or pre-6.6 on-disk layers) is freed only after `release()`.
   */
  async stopKeepingUpper(): Promise<{ fd: number; release: () => void }> {
    if (this.state === 'destroyed') throw this.gone();
    let fd: number;
    try {
      fd = openSync(`/proc/${this.pid}/fd/4/upper`, fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
    } catch (e) {
      throw new HutchError('ESETUP', `cannot open the writable layer of sandbox ${this.id}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { step: 'open', errno: (e as NodeJS.ErrnoException).code, cause: e });
    }
    let release!: () => void;
    this.upperHeld = new Promise((r) => (release = r));
    const done = this.destroy();
    await this.exitedP;
    return {
      fd,
      release: () => {
        release();
        void done.catch(() => undefined);
      },
    };
  }

  /**
   * Kills everything in the sandbox and frees every host resource (cgroup, network link,
   * writable layer, id range). Idempotent: later calls return the same promise. Running
   * execs resolve with reason `'killed'`; later calls of other methods reject with `EDESTROYED`.
   *
   * @throws HutchError `ECLEANUP` with `step: 'destroy'` when freeing a host resource failed
   * (the sandbox is destroyed all the same; `cause` is the first failure).
   *
   * @example
   * ```ts
   * const sb = await Sandbox.create();
   * try { await sb.exec('true'); } finally { await sb.destroy(); }
   * ```
   */
  destroy(): Promise<void> {
    if (this.destroying) return this.destroying;
    this.state = 'destroyed';
    this.opts.signal?.removeEventListener('abort', this.onAbort);
    const n = native();
    this.destroying = (async () => {
      const tr = new Trace('destroy');
      if (!this.initExit) n.pidfdKill(this.spawned.pidfd, 9);
      this.ctlWatch?.close();
      this.ctlWatch = null;
      n.close(this.spawned.ctlFd);
      if (this.pidWatch) this.pidWatch.ref();
      await this.exitedP;
      tr.mark('exit');
      this.ids.release();
      n.close(this.spawned.pidfd);
      const errors: unknown[] = [];
      // The owner record goes last, once the cgroup and the disk it vouches for are gone: a
      // prune elsewhere would take a cgroup without a record for a crashed sandbox's.
      await Promise.all([
        this.cgroup?.destroy().then(() => tr.mark('cgroup'), (e) => errors.push(e)),
        this.attachment ? releaseNetwork(this.attachment).catch((e) => errors.push(e)) : undefined,
        this.disk ? this.upperHeld.then(() => this.disk!.release()).catch((e) => errors.push(e)) : undefined,
      ]);
      await this.store.release(this.id).then(() => tr.mark('release'), (e) => errors.push(e));
      tr.end();
      this.emit('destroyed');
      if (errors.length > 0) {
        throw new HutchError('ECLEANUP', `sandbox ${this.id} was destroyed but cleanup failed: ${errors.map(String).join('; ')}`, { step: 'destroy', cause: errors[0] });
      }
    })();
    return this.destroying;
  }

  /**
   * Same as {@link Sandbox.destroy}, for `await using`.
   *
   * @example
   * ```ts
   * {
   *   await using sb = await Sandbox.create();
   *   await sb.exec('true');
   * } // destroyed here
   * ```
   */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroy();
  }
}


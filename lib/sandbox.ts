/**
 * The Sandbox: the public class. Its parts live in lib/runtime/: create.ts (plan, start,
 * network, run, settle), control.ts (init's control socket: exec/spawn, exits, OOM),
 * files.ts (writeFile/readFile), destroy.ts; core.ts holds the state they share.
 * API.md is the contract.
 */
import { seenIds } from './host/ids.js';
import { hostMode } from './host/mode.js';
import { EventEmitter } from 'eventemitter3';
import { HutchError, invalid } from './errors.js';
import type { SandboxIds } from './idrange.js';
import type { Image, ResolvedImage } from './image/types.js';
import {
  RUN_KEYS, resolveExecOptions, resolveSandboxOptions,
  type ExecOptions, type ResolvedExecOptions, type ResolvedSandboxOptions, type RunOptions, type SandboxOptions, type SpawnOptions,
  type TemplateOptions, type TemplateRunOptions,
} from './options.js';
import type { ExecResult, ResourceUsage, SandboxProcess } from './process.js';
import { PoolOf, type PoolOptions } from './pool.js';
import { checkHost, type HostReport } from './host.js';
import { upperDirOf } from './conventions.js';
import { SandboxCore as SandboxCoreClass, type SandboxCore, type SandboxEvents } from './runtime/core.js';
import type { ClonedInit } from './native.js';
import type { SandboxCgroup } from './cgroup/driver.js';
import { compileSeccomp } from './seccomp/index.js';
import { setPlainPolicy, type SandboxEgress, type Violation, type ViolationLog } from './network/egress.js';
import type { NetworkAttachment } from './network/index.js';
import { createCore, runOnce, settleAll, type FirstExec } from './runtime/create.js';
import { execResolved, startProcess, watch } from './runtime/control.js';
import { readInside, writeInside } from './runtime/files.js';
import { destroySandbox, stopKeepingUpper } from './runtime/destroy.js';
import { storeHooks } from './image/hooks.js';
import type { ImageStore } from './image/store.js';
import type { PersistentDisk } from './disk.js';
import type { Limits } from './limits.js';
import { dropBlanks } from './warm.js';

export { DEFAULT_DISK_BYTES } from './start.js';

/**
 * What {@link Sandbox.template} gives: a warm interpreter (zygote) that forks a fresh sandbox
 * per task, each isolated from its siblings and the template as two created sandboxes are
 * (docs/templates.md).
 */
export interface SandboxTemplate {
  /** Host pid of the template sandbox's init. */
  readonly pid: number;
  /** Forks a sandbox, writes `files`, runs `command` in the warm interpreter, destroys the fork. */
  run(command: string[] | string, options?: TemplateRunOptions): Promise<ExecResult>;
  /** A forked sandbox like any other (exec, files, stats, destroy); the caller destroys it. */
  fork(): Promise<Sandbox>;
  /** Ends the zygote and every fork it still holds. Idempotent. */
  close(): Promise<void>;
  /** `await using` support: {@link SandboxTemplate.close}. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** @internal A template fork's network link, made before its init ran (lib/template/net.ts), handed to the Sandbox it becomes. */
export interface AdoptedLink {
  attachment: NetworkAttachment | null;
  egress: SandboxEgress | null;
  /** The log its egress reports to; `route` sends what it records to the Sandbox's 'violation' listeners. */
  log: ViolationLog;
  route(emit: (v: Violation) => void): void;
}

/** @internal lib/template registers its factory here (it sits above the runtime: no import cycle). */
export const templateHooks: { create: ((options: TemplateOptions) => Promise<SandboxTemplate>) | null } = { create: null };

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
  get state(): 'running' | 'destroyed' {
    return this.core.state;
  }
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
  private readonly core: SandboxCore;

  private constructor(core: SandboxCore) {
    super();
    this.core = core;
    this.id = core.id;
    this.pid = core.pid;
    this.image = core.image;
    const a = core.attachment;
    if (a) this.network = { address: a.address, hostAddress: a.hostAddress, interface: a.interface };
    core.emit = (event, ...args) => void (this.emit as (e: string, ...a: unknown[]) => boolean)(event, ...args);
  }

  /** @internal The host ids of this sandbox's range. */
  get ids(): SandboxIds {
    return this.core.ids;
  }

  /** @internal For tests that reach into a running sandbox (its cgroup, processes, clone result). */
  get cgroup(): SandboxCore['cgroup'] {
    return this.core.cgroup;
  }

  /** @internal */
  get procs(): SandboxCore['procs'] {
    return this.core.procs;
  }

  /** @internal */
  get spawned(): SandboxCore['spawned'] {
    return this.core.spawned;
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
    return new Sandbox(await createCore(opts, how));
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
    return runOnce(opts, options.command, exec);
  }

  /**
   * A template: a warm interpreter (zygote) that forks a fresh, fully isolated sandbox per
   * task. docs/templates.md.
   *
   * @example
   * ```ts
   * await using t = await Sandbox.template({ zygote: 'python', preload: ['json'] });
   * const r = await t.run('python3 -c print(1)', { encoding: 'utf8' });
   * ```
   */
  static async template(options: TemplateOptions): Promise<SandboxTemplate> {
    if (!templateHooks.create) throw new HutchError('EUNSUPPORTED', 'Sandbox.template: templates are not loaded; import Sandbox from the package entry (hutch), which loads lib/template');
    // A fork enters its namespaces and cgroup from inside the template, which outside root mode
    // would need the holder namespace's rights there (docs/templates.md).
    if (hostMode() !== 'root') throw new HutchError('EUNSUPPORTED', `Sandbox.template is not supported outside host root (this is ${hostMode()} mode): a template's forks make their namespaces and join their cgroups from inside the template; use Sandbox.create / Sandbox.run (or a SandboxPool) here, or run as root`);
    return templateHooks.create(options);
  }

  /** @internal A sandbox whose init a template's fork started (lib/template): watched and used like any other. */
  static adopt(id: string, opts: ResolvedSandboxOptions, store: ImageStore, image: ResolvedImage, spawned: ClonedInit, cgroup: SandboxCgroup, ids: SandboxIds, made: { link?: AdoptedLink; disk?: PersistentDisk | null } = {}): Sandbox {
    const core = new SandboxCoreClass(id, opts, store, image, spawned, cgroup, compileSeccomp(opts.seccomp, { capabilities: opts.capabilities }));
    core.ids = ids;
    // Its writable layer on disk (before Linux 6.6), made for the fork: freed by its destroy.
    core.disk = made.disk ?? null;
    const link = made.link;
    if (link) {
      // Its link, made before its init ran (lib/template/net.ts): released by its destroy.
      core.attachment = link.attachment;
      core.egress = link.egress;
      core.violationLog = link.log;
      link.route((v) => core.emit('violation', v));
    }
    watch(core);
    return new Sandbox(core);
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
    await settleAll();
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
    return execResolved(this.core, command, o);
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
    return startProcess(this.core, command, resolveExecOptions(options, 'spawn'), false);
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
    writeInside(this.core, path, data, options);
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
    return readInside(this.core, path);
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
    return this.core.stats();
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
    const core = this.core;
    if (core.state === 'destroyed') throw core.gone();
    try {
      await core.freezer.pause();
    } catch (e) {
      // destroy() removed the cgroup under the freeze.
      throw (core.state as string) === 'destroyed' ? core.gone() : e;
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
    if (this.core.state === 'destroyed') throw this.core.gone();
    await this.core.freezer.resume();
  }

  /** Whether {@link Sandbox.pause} froze the sandbox and {@link Sandbox.resume} did not thaw it yet. */
  get paused(): boolean {
    return this.core.freezer.isPaused;
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
    const core = this.core;
    if (core.state === 'destroyed') throw core.gone();
    if (options !== undefined && (typeof options !== 'object' || options === null)) throw invalid('options', 'an object { tag? }', options);
    // Every process of the sandbox is frozen while its writable layer is read (and thawed
    // after, whatever happened): a process swapping a directory for a symlink mid-walk could
    // otherwise steer what host root reads. Without a freezer the commit is refused rather
    // than done on a moving tree.
    core.freezer.check('commit');
    const diskBytes = core.opts.limits.diskBytes;
    // init holds the scratch tmpfs open (lib/conventions.ts): the upper dir is reachable from
    // here while the sandbox runs, and nowhere else.
    return core.store.commitUpper({
      base: core.image.image,
      upperDir: upperDirOf(core.pid),
      hostIds: seenIds(core.ids),
      // A paused sandbox stays so: the cgroup thaws only when no pause or commit holds it.
      hold: { freeze: () => core.freezer.hold('commit'), thaw: () => core.freezer.unhold() },
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
    return stopKeepingUpper(this.core);
  }

  /**
   * Replaces `allow`, `domains` and `deny` of a sandbox made with egress by name, for every
   * later query and connection (connections already open stay); nothing inside restarts.
   *
   * @throws HutchError `EINVAL` (bad lists; `domains`/`deny` on a sandbox made without names;
   *   any list on one without outbound 'nat'),
   *   `EDESTROYED`, `ESETUP` (nft failed).
   */
  async setNetworkPolicy(policy: { allow?: string[]; domains?: string[]; deny?: string[] }): Promise<void> {
    const core = this.core;
    if (core.state === 'destroyed') throw core.gone();
    await (core.egress ? core.egress.setPolicy(policy) : setPlainPolicy(core.attachment, policy));
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
    return destroySandbox(this.core);
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


// The image layer below calls up through these hooks, never through an import (lib/image/hooks.ts).
storeHooks.dropBlanks = dropBlanks;
storeHooks.runStep = (o) => Sandbox.create({ image: o.image, store: o.store as ImageStore, network: o.network, ...(o.limits !== undefined ? { limits: o.limits as Limits } : {}) });

/**
 * Pre-created sandboxes, each handed out once and never reused: every `run()` and
 * `acquire()` gets a fresh sandbox, and the pool refills in the background. Made with
 * {@link Sandbox.pool} or `new SandboxPool(options)`.
 *
 * When background creation fails, the next `acquire()` creates a sandbox directly, so the
 * error reaches the caller as that creation's `HutchError`.
 *
 * @example
 * ```ts
 * await using pool = Sandbox.pool({ image: 'busybox', size: 4 });
 * const results = await Promise.all(['a', 'b', 'c'].map((x) => pool.run(['echo', x], { encoding: 'utf8' })));
 * ```
 */
export class SandboxPool extends PoolOf<Sandbox> {
  /**
   * Validates the options and starts creating `size` sandboxes in the background.
   *
   * @throws HutchError `EINVAL` for a bad option (a `size` out of range, a `signal`, ...).
   *
   * @example
   * ```ts
   * const pool = new SandboxPool({ size: 2 });
   * ```
   */
  constructor(options: PoolOptions) {
    super(options, (opts) => Sandbox.createResolved(opts));
  }
}

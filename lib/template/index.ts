/**
 * Templates (docs/templates.md): a sandbox whose zygote has imported its preload and forks
 * once per task. Each fork makes itself a fresh sandbox before any task code runs
 * (addon/zygote/helper.c): new pid, mount, net, ipc, uts and cgroup namespaces, a fresh
 * writable layer over the template's root, a cgroup this host made for it with the template's
 * limits, capabilities dropped, no_new_privs and the template's seccomp program.
 *
 * The template's lifecycle and public methods here: the template sandbox and its zygote
 * (restarted when it ends; started in zygote.ts), run, fork and close. One task's run in its
 * fork (request, output, the fork's messages, the result, the teardown): run.ts; the forks
 * prepared ahead and their refill: queue.ts; a fork's host-side steps and forks that become
 * sandboxes: fork.ts; the template addon and helper files: native.ts.
 */
import { Sandbox, DEFAULT_DISK_BYTES, templateHooks, type SandboxTemplate } from '../sandbox.js';
import { HutchError, invalid } from '../errors.js';
import { CAPABILITIES, capabilityMask } from '../capabilities.js';
import { compileSeccomp } from '../seccomp/index.js';
import { ImageStore } from '../image/store.js';
import { kernelFeatures } from '../host/features.js';
// The same /dev/shm size and /proc masks as a fresh sandbox's (lib/plan), applied again in each fork's new /proc.
import { DEFAULT_SHM_BYTES, MASKED, READONLY, resolveCached, sandboxEnv, writableLayer } from '../plan/index.js';
import {
  checkInsidePath, resolveCommand, resolveExecOptions, resolveSandboxOptions,
  type ResolvedSandboxOptions,
} from '../options.js';
import type { ExecResult, SandboxProcess } from '../process.js';
import { encodePlan } from './plan.js';
import { Trace } from '../trace.js';
import type { TemplateOptions, TemplateRunOptions } from '../options.js';
import { forkSandbox, type ForkSite } from './fork.js';
import { ForkQueue } from './queue.js';
import { runTask, type RunHost } from './run.js';
import { checkNodeZygoteBuild, helperFiles, nodeZygoteFiles } from './native.js';
import { startZygote, zygoteGone, type Zygote } from './zygote.js';

export type { TemplateOptions, TemplateRunOptions } from '../options.js';

const TEMPLATE_KEYS = ['zygote', 'preload', 'size', 'zygoteTimeoutMs'];
/** Where the zygote's own files are bound in the template (not carried into forks). */
const ZDIR = '/.hutch-zygote';
/**
 * The built-in Node zygote. Each fork gets V8 platform worker threads of its own
 * (addon/zygote/node_platform.cc), so V8 runs as in a cold node: concurrent marking, sweeping
 * and compiling. `--no-memory-reducer`: the memory reducer's timer, armed by the zygote's
 * collections, would fire at once in every fork made after it was due (about 8 s into the
 * zygote's life) and start a full marking there, for a heap that is not idle but just born.
 */
const NODE_ZYGOTE = ['node', '--no-memory-reducer', `${ZDIR}/zygote.cjs`];

/**
 * A warm interpreter serving fresh sandboxes. Made by {@link Sandbox.template}.
 *
 * @example
 * ```ts
 * await using t = await Sandbox.template({ zygote: 'python', preload: ['json'], limits: { memory: '256MiB' } });
 * const r = await t.run(['python3', 'main.py'], { files: { '/tmp/main.py': 'print(1)' }, cwd: '/tmp', encoding: 'utf8' });
 * ```
 */
export class ZygoteTemplate implements SandboxTemplate {
  private sandbox!: Sandbox;
  private zygote: Zygote | null = null;
  private starting: Promise<Zygote> | null = null;
  private closed = false;
  private readonly live = new Set<Promise<unknown>>();
  private readonly kills = new Set<() => void>();
  private size = 0;
  /** Forks prepared ahead (`size`). */
  private queue!: ForkQueue;
  /** What each run needs from the template (lib/template/run.ts). */
  private runHost!: RunHost;
  private site!: ForkSite;
  private baseEnv!: Record<string, string>;
  private defaultCwd = '/';
  private zygoteArgv!: string[];
  private zygoteEnv!: Record<string, string>;

  private constructor(
    private readonly opts: ResolvedSandboxOptions,
    private readonly timeoutMs: number,
  ) {}

  /** @internal Sandbox.template. */
  static async create(options: TemplateOptions): Promise<ZygoteTemplate> {
    if (typeof options !== 'object' || options === null) throw invalid('options', 'an object of TemplateOptions with a zygote', options);
    const { zygote, preload = [], size = 0, zygoteTimeoutMs = 30_000, ...rest } = options;
    if (zygote !== 'python' && zygote !== 'node' && !(Array.isArray(zygote) && zygote.length > 0 && zygote.every((a) => typeof a === 'string' && a !== ''))) {
      throw invalid('zygote', "'python', 'node' or a command (array of strings) that serves the zygote protocol", zygote);
    }
    if (!Array.isArray(preload) || !preload.every((p) => typeof p === 'string' && p !== '' && !p.includes('\0'))) throw invalid('preload', 'an array of module names or file paths', preload);
    if (!Number.isInteger(size) || size < 0 || size > 64) throw invalid('size', 'an integer from 0 to 64 (forks kept ready)', size);
    if (!Number.isInteger(zygoteTimeoutMs) || zygoteTimeoutMs <= 0) throw invalid('zygoteTimeoutMs', 'a positive number of milliseconds', zygoteTimeoutMs);
    void TEMPLATE_KEYS;
    const opts = resolveSandboxOptions(rest);
    if (zygote === 'node' && opts.image === 'host') checkNodeZygoteBuild();
    if (opts.network.mode === 'bridge' && opts.network.ports.length > 0) {
      throw invalid('network.ports', "none for a template: every fork would publish the same host port (publish from a Sandbox.create, or give forks hostPorts to reach the host)", options.network && (options.network as { ports?: unknown }).ports);
    }
    if (opts.network.mode === 'bridge' && opts.network.backend === 'userspace') {
      throw new HutchError('EUNSUPPORTED', "a template's network needs the kernel backend (a veth per fork, as host root); backend 'userspace' (pasta) is for sandboxes made outside host root");
    }
    if (opts.persistent) throw invalid('persistent', 'false for a template (each fork has its own ephemeral writable layer)', true);
    const t = new ZygoteTemplate(opts, zygoteTimeoutMs);
    t.size = size;
    const files = helperFiles();
    const store = opts.store ?? ImageStore.default();
    const image = await resolveCached(store, opts.image);
    t.zygoteEnv = { HUTCH_ZYGOTE_LIB: `${ZDIR}/libhutch-zygote.so`, HUTCH_ZYGOTE_PRELOAD: JSON.stringify(preload) };
    t.zygoteArgv = zygote === 'python' ? ['python3', `${ZDIR}/zygote.py`, ...preload] : zygote === 'node' ? NODE_ZYGOTE : zygote;
    // The Node zygote's script and addon (docs/templates.md, "The Node zygote").
    const nodeFiles = zygote === 'node' ? nodeZygoteFiles() : null;
    const nodeMounts = nodeFiles
      ? [
          { source: nodeFiles.script, target: `${ZDIR}/zygote.cjs`, readonly: true },
          { source: nodeFiles.addon, target: `${ZDIR}/hutch_zygote_node.node`, readonly: true },
        ]
      : [];
    if (nodeFiles) t.zygoteEnv.HUTCH_ZYGOTE_NODE_ADDON = `${ZDIR}/hutch_zygote_node.node`;
    // The template sandbox: the zygote needs the capabilities and syscalls of the fork-time
    // steps (unshare, mount, pivot_root); no task code ever runs in it. Each fork drops to
    // the template's own capabilities and seccomp before its task starts.
    t.sandbox = await Sandbox.create({
      ...rest,
      // The zygote is root of the template (it makes each fork's namespaces and mounts); each
      // fork takes the template's `user` with its credentials, before its task starts.
      user: 0,
      capabilities: [...CAPABILITIES],
      seccomp: 'unconfined',
      // The template's own namespace keeps only lo: each fork gets the link (lib/template/net.ts).
      network: 'none',
      mounts: [
        ...(rest.mounts ?? []),
        { source: files.lib, target: `${ZDIR}/libhutch-zygote.so`, readonly: true },
        { source: files.python, target: `${ZDIR}/zygote.py`, readonly: true },
        ...nodeMounts,
      ],
    });
    try {
      const seccomp = compileSeccomp(opts.seccomp, { capabilities: opts.capabilities });
      const user = opts.user ?? { uid: 0, gid: 0 };
      const cfg = t.sandbox.image.image.config;
      t.defaultCwd = opts.cwd ?? (cfg.workingDir ? checkInsidePath('cwd', cfg.workingDir) : '/');
      t.baseEnv = sandboxEnv(t.sandbox.image, opts.env);
      if (nodeFiles) {
        // V8's heap pages packed, not scattered: each fork copies far fewer page tables
        // (addon/zygote/mmap_hint.c). zygote.cjs puts the environment's own LD_PRELOAD back.
        t.zygoteEnv.HUTCH_ZYGOTE_LD_PRELOAD = t.baseEnv.LD_PRELOAD ?? '';
        t.zygoteEnv.LD_PRELOAD = [t.zygoteEnv.HUTCH_ZYGOTE_LIB, t.baseEnv.LD_PRELOAD].filter(Boolean).join(' ');
      }
      // Each fork's writable layer goes where a created sandbox's would (before 6.6: the store's disk).
      const upper = writableLayer(opts);
      const planOpts = {
        uid: user.uid,
        gid: user.gid,
        caps: capabilityMask(opts.capabilities),
        rlimits: opts.limits.rlimits,
        seccomp,
        scratchSize: String(opts.limits.diskBytes ?? DEFAULT_DISK_BYTES),
        shmSize: String(DEFAULT_SHM_BYTES),
        hostname: opts.hostname ?? `hutch-${t.sandbox.id}`,
        masked: MASKED,
        readonly: READONLY,
        skip: [`${ZDIR}/libhutch-zygote.so`, `${ZDIR}/zygote.py`, ...nodeMounts.map((m) => m.target)],
        readonlyRoot: opts.readonlyRootfs,
        // Each fork's link is the host's to make (lib/template/net.ts): the fork waits for it.
        network: opts.network.mode !== 'none',
        lowerList: !kernelFeatures().overlayLowerdirPlus,
        diskUpper: upper.kind !== 'tmpfs',
      };
      t.site = {
        opts,
        store,
        imageId: image.image.id,
        resolved: image,
        ids: t.sandbox.ids,
        layers: { dir: image.layersDir, lowerdirs: image.lowerdirs, userns: t.sandbox.ids.layersUserns },
        plan: encodePlan(planOpts),
        initPlan: encodePlan({ ...planOpts, asInit: true }),
        helperLib: files.lib,
        hostname: planOpts.hostname,
        upper,
      };
      const track = (p: Promise<unknown>): void => t.track(p);
      t.queue = new ForkQueue({ site: t.site, zygote: () => t.ensureZygote(), gone: zygoteGone, track }, size);
      t.runHost = { site: t.site, baseEnv: t.baseEnv, defaultCwd: t.defaultCwd, kills: t.kills, track, quiet: () => t.queue.quiet() };
      await t.ensureZygote();
      t.queue.refill();
    } catch (e) {
      await t.sandbox.destroy().catch(() => undefined);
      throw e;
    }
    return t;
  }

  private ensureZygote(): Promise<Zygote> {
    if (this.zygote && !zygoteGone(this.zygote)) return Promise.resolve(this.zygote);
    // The zygote sees the environment its tasks will (PYTHONPATH for the preload...), plus its own.
    const env = { ...this.baseEnv, ...this.zygoteEnv };
    const onEnd = (z: Zygote): void => {
      if (this.zygote === z) this.zygote = null;
      this.queue.dropZygote(z);
    };
    this.starting ??= startZygote(this.sandbox, this.zygoteArgv, env, this.timeoutMs, onEnd).then(
      (z) => {
        this.starting = null;
        this.zygote = z;
        return z;
      },
      (e: unknown) => {
        this.starting = null;
        throw e;
      },
    );
    return this.starting;
  }

  /** The host pid of the template's init (the template sandbox's). */
  get pid(): number {
    return this.sandbox.pid;
  }

  /** The template sandbox itself (its zygote runs there): for inspection, never for task code. @internal */
  get templateSandbox(): Sandbox {
    return this.sandbox;
  }

  /** The zygote's process in the template sandbox (pid inside), or null when none runs. @internal */
  get zygoteProcess(): SandboxProcess | null {
    return this.zygote?.proc ?? null;
  }

  /**
   * Runs a task in a fresh sandbox forked from the warm zygote. Resolves for every way the
   * task ends, as Sandbox.exec does; rejects only when hutch cannot do what was asked.
   *
   * @throws HutchError `EINVAL`, `EDESTROYED` (closed), `ESETUP` (the fork's setup failed:
   * `step` says where; or the zygote could not be restarted).
   */
  async run(command: string[] | string, options?: TemplateRunOptions): Promise<ExecResult> {
    if (this.closed) throw new HutchError('EDESTROYED', 'the template is closed; create a new one');
    const { files, ...execOptions } = options ?? {};
    const o = resolveExecOptions(execOptions, 'exec');
    // One plan for every fork: its credentials are the template's (TemplateOptions.user).
    const own = this.opts.user ?? { uid: 0, gid: 0 };
    if (o.user !== undefined && (o.user.uid !== own.uid || o.user.gid !== own.gid)) {
      throw invalid('user', `the template's own user ${own.uid}:${own.gid} (a template's forks all run as the user it was made with: give user to Sandbox.template)`, execOptions.user);
    }
    const argv = typeof command === 'string' && !/[^\w\s./=,:@%+-]/.test(command) && command.trim() !== '' ? command.trim().split(/\s+/) : resolveCommand('command', command);
    const fileMap: [string, Buffer][] = [];
    if (files !== undefined) {
      if (typeof files !== 'object' || files === null) throw invalid('files', 'an object of path -> string | Uint8Array', files);
      for (const [p, d] of Object.entries(files)) {
        checkInsidePath(`files[${JSON.stringify(p)}]`, p);
        if (typeof d !== 'string' && !(d instanceof Uint8Array)) throw invalid(`files[${JSON.stringify(p)}]`, 'a string or Uint8Array', d);
        fileMap.push([p, Buffer.from(d)]);
      }
    }
    const p = this.runFork(argv, o, fileMap);
    this.live.add(p);
    try {
      return await p;
    } finally {
      this.live.delete(p);
    }
  }

  private async runFork(argv: string[], o: ReturnType<typeof resolveExecOptions>, files: [string, Buffer][]): Promise<ExecResult> {
    // HUTCH_TRACE=1: where the run went ('take' = waiting for a prepared fork, then run.ts's marks).
    const tr = new Trace('template-run');
    const { ready, early, waited } = await this.queue.forRun();
    tr.mark(!ready ? 'take-none' : waited ? 'take-waited' : early ? 'take-early' : 'take');
    const z = ready ? null : await this.ensureZygote();
    // Runs back to back: the next fork is prepared while this one's task runs, from just after
    // its request (a prepared fork's wake-up is then not behind the refill's host-side steps).
    let refilled = false;
    const afterRequest = early
      ? (): void => {
          refilled = true;
          this.queue.refill();
        }
      : undefined;
    try {
      return await runTask(this.runHost, { argv, o, files, ready, z, afterRequest }, tr);
    } finally {
      this.queue.ran(refilled);
    }
  }

  /** Background work close() waits for. */
  private track(p: Promise<unknown>): void {
    this.live.add(p);
    void p.then(() => this.live.delete(p), () => this.live.delete(p));
  }

  /**
   * A fresh sandbox forked from the template, whose PID 1 is hutch's init: a Sandbox like any
   * other (exec, spawn, files, stats, commit, destroy, events) that skipped the clone and
   * image setup of a cold create. Its execs start new processes (the zygote's warm interpreter
   * serves run(), not a fork's execs). The caller destroys it.
   *
   * @throws HutchError `EDESTROYED` (closed), `ESETUP` (the fork's setup failed).
   */
  async fork(): Promise<Sandbox> {
    if (this.closed) throw new HutchError('EDESTROYED', 'the template is closed; create a new one');
    // One prepared for fork() (`size`): init runs in it already. Else a prepared fork becomes
    // the Sandbox's init (its setup is done already); the refill makes forks for fork() now.
    const sb = this.queue.takeSandbox();
    const ready = sb ? undefined : this.queue.take('init');
    try {
      if (sb) return sb;
      if (ready) return await forkSandbox(this.site, ready.zygote, ready);
      return await forkSandbox(this.site, await this.ensureZygote());
    } finally {
      // The next one once this one is handed over (as run: it does not compete with it).
      this.queue.refillSoon();
    }
  }

  /** Kills every running fork, the zygote and the template sandbox; frees everything. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const k of this.kills) k();
    await this.queue.close();
    await Promise.allSettled([...this.live]);
    await this.sandbox.destroy();
  }

  /** `await using` support: {@link ZygoteTemplate.close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

templateHooks.create = (options) => ZygoteTemplate.create(options);

/**
 * Templates (docs/templates.md): a sandbox whose zygote has imported its preload and forks
 * once per task. Each fork makes itself a fresh sandbox before any task code runs
 * (addon/zygote/helper.c): new pid, mount, net, ipc, uts and cgroup namespaces, a fresh
 * writable layer over the template's root, a cgroup this host made for it with the template's
 * limits, capabilities dropped, no_new_privs and the template's seccomp program.
 *
 * The host side here: the template sandbox and its zygote (restarted when it ends; started in
 * zygote.ts), and per task: the fork's cgroup, its request socket, stdio, output capture,
 * timeout, and the teardown (cgroup.kill, rmdir). Forks prepared ahead and forks that become
 * sandboxes: fork.ts; the template addon and helper files: native.ts.
 */
import { randomBytes } from 'node:crypto';
import { close, readFileSync } from 'node:fs';
import { Sandbox, DEFAULT_DISK_BYTES, templateHooks, type SandboxTemplate } from '../sandbox.js';
import { HutchError, errnoName, invalid, type HutchErrorStep } from '../errors.js';
import { cgroupDriver, type SandboxCgroup } from '../cgroup/driver.js';
import { CAPABILITIES, capabilityMask } from '../capabilities.js';
import { compileSeccomp } from '../seccomp/index.js';
import { mergeExecLimits } from '../limits.js';
import { isFailure, native, type Watch } from '../native.js';
import { ImageStore } from '../image/store.js';
// The same /dev/shm size and /proc masks as a fresh sandbox's (lib/plan), applied again in each fork's new /proc.
import { DEFAULT_SHM_BYTES, MASKED, READONLY, resolveCached, sandboxEnv } from '../plan/index.js';
import {
  checkInsidePath, resolveCommand, resolveExecOptions, resolveSandboxOptions,
  type ResolvedSandboxOptions,
} from '../options.js';
import { signalName, type ExecResult, type ResourceUsage, type SandboxProcess } from '../process.js';
import { encodePlan } from './plan.js';
import type { TemplateOptions, TemplateRunOptions } from '../options.js';
import { Trace } from '../trace.js';
import { inBackground } from '../teardowns.js';
import { discardFork, feedStdin, forkSandbox, placeFork, prepareFork, sendPlan, type ForkSite, type Prepared } from './fork.js';
import { checkNodeZygoteBuild, fail, fdinfoPid, helperFiles, nodeZygoteFiles, tn } from './native.js';
import { startZygote, type Zygote } from './zygote.js';

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
 * Whether a zygote has ended. `dead` is set when init reports its end, which can come after a
 * run has already seen its socket close: the kernel is asked too (its pidfd no longer signals
 * once it is reaped; a zombie's state is Z).
 */
function zygoteGone(z: Zygote): boolean {
  if (z.dead) return true;
  let gone = !native().pidfdKill(z.pidfd, 0);
  if (!gone) {
    const pid = fdinfoPid(z.pidfd);
    try {
      gone = pid < 0 || readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] === 'Z';
    } catch {
      gone = true;
    }
  }
  if (gone) z.dead = true;
  return gone;
}

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
  /** Forks prepared ahead (`size`): set up, waiting for their task's request. */
  private readonly ready: Prepared[] = [];
  private filling = 0;
  /** How long preparing a fork takes until it is placed (a moving average, ms), and when the last run's result was back. */
  private prepareMs = 20;
  private lastResult = -Infinity;
  /** The refills in flight: a run with none ready waits for one (less than forking anew). */
  private readonly fills = new Set<Promise<unknown>>();
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
    if (opts.network.mode !== 'none') throw new HutchError('EUNSUPPORTED', "templates support network 'none' only so far: each fork gets its own empty network namespace with loopback");
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
      };
      await t.ensureZygote();
      t.refill();
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
      // Its prepared forks go with it (it was to report how their tasks end); new ones follow.
      const orphans = this.ready.filter((p) => p.zygote === z);
      if (orphans.length > 0) {
        this.ready.splice(0, this.ready.length, ...this.ready.filter((p) => p.zygote !== z));
        const gone = Promise.all(orphans.map((p) => discardFork(this.site, p)));
        this.live.add(gone);
        void gone.finally(() => this.live.delete(gone));
        this.refill();
      }
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
    const limits = mergeExecLimits(this.opts.limits, { timeoutMs: o.timeoutMs, output: o.output });
    let ready = this.takeReady();
    // Runs that come faster than a fork is prepared (none ready, or this one came sooner after
    // the last result than preparing takes) have the next prepared while this task runs; others
    // after the result (refillSoon below), so that making it does not take the CPU from the task.
    const early = !ready || performance.now() - this.lastResult < this.prepareMs;
    if (!ready) {
      // One due after the last run starts now; one on the way is nearer than a new fork (as
      // Sandbox.run waits for its blank).
      this.refill();
      if (this.fills.size > 0) {
        await Promise.race(this.fills);
        ready = this.takeReady();
      }
    }
    if (early) this.refill();
    const z = ready ? null : await this.ensureZygote();
    const n = native();
    const t = tn();
    const id = ready?.id ?? randomBytes(6).toString('hex');
    const started = Date.now();
    const tr = new Trace('template-run');
    if (!ready) await this.site.store.markInUse(this.site.imageId, id);
    tr.mark('record');
    let cgroup: SandboxCgroup | null = null;
    const fds: number[] = [];
    const watches: Watch[] = [];
    let c1pidfd = ready?.c1 ?? -1;
    // The task's mount namespace ('N', just before 'S').
    let mntns = -1;
    let removeKiller = (): unknown => undefined;
    try {
      cgroup = ready?.cgroup ?? cgroupDriver().create(id, this.opts.limits.cgroup);
      tr.mark('cgroup');
      const sp = ready ? [ready.ctl, -1] : t.socketPair();
      if (isFailure(sp)) throw fail('request', sp.errno, 'socketpair');
      fds.push(sp[0]!);
      if (!ready) fds.push(sp[1]!);
      const mk = (nb: boolean): [number, number] => {
        const pp = n.pipe(nb);
        if (isFailure(pp)) throw fail('fds', pp.errno, 'pipe');
        fds.push(pp[0], pp[1]);
        return pp;
      };
      const pin = mk(false);
      const pout = mk(true);
      const perr = mk(true);
      const pfiles = mk(false);
      const cwd = o.cwd ?? this.defaultCwd;
      const env = { ...this.baseEnv, ...o.env };
      const req = Buffer.from(JSON.stringify({ argv, env, cwd, files: files.map(([p, d]) => [p, d.length]) }));
      if (ready) {
        // A prepared fork: its request, the only hand-off left before the task runs.
        const sent = t.sendFds(ready.ctl, Buffer.concat([Buffer.from('R'), req]), [pin[0], pout[1], perr[1], pfiles[0]]);
        if (isFailure(sent)) throw new HutchError('ESETUP', `the prepared fork is gone: ${errnoName(sent.errno)}`, { step: 'request', errno: errnoName(sent.errno) });
      } else {
        const sent = n.send(z!.sock, req, [sp[1]!, pin[0], pout[1], perr[1], pfiles[0]]);
        if (isFailure(sent)) throw new HutchError('ESETUP', `cannot reach the zygote: ${errnoName(sent.errno)}${z!.dead ? `; ${z!.why}` : ''}`, { step: 'zygote', errno: errnoName(sent.errno) });
        sendPlan(this.site, sp[0]!, this.site.plan, []);
      }
      tr.mark('request');
      for (const fd of [...(ready ? [] : [sp[1]!]), pin[0], pout[1], perr[1], pfiles[0]]) {
        n.close(fd);
        fds.splice(fds.indexOf(fd), 1);
      }
      // stdin: what was given, then EOF.
      const stdinFd = pin[1];
      fds.splice(fds.indexOf(stdinFd), 1);
      void feedStdin(stdinFd, o.stdin);
      // The files, one after another on their own pipe (the zygote reads them by size).
      fds.splice(fds.indexOf(pfiles[1]), 1);
      void feedStdin(pfiles[1], files.length > 0 ? Buffer.concat(files.map(([, d]) => d)) : undefined);
      const cap = limits.outputBytes;
      const out: Buffer[] = [];
      const errb: Buffer[] = [];
      let total = 0;
      let truncated = false;
      let reason: ExecResult['reason'] | null = null;
      const cg = cgroup;
      const killAll = (why: ExecResult['reason']): void => {
        reason ??= why;
        cg.kill();
      };
      const killer = (): void => killAll('killed');
      this.kills.add(killer);
      removeKiller = () => this.kills.delete(killer);
      let openPipes = 2;
      let pipesDone!: () => void;
      const pipesClosed = new Promise<void>((r) => (pipesDone = r));
      const capture = (fd: number, into: Buffer[]): void => {
        const w = new n.Watch(fd, () => {
          for (;;) {
            const b = n.readSome(fd);
            if (b === undefined) return;
            if (b === null || isFailure(b)) {
              w.close();
              n.close(fd);
              fds.splice(fds.indexOf(fd), 1);
              if (--openPipes === 0) pipesDone();
              return;
            }
            if (cap !== null && total + b.length > cap) {
              into.push(b.subarray(0, Math.max(0, cap - total)));
              total = cap;
              truncated = true;
              killAll('output-limit');
            } else if (!truncated) {
              into.push(b);
              total += b.length;
            }
          }
        });
        watches.push(w);
      };
      capture(pout[0], out);
      capture(perr[0], errb);
      // The request socket: P (pidfd), E (a failed step), S (task started), X (wait status).
      const ctl = sp[0]!;
      let status: number | null = null;
      let maxrssKb = 0;
      let setupErr: HutchError | null = null;
      const ended = new Promise<void>((resolve) => {
        const w = new n.Watch(ctl, () => {
          for (;;) {
            const m = t.recvFds(ctl);
            if (m === undefined) return;
            if (m === null || isFailure(m)) {
              w.close();
              if (status === null && !setupErr && reason === null) setupErr = new HutchError('ESETUP', `the fork ended before it reported (the zygote died?${z?.dead ? ` ${z.why}` : ''})`, { step: 'zygote' });
              resolve();
              return;
            }
            const kind = String.fromCharCode(m.data[0] ?? 0);
            tr.mark(`got-${kind}`);
            if (kind === 'P' && (m.fds.length === 1 || m.fds.length === 2)) {
              if (m.fds.length === 2) c1pidfd = m.fds[0]!;
              try {
                placeFork(ctl, m.fds, cg, false);
              } catch (e) {
                setupErr = e as HutchError;
              }
              // A kill asked before the fork was in its cgroup (a timeout of a few ms, an abort,
              // close()) reached nothing then; it does now, before the task can run on.
              if (reason !== null) cg.kill();
            } else if (kind === 'N' && m.fds.length === 1 && mntns < 0) {
              // The task's mount namespace, sent by the fork before its privilege drop ends.
              // Held until after the result, the task's exit does not wait for its mounts to
              // be taken apart (umount_tree, an RCU grace period); closed off the event loop below.
              mntns = m.fds[0]!;
            } else {
              for (const fd of m.fds) n.close(fd);
              if (kind === 'E') setupErr = taskFailure(m.data.subarray(5).toString('utf8'), m.data.readInt32LE(1), argv, cwd);
              else if (kind === 'X') {
                // The task has ended: its status (and its ru_maxrss, KiB) is all that is left to hear.
                status = m.data.readInt32LE(1);
                if (m.data.length >= 13) maxrssKb = Number(m.data.readBigUInt64LE(5));
                w.close();
                resolve();
                return;
              }
            }
          }
        });
        watches.push(w);
      });
      let timer: NodeJS.Timeout | undefined;
      if (limits.timeoutMs !== null) timer = setTimeout(() => killAll('timeout'), limits.timeoutMs);
      const onAbort = (): void => killAll('killed');
      o.signal?.addEventListener('abort', onAbort, { once: true });
      await ended;
      tr.mark('ended');
      // The task (PID 1 of its namespace) is gone: whatever it left behind goes with the cgroup.
      cg.kill();
      await pipesClosed;
      tr.mark('pipes');
      if (timer) clearTimeout(timer);
      o.signal?.removeEventListener('abort', onAbort);
      // A fork this side killed (timeout, output cap, abort, close) ends with that reason,
      // even when it died before it could report.
      if (setupErr && reason === null) throw setupErr;
      const u = cg.usage();
      const st = status ?? 9;
      const sig = st & 0x7f;
      const exitCode = sig === 0 ? (st >> 8) & 0xff : null;
      const signal = sig === 0 ? null : signalName(sig);
      if (reason === null) reason = sig === 0 ? 'exit' : u.oomKills > 0 && sig === 9 ? 'oom' : 'signal';
      const usage: ResourceUsage = {
        wallMs: Date.now() - started,
        cpuUserMs: u.cpuUserMs ?? 0,
        cpuSystemMs: u.cpuSystemMs ?? 0,
        // memoryAccounting 'shared': no cgroup peak; the task's largest resident set instead.
        memoryPeakBytes: u.memoryPeakBytes ?? maxrssKb * 1024,
        pids: u.pids,
        oomKills: u.oomKills,
      };
      const so = Buffer.concat(out);
      const se = Buffer.concat(errb);
      return {
        exitCode,
        signal,
        reason,
        stdout: o.encoding ? so.toString(o.encoding) : so,
        stderr: o.encoding ? se.toString(o.encoding) : se,
        truncated,
        usage,
        violations: [],
        violationsDropped: 0,
      };
    } finally {
      removeKiller();
      for (const w of watches) w.close();
      for (const fd of fds) n.close(fd);
      if (c1pidfd >= 0) n.close(c1pidfd);
      if (ready) n.close(ready.task.pidfd);
      tr.end();
      this.lastResult = performance.now();
      if (!early) this.refillSoon();
      // As Sandbox.run: the result is back once every process of the fork is killed; its
      // cgroup and the store's record go just after (close() and Sandbox.settle() wait). Its
      // mount namespace goes first, closed on a pool thread (the last reference unmounts).
      const cg = cgroup;
      const ns = mntns;
      const teardown = (async () => {
        if (ns >= 0) await new Promise((r) => close(ns, r));
        await cg?.destroy();
        await this.site.store.release(id).catch(() => undefined);
      })();
      inBackground(teardown);
      this.live.add(teardown);
      void teardown.then(() => this.live.delete(teardown), () => this.live.delete(teardown));
    }
  }

  /** A prepared fork whose zygote lives (a dead one's forks have no one to report their end). */
  private takeReady(): Prepared | undefined {
    for (;;) {
      const p = this.ready.shift();
      if (!p) return p;
      if (!zygoteGone(p.zygote)) return p;
      void discardFork(this.site, p);
    }
  }

  /**
   * refill() once this turn's result is delivered: the caller's next step (often its next
   * run) goes first, and the next fork's host-side setup does not hold up this result.
   */
  private refillSoon(): void {
    setImmediate(() => this.refill());
  }

  /** Starts preparing forks until `size` are ready or on the way. */
  private refill(): void {
    while (!this.closed && this.ready.length + this.filling < this.size) {
      this.filling++;
      const t0 = performance.now();
      const fill: Promise<unknown> = this.ensureZygote().then((z) => prepareFork(this.site, z)).then(
        (p) => {
          this.filling--;
          this.prepareMs = 0.8 * this.prepareMs + 0.2 * (performance.now() - t0);
          if (this.closed) return discardFork(this.site, p);
          this.ready.push(p);
          return undefined;
        },
        () => {
          this.filling--; // the next run forks on demand and reports what fails
        },
      );
      this.live.add(fill);
      this.fills.add(fill);
      void fill.finally(() => {
        this.live.delete(fill);
        this.fills.delete(fill);
      });
    }
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
    // A prepared fork (`size`) becomes the Sandbox's init: its setup is done already.
    const ready = this.takeReady();
    try {
      if (ready) return await forkSandbox(this.site, ready.zygote, ready);
      return await forkSandbox(this.site, await this.ensureZygote());
    } finally {
      // The next one once this one is handed over (as run: it does not compete with it).
      this.refillSoon();
    }
  }

  /** Kills every running fork, the zygote and the template sandbox; frees everything. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const k of this.kills) k();
    await Promise.all(this.ready.splice(0).map((p) => discardFork(this.site, p)));
    await Promise.allSettled([...this.live]);
    await this.sandbox.destroy();
  }

  /** `await using` support: {@link ZygoteTemplate.close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** A fork's failed step: the task's own (its command, cwd, files) as Sandbox.exec says them. */
function taskFailure(step: string, errno: number, argv: string[], cwd: string): HutchError {
  const name = errnoName(errno) ?? String(errno);
  if (step === 'exec') {
    const why = name === 'ENOENT' ? ': not in the image or not on PATH' : name === 'EACCES' ? ': not executable' : name === 'ENOEXEC' ? ': not a program this kernel runs' : '';
    return new HutchError('ESETUP', `cannot run ${JSON.stringify(argv[0])} (${name})${why}`, { step: 'exec', errno: name, path: argv[0] });
  }
  if (step === 'cwd') return new HutchError('ESETUP', `the working directory ${JSON.stringify(cwd)} cannot be entered (${name}); create it first or pick another`, { step: 'cwd', errno: name, path: cwd });
  if (step === 'files') return new HutchError('ESETUP', `the files could not be written in the fork (${name}): a path under a read-only or missing place?`, { step: 'files' as HutchErrorStep, errno: name });
  return fail(step, errno, 'in the fork');
}

templateHooks.create = (options) => ZygoteTemplate.create(options);

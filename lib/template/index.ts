/**
 * Templates (docs/templates.md): a sandbox whose zygote has imported its preload and forks
 * once per task. Each fork makes itself a fresh sandbox before any task code runs
 * (addon/zygote/helper.c): new pid, mount, net, ipc, uts and cgroup namespaces, a fresh
 * writable layer over the template's root, a cgroup this host made for it with the template's
 * limits, capabilities dropped, no_new_privs and the template's seccomp program.
 *
 * The host side here: the template sandbox and its zygote (started, checked, restarted), and
 * per task: the fork's cgroup, its request socket, stdio, the plan, output capture, timeout,
 * and the teardown (cgroup.kill, rmdir).
 */
import { randomBytes } from 'node:crypto';
import { closeSync, constants as fsc, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sandbox, DEFAULT_DISK_BYTES, templateHooks, type SandboxTemplate } from '../sandbox.js';
import { HutchError, errnoName, invalid, type HutchErrorStep } from '../errors.js';
import { cgroupDriver, type SandboxCgroup } from '../cgroup/driver.js';
import { CAPABILITIES, capabilityMask } from '../capabilities.js';
import { compileSeccomp } from '../seccomp/index.js';
import { mergeExecLimits } from '../limits.js';
import { isFailure, native, type NativeFailure, type Watch } from '../native.js';
import { ImageStore } from '../image/store.js';
// The same /dev/shm size and /proc masks as a fresh sandbox's (lib/plan), applied again in each fork's new /proc.
import { DEFAULT_SHM_BYTES, MASKED, READONLY, resolveCached, sandboxEnv } from '../plan/index.js';
import {
  checkInsidePath, resolveCommand, resolveExecOptions, resolveSandboxOptions,
  type ExecOptions, type ResolvedSandboxOptions, type SandboxOptions,
} from '../options.js';
import { signalName, type ExecResult, type ResourceUsage, type SandboxProcess } from '../process.js';
import { encodePlan } from './plan.js';
import type { TemplateOptions, TemplateRunOptions } from '../options.js';
import { Trace } from '../trace.js';
import { waitSetup } from '../spawn.js';

export type { TemplateOptions, TemplateRunOptions } from '../options.js';

const TEMPLATE_KEYS = ['zygote', 'preload', 'size', 'zygoteTimeoutMs'];
/** Where the zygote's own files are bound in the template (not carried into forks). */
const ZDIR = '/.hutch-zygote';

interface HostNative {
  socketPair(): [number, number] | NativeFailure;
  recvFds(fd: number): { data: Buffer; fds: number[] } | null | undefined | NativeFailure;
  sendFds(fd: number, data: Buffer, fds: number[]): number | NativeFailure;
  procFor(pidfd: number): number | NativeFailure;
  pidfdOpen(pid: number): number | NativeFailure;
  pidfdGetfd(pidfd: number, fd: number): number | NativeFailure;
}

function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'binding.gyp'))) return dir;
    dir = dirname(dir);
  }
  throw new HutchError('EUNSUPPORTED', 'cannot find the hutch package root (binding.gyp) for the template helpers; reinstall hutch');
}

let hostNative: HostNative | undefined;
function tn(): HostNative {
  if (hostNative) return hostNative;
  const p = join(packageRoot(), 'build', 'Release', 'hutch_template.node');
  if (!existsSync(p)) throw new HutchError('EUNSUPPORTED', `templates need ${p}, which is not built; run npx node-gyp rebuild in the hutch package`);
  hostNative = createRequire(import.meta.url)(p) as HostNative;
  return hostNative;
}

function helperFiles(): { lib: string; python: string } {
  const root = packageRoot();
  const lib = join(root, 'build', 'Release', 'libhutch-zygote.so');
  if (!existsSync(lib)) throw new HutchError('EUNSUPPORTED', `templates need ${lib}, which is not built; run npx node-gyp rebuild in the hutch package`);
  return { lib, python: join(root, 'addon', 'zygote', 'zygote.py') };
}

function fail(step: string, errno: number, what: string): HutchError {
  return new HutchError('ESETUP', `template fork failed at ${step}: ${errnoName(errno) ?? errno} (${what})`, { step: step as HutchErrorStep, errno: errnoName(errno) ?? String(errno) });
}

/** The host pid of a process given its pid in the template's pid namespace (NSpid). */
function hostPidOf(initHostPid: number, innerPid: number): number | null {
  const seen = new Set<number>();
  const walk = (pid: number, depth: number): number | null => {
    if (depth > 4 || seen.has(pid)) return null;
    seen.add(pid);
    let kids: string;
    try {
      kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8');
    } catch {
      return null;
    }
    for (const k of kids.split(' ').filter(Boolean).map(Number)) {
      try {
        const ns = /NSpid:\s*([\d\s]+)/.exec(readFileSync(`/proc/${k}/status`, 'utf8'));
        const last = ns ? Number(ns[1]!.trim().split(/\s+/).pop()) : NaN;
        if (last === innerPid) return k;
      } catch {}
      const r = walk(k, depth + 1);
      if (r !== null) return r;
    }
    return null;
  };
  return walk(initHostPid, 0);
}

function fdinfoPid(fd: number): number {
  const m = /^Pid:\s*(-?\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return m ? Number(m[1]) : -1;
}

/** A fork prepared ahead: namespaces, cgroup, mounts done; waits for its task's request. */
interface Prepared {
  id: string;
  cgroup: SandboxCgroup;
  ctl: number;
  c1: number;
}

/** A running zygote: its process in the template, and the host's end of its socket. */
interface Zygote {
  proc: SandboxProcess;
  sock: number;
  pidfd: number;
  dead: boolean;
  why: string;
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
  private plan!: Buffer;
  private size = 0;
  /** Forks prepared ahead (`size`): set up, waiting for their task's request. */
  private readonly ready: Prepared[] = [];
  private filling = 0;
  private initPlan!: Buffer;
  private resolved!: Awaited<ReturnType<typeof resolveCached>>;
  private baseEnv!: Record<string, string>;
  private defaultCwd = '/';
  private zygoteArgv!: string[];
  private zygoteEnv!: Record<string, string>;
  private store!: ImageStore;
  private imageId!: string;
  private helperLib!: string;
  private layers!: { dir: string; lowerdirs: string[]; userns: number | null };

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
    if (zygote === 'node') throw new HutchError('EUNSUPPORTED', "zygote 'node' is not built yet; use 'python' or a command that serves the zygote protocol (docs/templates.md)");
    if (!Array.isArray(preload) || !preload.every((p) => typeof p === 'string' && p !== '' && !p.includes('\0'))) throw invalid('preload', 'an array of module names or file paths', preload);
    if (!Number.isInteger(size) || size < 0 || size > 64) throw invalid('size', 'an integer from 0 to 64 (forks kept ready)', size);
    if (!Number.isInteger(zygoteTimeoutMs) || zygoteTimeoutMs <= 0) throw invalid('zygoteTimeoutMs', 'a positive number of milliseconds', zygoteTimeoutMs);
    void TEMPLATE_KEYS;
    const opts = resolveSandboxOptions(rest);
    if (opts.network.mode !== 'none') throw new HutchError('EUNSUPPORTED', "templates support network 'none' only so far: each fork gets its own empty network namespace with loopback");
    if (opts.persistent) throw invalid('persistent', 'false for a template (each fork has its own ephemeral writable layer)', true);
    const t = new ZygoteTemplate(opts, zygoteTimeoutMs);
    t.size = size;
    const files = helperFiles();
    t.store = opts.store ?? ImageStore.default();
    const image = await resolveCached(t.store, opts.image);
    t.imageId = image.image.id;
    t.zygoteEnv = { HUTCH_ZYGOTE_LIB: `${ZDIR}/libhutch-zygote.so`, HUTCH_ZYGOTE_PRELOAD: JSON.stringify(preload) };
    t.zygoteArgv = zygote === 'python' ? ['python3', `${ZDIR}/zygote.py`, ...preload] : zygote;
    // The template sandbox: the zygote needs the capabilities and syscalls of the fork-time
    // steps (unshare, mount, pivot_root); no task code ever runs in it. Each fork drops to
    // the template's own capabilities and seccomp before its task starts.
    t.sandbox = await Sandbox.create({
      ...rest,
      capabilities: [...CAPABILITIES],
      seccomp: 'unconfined',
      mounts: [
        ...(rest.mounts ?? []),
        { source: files.lib, target: `${ZDIR}/libhutch-zygote.so`, readonly: true },
        { source: files.python, target: `${ZDIR}/zygote.py`, readonly: true },
      ],
    });
    t.helperLib = files.lib;
    t.layers = { dir: image.layersDir, lowerdirs: image.lowerdirs, userns: t.sandbox.ids.layersUserns };
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
        skip: [`${ZDIR}/libhutch-zygote.so`, `${ZDIR}/zygote.py`, ...(opts.mounts.length === 0 ? [] : [])],
        readonlyRoot: opts.readonlyRootfs,
      };
      t.plan = encodePlan(planOpts);
      t.initPlan = encodePlan({ ...planOpts, asInit: true });
      t.resolved = image;
      await t.ensureZygote();
      t.refill();
    } catch (e) {
      await t.sandbox.destroy().catch(() => undefined);
      throw e;
    }
    return t;
  }

  /** Starts the zygote and waits for its ready line; HutchError when it does not speak the protocol. */
  private async startZygote(): Promise<Zygote> {
    const sb = this.sandbox;
    if (sb.state === 'destroyed') throw new HutchError('EDESTROYED', 'the template sandbox is gone (its init ended); create a new template');
    // The zygote sees the environment its tasks will (PYTHONPATH for the preload...), plus its own.
    const proc = sb.spawn(this.zygoteArgv, { env: { ...this.baseEnv, ...this.zygoteEnv } });
    let out = '';
    let err = '';
    proc.stderr.on('data', (d: Buffer) => {
      if (err.length < 4096) err += d.toString('utf8');
    });
    const line = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        proc.kill('SIGKILL');
        reject(new HutchError('ESETUP', `the zygote ${JSON.stringify(this.zygoteArgv)} did not say it was ready within ${this.timeoutMs} ms (expected the line "hutch-zygote 1 <fd>" on its stdout; docs/templates.md)`, { step: 'zygote' }));
      }, this.timeoutMs);
      const onData = (d: Buffer): void => {
        out += d.toString('utf8');
        const nl = out.indexOf('\n');
        if (nl >= 0 || out.length > 256) {
          clearTimeout(timer);
          proc.stdout.off('data', onData);
          resolve(nl >= 0 ? out.slice(0, nl) : out);
        }
      };
      proc.stdout.on('data', onData);
      proc.result.then(
        (r) => {
          clearTimeout(timer);
          reject(new HutchError('ESETUP', `the zygote ${JSON.stringify(this.zygoteArgv)} ended before it was ready (${r.reason} ${r.exitCode ?? r.signal}): ${err.trim().slice(-1000) || 'no stderr'}`, { step: 'zygote' }));
        },
        (e: unknown) => {
          clearTimeout(timer);
          reject(e);
        },
      );
    });
    const m = /^hutch-zygote 1 (\d+)$/.exec(line);
    if (!m) {
      proc.kill('SIGKILL');
      throw new HutchError('ESETUP', `the zygote ${JSON.stringify(this.zygoteArgv)} does not speak the zygote protocol: its first line was ${JSON.stringify(line.slice(0, 100))}, expected "hutch-zygote 1 <fd>" (docs/templates.md)`, { step: 'zygote' });
    }
    proc.stdout.resume();
    const host = hostPidOf(sb.pid, proc.pid);
    const pidfd = host === null ? { errno: 3 } : tn().pidfdOpen(host);
    if (isFailure(pidfd)) {
      proc.kill('SIGKILL');
      throw new HutchError('ESETUP', 'cannot find the zygote process from the host', { step: 'zygote', errno: errnoName(pidfd.errno) });
    }
    const sock = tn().pidfdGetfd(pidfd, Number(m[1]));
    if (isFailure(sock)) {
      closeSync(pidfd);
      proc.kill('SIGKILL');
      throw new HutchError('ESETUP', `cannot take the zygote's socket (fd ${m[1]}): ${errnoName(sock.errno)}`, { step: 'zygote', errno: errnoName(sock.errno) });
    }
    const z: Zygote = { proc, sock, pidfd, dead: false, why: '' };
    const hello = native().send(sock, Buffer.from('{"op":"hello"}'));
    if (isFailure(hello)) throw new HutchError('ESETUP', `the zygote's socket: ${errnoName(hello.errno)}`, { step: 'zygote' });
    proc.result.then(
      (r) => {
        z.dead = true;
        z.why = `the zygote ended (${r.reason} ${r.exitCode ?? r.signal})${err ? `: ${err.trim().slice(-500)}` : ''}`;
        if (this.zygote === z) this.zygote = null;
        closeSync(sock);
        closeSync(pidfd);
      },
      () => undefined,
    );
    return z;
  }

  private ensureZygote(): Promise<Zygote> {
    if (this.zygote && !this.zygote.dead) return Promise.resolve(this.zygote);
    this.starting ??= this.startZygote().then(
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
    const ready = this.ready.shift();
    if (ready) this.refill();
    const z = ready ? null : await this.ensureZygote();
    const n = native();
    const t = tn();
    const id = ready?.id ?? randomBytes(6).toString('hex');
    const started = Date.now();
    const tr = new Trace('template-run');
    if (!ready) await this.store.markInUse(this.imageId, id);
    tr.mark('record');
    let cgroup: SandboxCgroup | null = null;
    const fds: number[] = [];
    const watches: Watch[] = [];
    let c1pidfd = ready?.c1 ?? -1;
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
        this.sendPlan(sp[0]!, this.plan, []);
      }
      tr.mark('request');
      for (const fd of [...(ready ? [] : [sp[1]!]), pin[0], pout[1], perr[1], pfiles[0]]) {
        n.close(fd);
        fds.splice(fds.indexOf(fd), 1);
      }
      // stdin: what was given, then EOF.
      const stdinFd = pin[1];
      fds.splice(fds.indexOf(stdinFd), 1);
      void this.feedStdin(stdinFd, o.stdin);
      // The files, one after another on their own pipe (the zygote reads them by size).
      fds.splice(fds.indexOf(pfiles[1]), 1);
      void this.feedStdin(pfiles[1], files.length > 0 ? Buffer.concat(files.map(([, d]) => d)) : undefined);
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
            if (kind === 'P' && m.fds.length === 2) {
              c1pidfd = m.fds[0]!;
              try {
                this.placeFork(ctl, m.fds, cg, false);
              } catch (e) {
                setupErr = e as HutchError;
              }
            } else {
              for (const fd of m.fds) n.close(fd);
              if (kind === 'E') setupErr = fail(m.data.subarray(5).toString('utf8'), m.data.readInt32LE(1), 'in the fork');
              else if (kind === 'X') status = m.data.readInt32LE(1);
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
      tr.end();
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
        memoryPeakBytes: u.memoryPeakBytes,
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
      await cgroup?.destroy();
      await this.store.release(id).catch(() => undefined);
    }
  }

  /** Starts preparing forks until `size` are ready or on the way. */
  private refill(): void {
    while (!this.closed && this.ready.length + this.filling < this.size) {
      this.filling++;
      const fill: Promise<unknown> = this.prepare().then(
        (p) => {
          this.filling--;
          if (this.closed) return this.discard(p);
          this.ready.push(p);
          return undefined;
        },
        () => {
          this.filling--; // the next run forks on demand and reports what fails
        },
      );
      this.live.add(fill);
      void fill.finally(() => this.live.delete(fill));
    }
  }

  /** A fork set up ahead of its task: namespaces, cgroup, mounts, proc; waiting for 'R'. */
  private async prepare(): Promise<Prepared> {
    const z = await this.ensureZygote();
    const n = native();
    const t = tn();
    const id = randomBytes(6).toString('hex');
    await this.store.markInUse(this.imageId, id);
    let cgroup: SandboxCgroup | null = null;
    let ctl = -1;
    let w: Watch | undefined;
    try {
      cgroup = cgroupDriver().create(id, this.opts.limits.cgroup);
      const cg = cgroup;
      const sp = t.socketPair();
      if (isFailure(sp)) throw fail('request', sp.errno, 'socketpair');
      ctl = sp[0];
      const sent = n.send(z.sock, Buffer.from('{"prepared":true}'), [sp[1]]);
      n.close(sp[1]);
      if (isFailure(sent)) throw new HutchError('ESETUP', `cannot reach the zygote: ${errnoName(sent.errno)}`, { step: 'zygote' });
      this.sendPlan(ctl, this.plan, []);
      const c1 = await new Promise<number>((resolve, reject) => {
        w = new n.Watch(ctl, () => {
          for (;;) {
            const m = t.recvFds(ctl);
            if (m === undefined) return;
            if (m === null || isFailure(m)) return reject(new HutchError('ESETUP', 'the prepared fork ended before it was ready', { step: 'zygote' }));
            const kind = String.fromCharCode(m.data[0] ?? 0);
            if (kind === 'P' && m.fds.length === 2) {
              try {
                this.placeFork(ctl, m.fds, cg, false);
              } catch (e) {
                n.close(m.fds[0]!);
                return reject(e);
              }
              return resolve(m.fds[0]!);
            }
            for (const fd of m.fds) n.close(fd);
            if (kind === 'E') return reject(fail(m.data.subarray(5).toString('utf8'), m.data.readInt32LE(1), 'in the fork'));
          }
        });
      });
      return { id, cgroup, ctl, c1 };
    } catch (e) {
      if (ctl >= 0) n.close(ctl);
      await cgroup?.destroy().catch(() => undefined);
      await this.store.release(id).catch(() => undefined);
      throw e;
    } finally {
      w?.close();
    }
  }

  private async discard(p: Prepared): Promise<void> {
    const n = native();
    p.cgroup.kill();
    n.close(p.ctl);
    n.close(p.c1);
    await p.cgroup.destroy().catch(() => undefined);
    await this.store.release(p.id).catch(() => undefined);
  }

  /**
   * The plan and the image's layers (trees cloned for this fork alone, idmapped like the
   * template's), and `extra` fds after them, on the fork's own socket: the fork reads them first.
   */
  private sendPlan(sock: number, plan: Buffer, extra: number[]): void {
    const n = native();
    const trees: number[] = [];
    try {
      for (const hex of this.layers.lowerdirs) {
        const tree = n.openTree(join(this.layers.dir, hex), true, this.layers.userns ?? undefined);
        if (isFailure(tree)) throw fail('layers', tree.errno, hex);
        trees.push(tree.fd);
      }
      const s = tn().sendFds(sock, plan, [...trees, ...extra]);
      if (isFailure(s)) throw fail('plan', s.errno, 'send');
    } finally {
      for (const fd of trees) n.close(fd);
    }
  }

  /**
   * The fork's 'P' message (its two processes' pidfds): both into the fork's cgroup, then a
   * proc of the task's pid namespace sent back (helper.c says why). Returns the task's host
   * pid and keeps its pidfd when `keepTask`; throws HutchError (the cgroup killed).
   */
  private placeFork(ctl: number, fds: number[], cg: SandboxCgroup, keepTask: boolean): { pid: number; pidfd: number } {
    const n = native();
    const taskfd = fds[1]!;
    try {
      const pids = [fdinfoPid(fds[0]!), fdinfoPid(taskfd)];
      try {
        for (const dir of cg.dirs) for (const pid of pids) writeFileSync(join(dir, 'cgroup.procs'), String(pid));
      } catch (e) {
        throw new HutchError('ESETUP', `cannot move the fork into its cgroup: ${(e as Error).message}`, { step: 'cgroup', cause: e });
      }
      const proc = tn().procFor(taskfd);
      if (isFailure(proc)) throw fail('proc', proc.errno, 'host');
      const s = tn().sendFds(ctl, Buffer.from('M'), [proc]);
      n.close(proc);
      if (isFailure(s)) throw fail('proc', s.errno, 'send');
      return { pid: pids[1]!, pidfd: keepTask ? taskfd : -1 };
    } catch (e) {
      cg.kill();
      throw e;
    } finally {
      if (!keepTask) n.close(taskfd);
    }
  }

  private async feedStdin(fd: number, stdin: ReturnType<typeof resolveExecOptions>['stdin']): Promise<void> {
    const { createWriteStream } = await import('node:fs');
    const w = createWriteStream('', { fd, autoClose: true });
    w.on('error', () => undefined);
    if (stdin === undefined) return void w.end();
    if (typeof stdin === 'string' || stdin instanceof Uint8Array) return void w.end(stdin);
    (stdin as NodeJS.ReadableStream).pipe(w);
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
    const z = await this.ensureZygote();
    const n = native();
    const t = tn();
    const id = randomBytes(6).toString('hex');
    await this.store.markInUse(this.imageId, id);
    const fds: number[] = [];
    const keep = (r: [number, number] | NativeFailure, what: string): [number, number] => {
      if (isFailure(r)) throw fail('fds', r.errno, what);
      fds.push(r[0], r[1]);
      return r;
    };
    let cgroup: SandboxCgroup | null = null;
    let spawned: { pid: number; pidfd: number; ctlFd: number; errFd: number } | null = null;
    let c1 = -1;
    let w: Watch | undefined;
    try {
      cgroup = cgroupDriver().create(id, this.opts.limits.cgroup);
      const cg = cgroup;
      const req = keep(t.socketPair(), 'socketpair');
      const ctl = keep(t.socketPair(), 'socketpair');
      const ready = keep(n.pipe(true), 'pipe');
      const none = keep(n.pipe(false), 'pipe');
      const bin = openSync(join(dirname(this.helperLib), 'hutch-init'), fsc.O_RDONLY);
      fds.push(bin);
      const sent = n.send(z.sock, Buffer.from(JSON.stringify({ argv: ['hutch-init'], env: {}, cwd: '/', files: [] })), [req[1], ctl[1], ready[1], none[1], none[0]]);
      if (isFailure(sent)) throw new HutchError('ESETUP', `cannot reach the zygote: ${errnoName(sent.errno)}${z.dead ? `; ${z.why}` : ''}`, { step: 'zygote' });
      this.sendPlan(req[0], this.initPlan, [bin]);
      for (const fd of [req[1], ctl[1], ready[1], none[1], none[0], bin]) {
        n.close(fd);
        fds.splice(fds.indexOf(fd), 1);
      }
      const sock = req[0];
      const placed = await new Promise<{ pid: number; pidfd: number }>((resolve, reject) => {
        let got: { pid: number; pidfd: number } | null = null;
        w = new n.Watch(sock, () => {
          for (;;) {
            const m = t.recvFds(sock);
            if (m === undefined) return;
            if (m === null || isFailure(m)) return reject(new HutchError('ESETUP', `the fork ended before it was ready${z.dead ? ` (${z.why})` : ''}`, { step: 'zygote' }));
            const kind = String.fromCharCode(m.data[0] ?? 0);
            if (kind === 'P' && m.fds.length === 2) {
              c1 = m.fds[0]!;
              try {
                got = this.placeFork(sock, m.fds, cg, true);
              } catch (e) {
                return reject(e);
              }
            } else {
              for (const fd of m.fds) n.close(fd);
              if (kind === 'E') return reject(fail(m.data.subarray(5).toString('utf8'), m.data.readInt32LE(1), 'in the fork'));
              if (kind === 'S' && got) return resolve(got);
            }
          }
        });
      });
      spawned = { pid: placed.pid, pidfd: placed.pidfd, ctlFd: ctl[0], errFd: ready[0] };
      fds.splice(fds.indexOf(ctl[0]), 1);
      fds.splice(fds.indexOf(ready[0]), 1);
      const setup = await waitSetup(spawned);
      n.close(spawned.errFd);
      if (setup) throw fail('exec_init', setup.errno, 'init did not start');
      const sb = Sandbox.adopt(id, this.opts, this.store, this.resolved, spawned, cg, { ...this.sandbox.ids, release: () => undefined });
      return sb;
    } catch (e) {
      if (spawned) {
        n.pidfdKill(spawned.pidfd, 9);
        n.close(spawned.pidfd);
        n.close(spawned.ctlFd);
      }
      await cgroup?.destroy().catch(() => undefined);
      await this.store.release(id).catch(() => undefined);
      throw e;
    } finally {
      w?.close();
      for (const fd of fds) n.close(fd);
      if (c1 >= 0) n.close(c1);
    }
  }

  /** Kills every running fork, the zygote and the template sandbox; frees everything. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const k of this.kills) k();
    await Promise.all(this.ready.splice(0).map((p) => this.discard(p)));
    await Promise.allSettled([...this.live]);
    await this.sandbox.destroy();
  }

  /** `await using` support: {@link ZygoteTemplate.close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

templateHooks.create = (options) => ZygoteTemplate.create(options);

/**
 * The control socket to init (fd 3 inside): watching it and init's pidfd, starting
 * processes (exec/spawn), and what init reports back (starts, exits, OOM kills).
 */
import { HutchError, errnoName } from '../errors.js';
import { idSource } from '../host/ids.js';
import { isFailure, native } from '../native.js';
import { decode, encodeExec, encodeKill } from '../protocol.js';
import { mergeExecLimits } from '../limits.js';
import { checkInsidePath, resolveCommand, type ResolvedExecOptions } from '../options.js';
import { ProcessState, type ExecResult, type ProcessHost } from '../process.js';
import { imageUser } from '../plan/index.js';
import type { SandboxCore } from './core.js';
import { isReportingProgram } from '../seccomp/index.js';
import { recordSyscallViolation } from '../seccomp/violations.js';
import { destroySandbox } from './destroy.js';

/**
 * Past this many sandboxes with a pidfd open in this process, a new sandbox's pidfd is
 * "parked": closed, and opened again (pidfd_open of the pid) when it is needed — to kill init,
 * or when the control socket reports that init is gone (EOF: init holds the other end, and
 * everything else in the sandbox dies with it, pid 1 of its pid namespace). This is as safe as
 * keeping it: init is this process's child and nobody else waits for it (it has no exit
 * signal, and libuv waits only for the pids it spawned), so its pid cannot name another
 * process until this process reaps it, which it does only through the pidfd. It saves one fd
 * and one epoll registration per live sandbox: with 10,000 live (bench/live.ts) the fds, not
 * memory, are the limit (a session's RLIMIT_NOFILE is often 20,000 and cannot be raised
 * without CAP_SYS_RESOURCE). HUTCH_PIDFD_PARK_ABOVE sets the number (tests use 0).
 */
const parkAbove = (): number => Number(process.env.HUTCH_PIDFD_PARK_ABOVE ?? 256);
let watchedPidfds = 0;

/** Watches init's pidfd (or parks it) and the control socket. */
export function watch(core: SandboxCore): void {
  core.unparkPidfd = () => unparkPidfd(core);
  if (watchedPidfds >= parkAbove()) {
    native().close(core.spawned.pidfd);
    core.spawned.pidfd = -1;
  } else {
    watchPidfd(core);
  }
  watchControl(core);
}

function watchPidfd(core: SandboxCore): void {
  core.pidWatch = new (native().Watch)(core.spawned.pidfd, () => onInitExit(core));
  core.pidWatch.unref();
  watchedPidfds++;
}

/** Opens a parked pidfd again (and watches it); no-op when it is open or init is reaped. */
export function unparkPidfd(core: SandboxCore): void {
  if (core.spawned.pidfd >= 0 || core.initExit) return;
  const fd = native().pidfdOpen(core.pid);
  if (isFailure(fd)) {
    throw new HutchError('ECLEANUP', `sandbox ${core.id}: cannot open a pidfd of its init (pid ${core.pid}) to stop it: ${errnoName(fd.errno)}${errnoName(fd.errno) === 'EMFILE' || errnoName(fd.errno) === 'ENFILE' ? ' (too many open files: raise RLIMIT_NOFILE, or destroy other sandboxes first)' : ''}; retry the destroy`, { step: 'destroy', errno: errnoName(fd.errno) });
  }
  core.spawned.pidfd = fd;
  watchPidfd(core);
}

/** Messages from init: from the first exec on (which Sandbox.run may send during setup). */
export function watchControl(core: SandboxCore): void {
  if (core.ctlWatch) return;
  const n = native();
  const w = new n.Watch(core.spawned.ctlFd, () => onControl(core));
  if (core.procs.size === 0) w.unref();
  core.ctlWatch = w;
}

/** A create that failed after run's first exec was sent: that exec ends as killed. */
export function abandonEarly(core: SandboxCore): void {
  core.state = 'destroyed';
  core.ctlWatch?.close();
  core.ctlWatch = null;
  for (const p of core.procs.values()) p.onSandboxGone();
}

function onControl(core: SandboxCore): void {
  const n = native();
  for (;;) {
    const m = n.recv(core.spawned.ctlFd);
    if (m === undefined) return;
    if (m === null || isFailure(m)) {
      core.ctlWatch?.close();
      core.ctlWatch = null;
      // init is gone (or going): a parked pidfd is opened, its watch reaps init.
      unparkLater(core);
      return;
    }
    const msg = decode(m);
    const p = msg && core.procs.get(msg.id);
    // A refusal by a filter whose exec has ended (a process it left behind): the event only.
    if (msg?.type === 'violation' && !p) recordSyscallViolation(core.violationLog, msg, null);
    if (!msg || !p) {
      const fd = (m as Buffer & { fd?: number }).fd; // a pty master nobody waits for
      if (fd !== undefined) native().close(fd);
      if (!msg) continue;
    }
    p?.onMessage(msg);
    if (msg.type === 'exited') {
      core.rssPeak = Math.max(core.rssPeak, msg.maxrssKb * 1024);
      checkOom(core);
    }
  }
}

function checkOom(core: SandboxCore): void {
  if (!core.cgroup) return;
  let k = 0;
  try {
    k = core.cgroup.oomKills();
  } catch {
    return;
  }
  if (k > core.oomSeen) {
    core.oomSeen = k;
    Promise.resolve().then(() => core.stats()).then((u) => core.emit('oom', u), () => undefined);
  }
}

/** unparkPidfd from an event callback: on failure (out of fds), again a little later. */
function unparkLater(core: SandboxCore): void {
  try {
    unparkPidfd(core);
  } catch {
    setTimeout(() => unparkLater(core), 100).unref();
  }
}

function onInitExit(core: SandboxCore): void {
  const r = native().reap(core.spawned.pidfd);
  if (r === null) return;
  if (core.pidWatch) watchedPidfds--;
  core.pidWatch?.close();
  core.pidWatch = null;
  core.initExit = isFailure(r) ? { code: null, signal: null } : r;
  core.exitedResolve();
  for (const p of core.procs.values()) p.onSandboxGone();
  if (!core.destroying) {
    core.emit('exit', core.initExit);
    void destroySandbox(core);
  }
}

function processHost(core: SandboxCore): ProcessHost {
  return {
    sendExec: (id, message, fds) => {
      const r = native().send(core.spawned.ctlFd, message, fds);
      if (isFailure(r)) throw core.gone(r.errno);
    },
    sendKill: (id, signal) => {
      if (core.state === 'destroyed') return;
      native().send(core.spawned.ctlFd, encodeKill(id, signal, true));
    },
    cgroup: core.cgroup,
    clock: core.freezer.clock,
    violations: core.violationLog,
    forget: (id) => {
      core.procs.delete(id);
      if (core.procs.size === 0) core.ctlWatch?.unref();
    },
  };
}

/** exec and spawn: sends the exec request to init and tracks the process. */
export function startProcess(core: SandboxCore, command: unknown, o: ResolvedExecOptions, capture: boolean, oomBefore?: number): ProcessState {
  if (core.state === 'destroyed') throw core.gone();
  const argv = resolveCommand('command', command);
  const limits = mergeExecLimits(core.opts.limits, { timeoutMs: o.timeoutMs, output: o.output });
  const user = o.user ?? core.opts.user ?? imageUser(core.image) ?? { uid: 0, gid: 0 };
  const cwd = o.cwd ?? core.opts.cwd ?? (core.image.image.config.workingDir ? checkInsidePath('cwd', core.image.image.config.workingDir) : '/');
  let env = core.baseEnv;
  if (Object.keys(o.env).length > 0) {
    const m = new Map(env.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
    for (const [k, v] of Object.entries(o.env)) m.set(k, v);
    env = [...m].map(([k, v]) => `${k}=${v}`);
  }
  const id = core.nextId++;
  if (core.nextId > 0xfffffff0) core.nextId = 1;
  const p = new ProcessState(processHost(core), id, {
    capture,
    timeoutMs: limits.timeoutMs,
    outputBytes: capture ? limits.outputBytes : o.tty && o.output !== undefined ? limits.outputBytes : null,
    encoding: o.encoding,
    signal: o.signal,
    stdin: o.stdin,
    argv0: argv[0]!,
    tty: o.tty,
    ...(oomBefore === undefined ? {} : { oomBefore }),
  });
  if (o.tty && !env.some((kv) => kv.startsWith('TERM='))) env = [...env, 'TERM=xterm-256color'];
  core.procs.set(id, p);
  core.ctlWatch?.ref();
  try {
    p.start((pid) =>
      encodeExec({
        id: pid,
        uid: user.uid,
        gid: user.gid,
        caps: core.caps,
        noNewPrivs: true,
        keepGroups: idSource().denySetgroups,
        rlimits: core.opts.limits.rlimits,
        seccomp: core.seccomp,
        seccompNotify: isReportingProgram(core.seccomp),
        cwd,
        argv,
        env,
        tty: o.tty,
      }),
    );
  } catch (e) {
    core.procs.delete(id);
    if (core.procs.size === 0) core.ctlWatch?.unref();
    throw e;
  }
  return p;
}

/**
 * Sandbox.exec after option resolution: the peak memory counts from this exec. `first`: the
 * first exec of a sandbox whose cgroup was made for it, sent while it sets up (Sandbox.run):
 * nothing but its setup child and init has run in the cgroup, and an OOM kill of either ends
 * the setup and so the run, so the count before this process is 0 without reading it.
 */
export async function execResolved(core: SandboxCore, command: unknown, o: ResolvedExecOptions, first = false): Promise<ExecResult> {
  try {
    core.cgroup?.resetPeak();
  } catch {}
  return startProcess(core, command, o, true, first ? 0 : undefined).result;
}

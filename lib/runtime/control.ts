/**
 * The control socket to init (fd 3 inside): watching it and init's pidfd, starting
 * processes (exec/spawn), and what init reports back (starts, exits, OOM kills).
 */
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

/** Watches init's pidfd and the control socket. */
export function watch(core: SandboxCore): void {
  const n = native();
  core.pidWatch = new n.Watch(core.spawned.pidfd, () => onInitExit(core));
  core.pidWatch.unref();
  watchControl(core);
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
    if (msg.type === 'exited') checkOom(core);
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

function onInitExit(core: SandboxCore): void {
  const r = native().reap(core.spawned.pidfd);
  if (r === null) return;
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
export function startProcess(core: SandboxCore, command: unknown, o: ResolvedExecOptions, capture: boolean): ProcessState {
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

/** Sandbox.exec after option resolution: the peak memory counts from this exec. */
export async function execResolved(core: SandboxCore, command: unknown, o: ResolvedExecOptions): Promise<ExecResult> {
  try {
    core.cgroup?.resetPeak();
  } catch {}
  return startProcess(core, command, o, true).result;
}

/**
 * One task's run in a fork (template.run, docs/templates.md): the request (to a prepared fork,
 * or to the zygote for a fork on demand), the output capture, the fork's messages on its
 * request socket, the result and its usage, and the fork's teardown after the result.
 *
 * The request socket carries, from the fork: P (its pidfd: placed into its cgroup, then sent a
 * proc), L (its network namespace made: the host gives it its link, network 'bridge'), N (the
 * task's mount namespace, held by the host until after the result), E (a failed step), S (its
 * privilege drop done) and X (the task's wait status and ru_maxrss).
 */
import { randomBytes } from 'node:crypto';
import { close } from 'node:fs';
import { HutchError, errnoName, type HutchErrorStep } from '../errors.js';
import { cgroupDriver, type SandboxCgroup } from '../cgroup/driver.js';
import { mergeExecLimits } from '../limits.js';
import { isFailure, native, type Watch } from '../native.js';
import type { ResolvedExecOptions } from '../options.js';
import { signalName, type ExecResult, type ResourceUsage } from '../process.js';
import type { Trace } from '../trace.js';
import { inBackground } from '../teardowns.js';
import { feedStdin, forkDisk, forkNet, placeFork, sendPlan, type ForkSite, type Prepared } from './fork.js';
import { fail, fdinfoPid, tn } from './native.js';
import { zygoteGone, type Zygote } from './zygote.js';

/** What a run needs from its template. */
export interface RunHost {
  readonly site: ForkSite;
  /** The environment and working directory every task starts from (the image's, the template's). */
  readonly baseEnv: Record<string, string>;
  readonly defaultCwd: string;
  /** The kills of the runs in flight: close() calls each (they end with reason 'killed'). */
  readonly kills: Set<() => void>;
  /** Background work the template's close() waits for (each run's teardown). */
  track(p: Promise<unknown>): void;
  /** Resolves when a teardown may start (ForkQueue.quiet: no fork being prepared). */
  quiet(): Promise<unknown>;
}

/** One task, with its prepared fork (`ready`) or, without one, in a fork `z` makes on demand. */
export interface RunTask {
  argv: string[];
  o: ResolvedExecOptions;
  files: [string, Buffer][];
  ready: Prepared | undefined;
  z: Zygote | null;
  /** Called once the task's request is sent (what may wait until then: the queue's refill). */
  afterRequest?: () => void;
}

/** stdout and stderr, read as they come up to the output cap; `closed` once both reached EOF. */
interface Output {
  out: Buffer[];
  err: Buffer[];
  truncated: boolean;
  closed: Promise<void>;
}

/**
 * Reads `outFd` and `errFd` (non-blocking) into buffers; crossing `cap` keeps what fits and
 * calls `onCap`. Each fd is closed at its EOF and taken out of `fds` (the run's fds to close).
 */
function captureOutput(outFd: number, errFd: number, cap: number | null, fds: number[], watches: Watch[], onCap: () => void): Output {
  const n = native();
  let total = 0;
  let openPipes = 2;
  let pipesDone!: () => void;
  const o: Output = { out: [], err: [], truncated: false, closed: new Promise<void>((r) => (pipesDone = r)) };
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
          o.truncated = true;
          onCap();
        } else if (!o.truncated) {
          into.push(b);
          total += b.length;
        }
      }
    });
    watches.push(w);
  };
  capture(outFd, o.out);
  capture(errFd, o.err);
  return o;
}

/** Runs one task in a fork and resolves with its result; the fork's teardown goes on after it, tracked. */
export async function runTask(host: RunHost, task: RunTask, tr: Trace): Promise<ExecResult> {
  const { site } = host;
  const { argv, o, files, ready, z } = task;
  const limits = mergeExecLimits(site.opts.limits, { timeoutMs: o.timeoutMs, output: o.output });
  const n = native();
  const t = tn();
  const id = ready?.id ?? randomBytes(6).toString('hex');
  const started = Date.now();
  if (!ready) await site.store.markInUse(site.imageId, id);
  tr.mark('record');
  let cgroup: SandboxCgroup | null = null;
  const fds: number[] = [];
  const watches: Watch[] = [];
  let c1pidfd = ready?.c1 ?? -1;
  // The task's mount namespace ('N', just before 'S').
  let mntns = -1;
  let removeKiller = (): unknown => undefined;
  // The fork's placement (placeFork: its cgroup, its proc), which sends on its socket: settled before that closes.
  let placing: Promise<void> | null = null;
  // Its link (network 'bridge'): a prepared fork's is made already; released with the fork.
  const net = ready ? ready.net : forkNet(site, id);
  const refusals = net?.log.begin();
  // Its writable layer on disk (before 6.6): a prepared fork's is made already.
  let disk = ready ? ready.disk : null;
  try {
    if (!ready && site.upper.kind !== 'tmpfs') disk = await forkDisk(site, id);
    cgroup = ready?.cgroup ?? cgroupDriver().create(id, site.opts.limits.cgroup);
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
    const cwd = o.cwd ?? host.defaultCwd;
    const env = { ...host.baseEnv, ...o.env };
    const req = Buffer.from(JSON.stringify({ argv, env, cwd, files: files.map(([p, d]) => [p, d.length]) }));
    if (ready) {
      // A prepared fork: its request, the only hand-off left before the task runs.
      const sent = t.sendFds(ready.ctl, Buffer.concat([Buffer.from('R'), req]), [pin[0], pout[1], perr[1], pfiles[0]]);
      if (isFailure(sent)) throw new HutchError('ESETUP', `the prepared fork is gone: ${errnoName(sent.errno)}`, { step: 'request', errno: errnoName(sent.errno) });
    } else {
      const sent = n.send(z!.sock, req, [sp[1]!, pin[0], pout[1], perr[1], pfiles[0]]);
      if (isFailure(sent)) throw new HutchError('ESETUP', `cannot reach the zygote: ${errnoName(sent.errno)}${z!.dead ? `; ${z!.why}` : ''}`, { step: 'zygote', errno: errnoName(sent.errno) });
      sendPlan(site, sp[0]!, site.plan, disk, []);
    }
    tr.mark('request');
    task.afterRequest?.();
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
    let reason: ExecResult['reason'] | null = null;
    const cg = cgroup;
    const killAll = (why: ExecResult['reason']): void => {
      reason ??= why;
      cg.kill();
    };
    const killer = (): void => killAll('killed');
    host.kills.add(killer);
    removeKiller = () => host.kills.delete(killer);
    const output = captureOutput(pout[0], perr[0], limits.outputBytes, fds, watches, () => killAll('output-limit'));
    // The request socket: P (pidfd), N (mount namespace), E (a failed step), S (task started), X (wait status).
    const ctl = sp[0]!;
    let status: number | null = null;
    let maxrssKb = 0;
    let taskPid = 0;
    let setupErr: HutchError | null = null;
    const ended = new Promise<void>((resolve) => {
      const w = new n.Watch(ctl, () => {
        for (;;) {
          const m = t.recvFds(ctl);
          if (m === undefined) return;
          if (m === null || isFailure(m)) {
            w.close();
            net?.abandon(new HutchError('ESETUP', 'the fork ended before its network', { step: 'network' }));
            const end = (): void => {
              if (status === null && !setupErr && reason === null) setupErr = new HutchError('ESETUP', `the fork ended before it reported (the zygote died?${from?.dead ? ` ${from.why}` : ''})`, { step: 'zygote' });
              resolve();
            };
            // The zygote's copy of this socket closes only after it sent X, or when it dies:
            // after P (its fork made), no X means it is dying, most likely. Its exit closes its
            // fds one by one, so its own socket (what zygoteGone reads) may close a moment
            // after this one: the result waits until the kernel says it is gone (200 ms at
            // most), so that a run that follows never takes a fork it left, whose end nobody
            // would report. One that is not gone by then is left alone.
            const from = ready?.zygote ?? z;
            if (from && !from.dead && status === null && (ready || placing)) void zygoteGoneWithin(from, 200).then(end, end);
            else end();
            return;
          }
          const kind = String.fromCharCode(m.data[0] ?? 0);
          tr.mark(`got-${kind}`);
          if (kind === 'P' && (m.fds.length === 1 || m.fds.length === 2)) {
            if (m.fds.length === 2) c1pidfd = m.fds[0]!;
            taskPid = fdinfoPid(m.fds[m.fds.length - 1]!);
            placing = placeFork(ctl, m.fds, cg, false, net).then(
              () => {
                // A kill asked before the fork was in its cgroup (a timeout of a few ms, an abort,
                // close()) reached nothing then; it does now, before the task can run on.
                if (reason !== null) cg.kill();
              },
              (e: unknown) => {
                setupErr = e as HutchError;
              },
            );
          } else if (kind === 'N' && m.fds.length === 1 && mntns < 0) {
            // The task's mount namespace, sent by the fork before its privilege drop ends.
            // Held until after the result, the task's exit does not wait for its mounts to
            // be taken apart (umount_tree, an RCU grace period); closed off the event loop below.
            mntns = m.fds[0]!;
          } else {
            for (const fd of m.fds) n.close(fd);
            if (kind === 'L' && net && taskPid > 0) net.link(taskPid);
            else if (kind === 'E') setupErr = taskFailure(m.data.subarray(5).toString('utf8'), m.data.readInt32LE(1), argv, cwd);
            else if (kind === 'X') {
              // The task has ended: its status (and its ru_maxrss, KiB) is all that is left to hear.
              net?.abandon(new HutchError('ESETUP', 'the fork ended before its network', { step: 'network' }));
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
    await output.closed;
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
    const so = Buffer.concat(output.out);
    const se = Buffer.concat(output.err);
    return {
      exitCode,
      signal,
      reason,
      stdout: o.encoding ? so.toString(o.encoding) : so,
      stderr: o.encoding ? se.toString(o.encoding) : se,
      truncated: output.truncated,
      usage,
      // Its egress check's refusals (network with domains/deny/ask); seccomp's are not reported for runs.
      ...(net ? net.log.end(refusals) : { violations: [], violationsDropped: 0 }),
    };
  } finally {
    await placing;
    removeKiller();
    for (const w of watches) w.close();
    for (const fd of fds) n.close(fd);
    if (c1pidfd >= 0) n.close(c1pidfd);
    if (ready) n.close(ready.task.pidfd);
    tr.end();
    // As Sandbox.run: the result is back once every process of the fork is killed; its
    // cgroup and the store's record go just after (close() and Sandbox.settle() wait). Its
    // mount namespace goes first, closed on a pool thread (the last reference unmounts).
    const cg = cgroup;
    const ns = mntns;
    const teardown = (async () => {
      await host.quiet();
      if (ns >= 0) await new Promise((r) => close(ns, r));
      await net?.release();
      await cg?.destroy();
      await disk?.release();
      await site.store.release(id).catch(() => undefined);
    })();
    inBackground(teardown);
    host.track(teardown);
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

/** Whether the zygote is gone within `ms` (zygoteGone polled every 2 ms; it marks it dead). */
async function zygoteGoneWithin(z: Zygote, ms: number): Promise<boolean> {
  const until = performance.now() + ms;
  while (!zygoteGone(z)) {
    if (performance.now() > until) return false;
    await new Promise((r) => setTimeout(r, 2));
  }
  return true;
}

/**
 * A template's forks, host side: a fork prepared ahead of its task, a fork that becomes a
 * Sandbox (its PID 1 hutch's init), and what every fork needs from the host: the plan and the
 * image's layers on its socket, its two processes moved into its cgroup, its stdin fed.
 */
import { randomBytes } from 'node:crypto';
import { createWriteStream, constants as fsc, openSync, writeSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Sandbox } from '../sandbox.js';
import { HutchError, errnoName } from '../errors.js';
import { cgroupDriver, type SandboxCgroup } from '../cgroup/driver.js';
import { isFailure, native, type NativeFailure, type Watch } from '../native.js';
import type { ImageStore } from '../image/store.js';
import type { ResolvedImage } from '../image/types.js';
import type { SandboxIds } from '../idrange.js';
import type { ResolvedExecOptions, ResolvedSandboxOptions } from '../options.js';
import { waitSetup } from '../child-setup.js';
import { prepareUpper, type PersistentDisk } from '../disk.js';
import type { PlanUpper } from '../plan/index.js';
import { fail, fdinfoPid, tn } from './native.js';
import { Trace } from '../trace.js';
import type { Zygote } from './zygote.js';
import { ForkNet } from './net.js';

/** What a template's forks share: set once when the template is made. */
export interface ForkSite {
  readonly opts: ResolvedSandboxOptions;
  readonly store: ImageStore;
  readonly imageId: string;
  readonly resolved: ResolvedImage;
  /** The template sandbox's ids; a fork's sandbox shares them (it releases nothing of them). */
  readonly ids: SandboxIds;
  /** The image's layers, cloned for each fork and idmapped like the template's. */
  readonly layers: { dir: string; lowerdirs: string[]; userns: number | null };
  /** The fork plan of a task (lib/template/plan.ts), and of a fork whose PID 1 is init. */
  readonly plan: Buffer;
  readonly initPlan: Buffer;
  /** libhutch-zygote.so; hutch-init sits beside it. */
  readonly helperLib: string;
  /** Every fork's hostname (the template's). */
  readonly hostname: string;
  /** Where each fork's writable layer goes, as a created sandbox's (lib/plan writableLayer): a tmpfs the fork makes, or before 6.6 the store's disk. */
  readonly upper: PlanUpper;
}

/** A fork's writable layer on the store's disk (`site.upper`, before 6.6), or null: the fork makes a tmpfs. */
export async function forkDisk(site: ForkSite, id: string): Promise<PersistentDisk | null> {
  return site.upper.kind === 'tmpfs' ? null : prepareUpper(site.upper, site.store.root, id, site.ids);
}

/** A fork's link (network 'bridge'), or null. */
export function forkNet(site: ForkSite, id: string): ForkNet | null {
  return ForkNet.of(site.opts.network, id, site.hostname, site.ids);
}

/** A fork prepared ahead: namespaces, cgroup, mounts done; waits for its task's request. */
export interface Prepared {
  id: string;
  cgroup: SandboxCgroup;
  ctl: number;
  c1: number;
  /** Its task process (host pid, pidfd): it becomes init when fork() takes it. */
  task: { pid: number; pidfd: number };
  /** The zygote that forked it: its parent, which reports how its task ends. */
  zygote: Zygote;
  /** Its link (network 'bridge'), made before it was ready. */
  net: ForkNet | null;
  /** Its writable layer on disk (before 6.6), or null (a tmpfs of its own). */
  disk: PersistentDisk | null;
}

/** A fork set up ahead of its task: namespaces, cgroup, mounts, proc; waiting for 'R'. */
export async function prepareFork(site: ForkSite, z: Zygote): Promise<Prepared> {
  const n = native();
  const t = tn();
  const id = randomBytes(6).toString('hex');
  // HUTCH_TRACE=1: where preparing a fork went (request and plan sent, the store's record, its cgroup, placed).
  const tr = new Trace('template-prepare');
  let cgroup: SandboxCgroup | null = null;
  let marked = false;
  let ctl = -1;
  let w: Watch | undefined;
  const net = forkNet(site, id);
  let disk: PersistentDisk | null = null;
  // The fork's placement (placeFork), which sends on its socket: settled before that closes.
  let placing: Promise<unknown> | null = null;
  try {
    // The zygote forks, and the fork reads its plan and makes its mounts, while this side
    // writes the store's record and makes the cgroup (the record first: from then on a prune
    // knows whose cgroup it is). The fork needs its cgroup only at 'P' (placed before its proc
    // comes). The image's layers need no record of the fork's own: the template's sandbox
    // holds the image. A failure below closes the socket: the fork then ends.
    const sp = t.socketPair();
    if (isFailure(sp)) throw fail('request', sp.errno, 'socketpair');
    ctl = sp[0];
    const sent = n.send(z.sock, Buffer.from('{"prepared":true}'), [sp[1]]);
    n.close(sp[1]);
    if (isFailure(sent)) throw new HutchError('ESETUP', `cannot reach the zygote: ${errnoName(sent.errno)}`, { step: 'zygote' });
    const mark = async (): Promise<void> => {
      await site.store.markInUse(site.imageId, id);
      marked = true;
      tr.mark('record');
    };
    if (site.upper.kind !== 'tmpfs') {
      // Before 6.6 the plan carries the writable layer's directory, which is made under the
      // fork's record (a prune knows whose it is): the record, then the layer, then the plan.
      await mark();
      disk = await forkDisk(site, id);
    }
    sendPlan(site, ctl, site.plan, disk, []);
    tr.mark('request');
    if (!marked) await mark();
    cgroup = cgroupDriver().create(id, site.opts.limits.cgroup);
    tr.mark('cgroup');
    const cg = cgroup;
    const placed = await new Promise<{ c1: number; task: { pid: number; pidfd: number } }>((resolve, reject) => {
      let pid = 0;
      const end = (e: unknown): void => {
        net?.abandon(e);
        reject(e);
      };
      w = new n.Watch(ctl, () => {
        for (;;) {
          const m = t.recvFds(ctl);
          if (m === undefined) return;
          if (m === null || isFailure(m)) return end(new HutchError('ESETUP', 'the prepared fork ended before it was ready', { step: 'zygote' }));
          const kind = String.fromCharCode(m.data[0] ?? 0);
          if (kind === 'P' && (m.fds.length === 1 || m.fds.length === 2) && placing === null) {
            const c1 = m.fds.length === 2 ? m.fds[0]! : -1;
            pid = fdinfoPid(m.fds[m.fds.length - 1]!);
            // Read on after 'P' only for the fork's 'L' (its link, before placeFork's 'C').
            if (!net) w?.close();
            placing = placeFork(ctl, m.fds, cg, true, net).then(
              (task) => resolve({ c1, task }),
              (e: unknown) => {
                if (c1 >= 0) n.close(c1);
                end(e);
              },
            );
            if (!net) return;
            continue;
          }
          for (const fd of m.fds) n.close(fd);
          if (kind === 'L' && net && pid > 0) net.link(pid);
          else if (kind === 'E') return end(fail(m.data.subarray(5).toString('utf8'), m.data.readInt32LE(1), 'in the fork'));
        }
      });
    });
    tr.mark('placed');
    return { id, cgroup, ctl, c1: placed.c1, task: placed.task, zygote: z, net, disk };
  } catch (e) {
    await (placing as Promise<unknown> | null)?.catch(() => undefined);
    if (ctl >= 0) n.close(ctl);
    await net?.release().catch(() => undefined);
    await cgroup?.destroy().catch(() => undefined);
    await disk?.release().catch(() => undefined);
    if (marked) await site.store.release(id).catch(() => undefined);
    throw e;
  } finally {
    tr.end();
    w?.close();
  }
}

export async function discardFork(site: ForkSite, p: Prepared): Promise<void> {
  const n = native();
  p.cgroup.kill();
  n.close(p.ctl);
  if (p.c1 >= 0) n.close(p.c1);
  n.close(p.task.pidfd);
  await p.net?.release().catch(() => undefined);
  await p.cgroup.destroy().catch(() => undefined);
  await p.disk?.release().catch(() => undefined);
  await site.store.release(p.id).catch(() => undefined);
}

/**
 * The plan and the image's layers (trees cloned for this fork alone, idmapped like the
 * template's), its writable layer's directory when on disk, and `extra` fds after them, on
 * the fork's own socket: the fork reads them first.
 */
export function sendPlan(site: ForkSite, sock: number, plan: Buffer, disk: PersistentDisk | null, extra: number[]): void {
  const n = native();
  const trees: number[] = [];
  try {
    for (const hex of site.layers.lowerdirs) {
      const tree = n.openTree(join(site.layers.dir, hex), true, site.layers.userns ?? undefined);
      if (isFailure(tree)) throw fail('layers', tree.errno, hex);
      trees.push(tree.fd);
    }
    if (disk) {
      // Its writable layer's directory (upper/, work/), after the layers; owned by the fork's root ids already.
      const tree = n.openTree(disk.upperDir, false, undefined);
      if (isFailure(tree)) throw fail('scratch', tree.errno, disk.upperDir);
      trees.push(tree.fd);
    }
    const s = tn().sendFds(sock, plan, [...trees, ...extra]);
    if (isFailure(s)) throw fail('plan', s.errno, 'send');
  } finally {
    for (const fd of trees) n.close(fd);
  }
}

/**
 * The fork's 'P' message: the task's pidfd, after the intermediate process's when the zygote
 * forked one (hutch_zygote_enter); each into the fork's cgroup, then a proc of the task's pid
 * namespace sent back (helper.c says why). Resolves with the task's host pid and keeps its
 * pidfd when `keepTask` (else closes it; an intermediate's pidfd is the caller's); rejects
 * with a HutchError (the cgroup killed, the task's pidfd closed). The proc ('M') goes first,
 * then 'C' once the fork is in its cgroup (and, with `net`, has its link: the caller passes
 * the fork's 'L' to `net.link`): the fork makes its mounts and namespaces in between and
 * waits for 'C' before its cgroup namespace and any task code, so the caller keeps `ctl` open
 * until this settles.
 *
 * The cgroup.procs writes go to the thread pool, all at once, while this thread makes the
 * proc: a migration takes the kernel's cgroup_threadgroup_rwsem for writing, which waits for
 * an RCU grace period (about 1.5 ms each here, measured), and the event loop is not held up
 * by it: on a template running tasks back to back, the next fork's placement comes while the
 * current task's messages are due.
 */
export async function placeFork(ctl: number, fds: number[], cg: SandboxCgroup, keepTask: boolean, net: ForkNet | null): Promise<{ pid: number; pidfd: number }> {
  const n = native();
  const taskfd = fds[fds.length - 1]!;
  let proc = -1;
  let placed = false;
  try {
    const pids = fds.map(fdinfoPid);
    const moved = Promise.all(cg.joinDirs.flatMap((dir) => pids.map((pid) => writeFile(join(dir, 'cgroup.procs'), String(pid)))));
    moved.catch(() => undefined);
    const made = tn().procFor(taskfd);
    if (isFailure(made)) throw fail('proc', made.errno, 'host');
    proc = made;
    // Its proc at once: the fork's mounts, pivot_root and namespaces go on while it is moved
    // (the migration waits for an RCU grace period); it waits for 'C' before its cgroup
    // namespace, and any task code, comes.
    const s = tn().sendFds(ctl, Buffer.from('M'), [proc]);
    if (isFailure(s)) throw fail('proc', s.errno, 'send');
    try {
      await moved;
    } catch (e) {
      throw new HutchError('ESETUP', `cannot move the fork into its cgroup: ${(e as Error).message}`, { step: 'cgroup', errno: (e as NodeJS.ErrnoException).code, cause: e });
    }
    // Its link, made when it said 'L' (lib/template/net.ts): 'C' lets its task run.
    if (net) await net.linked;
    const c = tn().sendFds(ctl, Buffer.from('C'), []);
    if (isFailure(c)) throw fail('cgroup', c.errno, 'send');
    placed = true;
    return { pid: pids[pids.length - 1]!, pidfd: keepTask ? taskfd : -1 };
  } catch (e) {
    cg.kill();
    throw e;
  } finally {
    if (proc >= 0) n.close(proc);
    // The task's pidfd is the caller's only when placed and asked for.
    if (!keepTask || !placed) n.close(taskfd);
  }
}

/**
 * Writes `stdin` (or nothing) to `fd`, a fresh pipe's write end, then closes it. Nothing, or
 * bytes that fit in any pipe's buffer (one page: the least a pipe gets, under
 * pipe-user-pages-soft), are written at once and the fd closed here: no stream, no thread pool
 * round trip for its close (a run back to back has two such fds, its stdin and its files).
 */
export async function feedStdin(fd: number, stdin: ResolvedExecOptions['stdin']): Promise<void> {
  const now = stdin === undefined ? Buffer.alloc(0) : typeof stdin === 'string' ? Buffer.from(stdin) : stdin instanceof Uint8Array ? stdin : null;
  if (now !== null && now.length <= PIPE_MIN_BYTES) {
    try {
      if (now.length > 0) writeSync(fd, now);
    } catch {
      // the reader is gone (EPIPE): the task ended or never started; its result says why
    }
    native().close(fd);
    return;
  }
  const w = createWriteStream('', { fd, autoClose: true });
  w.on('error', () => undefined);
  if (now !== null) return void w.end(now);
  (stdin as NodeJS.ReadableStream).pipe(w);
}

/** The least a pipe's buffer holds (one page): a write of this much to an empty pipe never blocks. */
const PIPE_MIN_BYTES = 4096;

/**
 * A fresh sandbox forked from the template, whose PID 1 is hutch's init: a Sandbox like any
 * other (exec, spawn, files, stats, commit, destroy, events) that skipped the clone and
 * image setup of a cold create. Its execs start new processes (the zygote's warm interpreter
 * serves run(), not a fork's execs). The caller destroys it.
 *
 * @throws HutchError `ESETUP` (the fork's setup failed).
 */
export async function forkSandbox(site: ForkSite, z: Zygote, prepared?: Prepared): Promise<Sandbox> {
  const n = native();
  const t = tn();
  const id = prepared?.id ?? randomBytes(6).toString('hex');
  // HUTCH_TRACE=1: where a fork() went (its record, request sent, the fork's 'P' and placement, its 'S' = init exec'd next, init's setup, the Sandbox).
  const tr = new Trace(prepared ? 'template-fork prepared' : 'template-fork');
  if (!prepared) await site.store.markInUse(site.imageId, id);
  tr.mark('record');
  const fds: number[] = [];
  const keep = (r: [number, number] | NativeFailure, what: string): [number, number] => {
    if (isFailure(r)) throw fail('fds', r.errno, what);
    fds.push(r[0], r[1]);
    return r;
  };
  let cgroup: SandboxCgroup | null = null;
  let spawned: { pid: number; pidfd: number; ctlFd: number; errFd: number } | null = null;
  let c1 = prepared?.c1 ?? -1;
  let taskfd = prepared?.task.pidfd ?? -1;
  let w: Watch | undefined;
  // The fork's placement (placeFork), which sends on its socket: settled before that closes.
  let placing: Promise<void> | null = null;
  // Its link (network 'bridge'): a prepared fork's is made already; the Sandbox takes it over.
  const net = prepared ? prepared.net : forkNet(site, id);
  let disk = prepared ? prepared.disk : null;
  try {
    if (!prepared) disk = await forkDisk(site, id);
    cgroup = prepared?.cgroup ?? cgroupDriver().create(id, site.opts.limits.cgroup);
    tr.mark('cgroup');
    const cg = cgroup;
    const req: [number, number] = prepared ? [prepared.ctl, -1] : keep(t.socketPair(), 'socketpair');
    if (prepared) fds.push(prepared.ctl);
    const ctl = keep(t.socketPair(), 'socketpair');
    const ready = keep(n.pipe(true), 'pipe');
    const bin = openSync(join(dirname(site.helperLib), 'hutch-init'), fsc.O_RDONLY);
    fds.push(bin);
    let handed: number[];
    if (prepared) {
      // A fork prepared ahead: 'I' makes it init (its namespaces, cgroup and mounts are done).
      handed = [ctl[1], ready[1], bin];
      const sent = t.sendFds(prepared.ctl, Buffer.from('I'), handed);
      if (isFailure(sent)) throw new HutchError('ESETUP', `the prepared fork is gone: ${errnoName(sent.errno)}`, { step: 'request', errno: errnoName(sent.errno) });
    } else {
      const none = keep(n.pipe(false), 'pipe');
      handed = [req[1], ctl[1], ready[1], none[1], none[0], bin];
      const sent = n.send(z.sock, Buffer.from(JSON.stringify({ argv: ['hutch-init'], env: {}, cwd: '/', files: [] })), handed.slice(0, 5));
      if (isFailure(sent)) throw new HutchError('ESETUP', `cannot reach the zygote: ${errnoName(sent.errno)}${z.dead ? `; ${z.why}` : ''}`, { step: 'zygote' });
      sendPlan(site, req[0], site.initPlan, disk, [bin]);
    }
    for (const fd of handed) {
      n.close(fd);
      fds.splice(fds.indexOf(fd), 1);
    }
    tr.mark('request');
    const sock = req[0];
    const placed = await new Promise<{ pid: number; pidfd: number }>((resolve, reject) => {
      let got: { pid: number; pidfd: number } | null = prepared ? { ...prepared.task } : null;
      let pid = 0;
      const end = (e: unknown): void => {
        net?.abandon(e);
        reject(e);
      };
      w = new n.Watch(sock, () => {
        for (;;) {
          const m = t.recvFds(sock);
          if (m === undefined) return;
          if (m === null || isFailure(m)) return end(new HutchError('ESETUP', `the fork ended before it was ready${z.dead ? ` (${z.why})` : ''}`, { step: 'zygote' }));
          const kind = String.fromCharCode(m.data[0] ?? 0);
          if (kind === 'P' && (m.fds.length === 1 || m.fds.length === 2)) {
            tr.mark('got-P');
            if (m.fds.length === 2) c1 = m.fds[0]!;
            pid = fdinfoPid(m.fds[m.fds.length - 1]!);
            // The fork goes on (to 'S') only once placed, sent its proc and (with a network) linked.
            placing = placeFork(sock, m.fds, cg, true, net).then(
              (p) => {
                tr.mark('placed');
                got = p;
                taskfd = p.pidfd;
              },
              (e: unknown) => end(e),
            );
          } else {
            for (const fd of m.fds) n.close(fd);
            if (kind === 'L' && net && pid > 0) net.link(pid);
            else if (kind === 'E') return end(fail(m.data.subarray(5).toString('utf8'), m.data.readInt32LE(1), 'in the fork'));
            else if (kind === 'S' && got) return resolve(got);
          }
        }
      });
    });
    spawned = { pid: placed.pid, pidfd: placed.pidfd, ctlFd: ctl[0], errFd: ready[0] };
    taskfd = -1;
    fds.splice(fds.indexOf(ctl[0]), 1);
    fds.splice(fds.indexOf(ready[0]), 1);
    tr.mark('got-S');
    const setup = await waitSetup(spawned);
    n.close(spawned.errFd);
    tr.mark('init');
    if (setup) throw fail('exec_init', setup.errno, 'init did not start');
    const sb = Sandbox.adopt(id, site.opts, site.store, site.resolved, spawned, cg, { ...site.ids, release: () => undefined }, { link: net ?? undefined, disk });
    tr.mark('adopt');
    return sb;
  } catch (e) {
    await placing;
    if (spawned) {
      n.pidfdKill(spawned.pidfd, 9);
      n.close(spawned.pidfd);
      n.close(spawned.ctlFd);
    }
    if (taskfd >= 0) {
      n.pidfdKill(taskfd, 9);
      n.close(taskfd);
    }
    await net?.release().catch(() => undefined);
    await cgroup?.destroy().catch(() => undefined);
    await disk?.release().catch(() => undefined);
    await site.store.release(id).catch(() => undefined);
    throw e;
  } finally {
    tr.end();
    w?.close();
    for (const fd of fds) n.close(fd);
    if (c1 >= 0) n.close(c1);
  }
}

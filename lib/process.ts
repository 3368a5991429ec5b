/**
 * One process started in a sandbox: its stdio pipes, its ending (exit, signal, timeout, OOM,
 * output cap, kill) and its usage, in the one ExecResult shape (execa's lesson: every way a
 * command ends is a result; only hutch's own failures reject).
 */
import { Trace } from './trace.js';
import { openSync, writeSync } from 'node:fs';
import { Socket } from 'node:net';
import { Readable, Writable } from 'node:stream';
import { constants as osConstants } from 'node:os';
import { HutchError } from './errors.js';
import { isFailure, native, type Watch } from './native.js';
import { waitStatus, type InitMessage } from './protocol.js';
import { setupError } from './setup-errors.js';
import { checkTtySize } from './options.js';
import type { SandboxCgroup } from './cgroup/driver.js';
import type { PausableTimer, PauseClock } from './pause.js';
import type { Violation, ViolationCollector, ViolationLog } from './network/violations.js';
import { recordSyscallViolation } from './seccomp/violations.js';

export type { ResourceUsage, EndReason, ExecResult, SandboxProcess } from './process-types.js';
import type { ResourceUsage, EndReason, ExecResult, SandboxProcess } from './process-types.js';

/** What a process needs of its sandbox. */
export interface ProcessHost {
  sendExec(id: number, message: Buffer, fds: number[]): void;
  sendKill(id: number, signal: number): void;
  cgroup: SandboxCgroup | null;
  /** Counts exec timeouts; stopped while the sandbox is paused. */
  clock: PauseClock;
  /** The process ended: the sandbox stops tracking its id. */
  forget(id: number): void;
  /** Violations seen while a process runs (lib/network/violations.ts). */
  violations?: ViolationLog;
}

export function signalName(n: number): NodeJS.Signals | null {
  for (const [name, num] of Object.entries(osConstants.signals)) if (num === n) return name as NodeJS.Signals;
  return null;
}

let devNullFd = -1;
function devNull(): number {
  if (devNullFd < 0) devNullFd = openSync('/dev/null', 'r'); // close-on-exec, as Node opens files
  return devNullFd;
}

function pipeOrThrow(nonblockingRead = false): [number, number] {
  const p = native().pipe(nonblockingRead);
  if (isFailure(p)) throw setupError({ step: 'fds', errno: p.errno });
  return p;
}

export interface StartOptions {
  capture: boolean;
  timeoutMs: number | null;
  outputBytes: number | null;
  encoding?: BufferEncoding;
  signal?: AbortSignal;
  stdin?: string | Uint8Array | NodeJS.ReadableStream;
  argv0: string;
  /** A pty of this size: init makes it and sends its master with MSG_STARTED. */
  tty?: { columns: number; rows: number };
  /**
   * The cgroup's OOM-kill count before this process, when the caller knows it without a read:
   * 0 for the first exec of a new sandbox's cgroup (lib/runtime/create.ts).
   */
  oomBefore?: number;
}

/** A process in flight. Created by Sandbox.exec/spawn, settled by messages from init. */
export class ProcessState implements SandboxProcess {
  pid = 0;
  readonly stdin: Writable;
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly result: Promise<ExecResult>;

  private resolve!: (r: ExecResult) => void;
  private reject!: (e: unknown) => void;
  private readonly t0 = performance.now();
  private chunks: { out: Buffer[]; err: Buffer[] } = { out: [], err: [] };
  private captured = 0;
  private truncated = false;
  private forced: EndReason | null = null;
  private exited: Extract<InitMessage, { type: 'exited' }> | null = null;
  private openStreams = 2;
  private timer: PausableTimer | undefined;
  private oomBefore = 0;
  private settled = false;
  private onAbort = (): void => this.forceKill('killed', 9);
  private readonly tr: Trace;
  private readonly seen: ViolationCollector | undefined;
  /** Captured output pipes still open: watch → fd. */
  private readonly pipes = new Map<Watch, number>();
  /** Captured output pipes still open: watch → one read of it (false: nothing more now). */
  private readonly readers = new Map<Watch, () => boolean>();

  constructor(
    private readonly host: ProcessHost,
    readonly id: number,
    private readonly opts: StartOptions,
  ) {
    this.tr = new Trace('exec');
    this.seen = host.violations?.begin();
    this.result = new Promise<ExecResult>((res, rej) => {
      this.resolve = res;
      this.reject = rej;
    });
    // Until started, the streams are placeholders that start() replaces.
    this.stdin = undefined as unknown as Writable;
    this.stdout = undefined as unknown as Readable;
    this.stderr = undefined as unknown as Readable;
  }

  /** Makes the pipes, sends the request with the child's ends, keeps ours as streams. */
  start(message: (id: number) => Buffer): void {
    if (this.opts.tty) return this.startTty(message);
    const n = native();
    // An exec with no input reads /dev/null: one fd kept for all, no pipe and no stream.
    const noInput = this.opts.capture && this.opts.stdin === undefined;
    const pin: [number, number] = noInput ? [devNull(), -1] : pipeOrThrow();
    let pout: [number, number] | undefined, perr: [number, number] | undefined;
    // Captured output is read by the addon straight into buffers: no stream per pipe.
    const capture = this.opts.capture;
    try {
      pout = pipeOrThrow(capture);
      perr = pipeOrThrow(capture);
      this.host.sendExec(this.id, message(this.id), [pin[0], pout[1], perr[1]]);
    } catch (e) {
      for (const fd of [...(noInput ? [] : pin), ...(pout ?? []), ...(perr ?? [])]) n.close(fd);
      throw e;
    }
    if (!noInput) n.close(pin[0]);
    n.close(pout[1]);
    n.close(perr[1]);
    this.tr.mark('send');
    this.oomBefore = this.opts.oomBefore ?? this.host.cgroup?.oomKills() ?? 0;
    // No input: nothing to write, so no stream at all (the process reads /dev/null).
    const stdin: Writable | null = noInput ? null : new Socket({ fd: pin[1], readable: false, writable: true });
    stdin?.on('error', () => undefined); // EPIPE when the process does not read its input
    if (capture) {
      if (stdin) Object.assign(this, { stdin });
      this.readPipe(pout[0], 'out');
      this.readPipe(perr[0], 'err');
    } else {
      const stdout = new Socket({ fd: pout[0], readable: true, writable: false });
      const stderr = new Socket({ fd: perr[0], readable: true, writable: false });
      Object.assign(this, { stdin, stdout, stderr });
      for (const s of [stdout, stderr]) {
        s.on('error', () => undefined);
        s.once('close', () => {
          this.openStreams--;
          this.maybeSettle();
        });
      }
    }
    const src = this.opts.stdin;
    if (capture && stdin && src !== undefined) {
      if (typeof src === 'string' || src instanceof Uint8Array) stdin.end(src);
      else (src as NodeJS.ReadableStream).pipe(stdin);
    }
    if (this.opts.timeoutMs !== null) this.timer = this.host.clock.timer(this.opts.timeoutMs, () => this.forceKill('timeout', 9));
    this.tr.mark('streams');
    if (this.opts.signal) {
      if (this.opts.signal.aborted) this.onAbort();
      else this.opts.signal.addEventListener('abort', this.onAbort, { once: true });
    }
  }

  /** The pty's master (from MSG_STARTED), -1 before and once closed. */
  private ptyFd = -1;
  private ptyWatch: Watch | null = null;
  /** Input written before the master arrived, or while the pty's input queue was full. */
  private ptyQueue: { b: Buffer; cb: (e?: Error | null) => void }[] = [];
  private ptyRetry: NodeJS.Timeout | undefined;
  private ptySize: { columns: number; rows: number } | null = null;

  /**
   * A tty process: no fds sent; init makes the pty in the sandbox's devpts. stdout reads the
   * master through the addon (pushes stop while the reader is full: backpressure), stdin
   * writes to it, stderr is empty (the terminal carries both), and ending stdin types the
   * terminal's EOF (Ctrl-D).
   */
  private startTty(message: (id: number) => Buffer): void {
    this.host.sendExec(this.id, message(this.id), []);
    this.tr.mark('send');
    this.oomBefore = this.host.cgroup?.oomKills() ?? 0;
    this.openStreams = 1;
    const stdout = new Readable({ read: () => this.watchPty() });
    const stderr = new Readable({ read: () => undefined });
    stderr.push(null);
    const stdin = new Writable({
      write: (b: Buffer, _enc, cb) => this.writePty(b, cb),
      final: (cb) => this.writePty(Buffer.from([4]), cb),
    });
    stdin.on('error', () => undefined);
    Object.assign(this, { stdin, stdout, stderr });
    if (this.opts.timeoutMs !== null) this.timer = this.host.clock.timer(this.opts.timeoutMs, () => this.forceKill('timeout', 9));
    if (this.opts.signal) {
      if (this.opts.signal.aborted) this.onAbort();
      else this.opts.signal.addEventListener('abort', this.onAbort, { once: true });
    }
  }

  /** Reads the master while stdout wants data: one Watch, closed when push() says full. */
  private watchPty(): void {
    if (this.ptyFd < 0 || this.ptyWatch) return;
    const n = native();
    const fd = this.ptyFd;
    this.ptyWatch = new n.Watch(fd, () => {
      if (this.ptyFd !== fd) return;
      const b = n.readSome(fd, true);
      if (b === undefined) return;
      // EIO: every holder of the slave has closed it (the kernel's EOF for a pty).
      if (b === null || isFailure(b)) return this.endPty();
      const cap = this.opts.outputBytes;
      let chunk = b;
      if (cap !== null && this.captured + b.length > cap) {
        chunk = b.subarray(0, Math.max(0, cap - this.captured));
        this.captured = cap;
        this.outputCapped();
      } else this.captured += b.length;
      if (chunk.length > 0 && !this.stdout.push(chunk)) {
        this.ptyWatch?.close();
        this.ptyWatch = null;
      }
    });
  }

  private writePty(b: Buffer, cb: (e?: Error | null) => void): void {
    this.ptyQueue.push({ b, cb });
    this.flushPty();
  }

  /** Writes queued input; a full input queue (EAGAIN) is tried again shortly. Input after the
   * end is dropped, as for a pipe. */
  private flushPty(): void {
    if (this.ptyRetry) return;
    while (this.ptyQueue.length > 0) {
      const head = this.ptyQueue[0]!;
      if (this.ptyFd < 0) {
        if (!this.settled && !this.exited && this.pid === 0) return; // the master is on its way
        this.ptyQueue.shift();
        head.cb();
        continue;
      }
      let k = 0;
      try {
        k = writeSync(this.ptyFd, head.b);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EAGAIN') {
          this.ptyRetry = setTimeout(() => {
            this.ptyRetry = undefined;
            this.flushPty();
          }, 5);
          return;
        }
        k = head.b.length; // EIO: the terminal is gone; drop it
      }
      if (k < head.b.length) {
        head.b = head.b.subarray(k);
        continue;
      }
      this.ptyQueue.shift();
      head.cb();
    }
  }

  private endPty(): void {
    if (this.ptyFd < 0) return;
    this.ptyWatch?.close();
    this.ptyWatch = null;
    native().close(this.ptyFd);
    this.ptyFd = -1;
    clearTimeout(this.ptyRetry);
    this.ptyRetry = undefined;
    this.flushPty();
    if (!this.stdout.readableEnded) this.stdout.push(null);
    this.openStreams--;
    this.maybeSettle();
  }

  resize(columns: number, rows: number): void {
    if (!this.opts.tty) throw new HutchError('EINVAL', 'resize() needs a process spawned with tty: spawn(cmd, { tty: true })');
    const size = { columns: checkTtySize('columns', columns), rows: checkTtySize('rows', rows) };
    if (this.ptyFd < 0) {
      this.ptySize = size; // applied when the master arrives
      return;
    }
    native().ptyResize(this.ptyFd, size.columns, size.rows);
  }

  /** Captures one output pipe (non-blocking read end) until EOF, one read per readiness. */
  private readPipe(fd: number, key: 'out' | 'err'): void {
    const n = native();
    const read = (): boolean => {
      const b = n.readSome(fd);
      if (b === undefined) return false;
      if (b !== null && !isFailure(b)) {
        this.collect(key, b);
        return true;
      }
      this.closePipe(w, fd);
      this.openStreams--;
      this.maybeSettle();
      return false;
    };
    const w = new n.Watch(fd, () => void read());
    this.pipes.set(w, fd);
    this.readers.set(w, read);
  }

  /**
   * At the exit report: what the pipes hold now, their EOF included (the command wrote its
   * output before it exited), so that the result settles in this callback instead of a later
   * turn of the event loop, which a busy loop (a pool's refill beside the run) can make long.
   * A few reads per pipe: a process left behind that still writes is read by the watch.
   */
  private drainPipes(): void {
    for (const read of [...this.readers.values()]) for (let i = 0; i < 4 && read(); i++);
  }

  private closePipe(w: Watch, fd: number): void {
    this.readers.delete(w);
    if (!this.pipes.delete(w)) return;
    w.close();
    native().close(fd);
  }

  private collect(key: 'out' | 'err', b: Buffer): void {
    const cap = this.opts.outputBytes;
    if (cap !== null && this.captured + b.length > cap) {
      const room = cap - this.captured;
      if (room > 0) this.chunks[key].push(b.subarray(0, room));
      this.captured = cap;
      this.outputCapped();
      return;
    }
    this.captured += b.length;
    this.chunks[key].push(b);
  }

  /**
   * The output cap is reached: the exec ends for it. Its reason is 'output-limit' also when
   * the process had already exited and its last output is read after the exit report (what
   * it wrote into the pipe's buffer before exiting): the cap was reached either way, and a
   * caller (a build's RUN step) decides on the reason.
   */
  private outputCapped(): void {
    if (this.truncated) return;
    this.truncated = true;
    if (this.forced === null && !this.settled) this.forced = 'output-limit';
    this.forceKill('output-limit', 9);
  }

  /** Ends the whole process group of this exec, remembering why. */
  forceKill(reason: EndReason, signal: number): void {
    if (this.exited || this.settled) return;
    if (this.forced === null) this.forced = reason;
    this.host.sendKill(this.id, signal);
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    const n = osConstants.signals[signal];
    if (typeof n !== 'number') throw new HutchError('EINVAL', `invalid option signal: expected a signal name such as 'SIGTERM', got ${String(signal)}`);
    this.forceKill('killed', n);
  }

  /** A message from init about this process. */
  onMessage(m: InitMessage): void {
    if (m.type === 'started') {
      this.tr.mark('started');
      this.pid = m.pid;
      if (m.fd !== undefined) {
        if (!this.opts.tty || this.settled || this.ptyFd >= 0) native().close(m.fd);
        else {
          this.ptyFd = m.fd;
          if (this.ptySize) native().ptyResize(m.fd, this.ptySize.columns, this.ptySize.rows);
          this.watchPty();
          this.flushPty();
        }
      } else if (this.opts.tty) {
        this.fail(new HutchError('ESETUP', 'init started a tty process without sending its terminal; this is a bug in hutch', { step: 'exec' }));
      }
    } else if (m.type === 'failed') {
      const err = setupError({ step: m.step, errno: m.errno, path: m.step === 'exec' ? this.opts.argv0 : undefined });
      this.fail(err);
    } else if (m.type === 'exited') {
      this.tr.mark('exited');
      this.exited = m;
      this.drainPipes();
      this.maybeSettle();
    } else if (m.type === 'violation') {
      recordSyscallViolation(this.host.violations, m, this.seen ?? null);
    } else if (m.type === 'protocol-error') {
      this.fail(new HutchError('ESETUP', `init refused the exec request (code ${m.code}); this is a bug in hutch`, { step: 'exec' }));
    }
  }

  /** The sandbox went away under the process: it ends as killed. */
  onSandboxGone(): void {
    if (this.settled || this.exited) return;
    if (this.forced === null) this.forced = 'killed';
    this.exited = { type: 'exited', id: this.id, status: 9, utimeUs: 0, stimeUs: 0, maxrssKb: 0 };
    this.maybeSettle();
  }

  private cleanup(): void {
    this.timer?.clear();
    this.opts.signal?.removeEventListener('abort', this.onAbort);
    this.host.forget(this.id);
  }

  private fail(e: unknown): void {
    if (this.settled) return;
    this.settled = true;
    this.cleanup();
    this.stdout?.destroy();
    this.stderr?.destroy();
    this.stdin?.destroy();
    for (const [w, fd] of this.pipes) this.closePipe(w, fd);
    if (this.opts.tty) {
      this.ptyWatch?.close();
      this.ptyWatch = null;
      if (this.ptyFd >= 0) native().close(this.ptyFd);
      this.ptyFd = -1;
      clearTimeout(this.ptyRetry);
      for (const q of this.ptyQueue.splice(0)) q.cb();
    }
    this.reject(e);
  }

  private maybeSettle(): void {
    if (this.settled || !this.exited || this.openStreams > 0) return;
    this.settled = true;
    this.tr.mark('streams_closed');
    this.cleanup();
    // Nothing reads our end of the input pipe any more: close it, also when the caller never
    // ended it (a spawn whose stdin is left open would otherwise hold one fd per process).
    this.stdin?.destroy();
    const m = this.exited;
    const { code, signal } = waitStatus(m.status);
    const cg = this.host.cgroup;
    let usage: ReturnType<SandboxCgroup['usage']> | undefined;
    try {
      usage = cg?.usage();
    } catch {
      usage = undefined;
    }
    const oomKills = Math.max(0, (usage ? usage.oomKills : cg ? safe(() => cg.oomKills()) : 0) - this.oomBefore);
    let reason: EndReason = signal === null ? 'exit' : 'signal';
    if (this.forced) reason = this.forced;
    // OOM is read from the kernel's counter, never guessed from SIGKILL alone.
    if (signal === 9 && oomKills > 0 && this.forced !== 'timeout' && this.forced !== 'output-limit') reason = 'oom';
    const out = Buffer.concat(this.chunks.out);
    const err = Buffer.concat(this.chunks.err);
    const enc = this.opts.encoding;
    const r: ExecResult = {
      exitCode: code,
      signal: signal === null ? null : signalName(signal),
      reason,
      stdout: enc ? out.toString(enc) : out,
      stderr: enc ? err.toString(enc) : err,
      truncated: this.truncated,
      usage: {
        wallMs: performance.now() - this.t0,
        cpuUserMs: m.utimeUs / 1000,
        cpuSystemMs: m.stimeUs / 1000,
        memoryPeakBytes: usage?.memoryPeakBytes ?? m.maxrssKb * 1024,
        pids: usage?.pids ?? 0,
        oomKills,
      },
      ...this.host.violations?.end(this.seen) ?? { violations: [], violationsDropped: 0 },
    };
    if (usage?.ioReadBytes !== undefined) r.usage.ioReadBytes = usage.ioReadBytes;
    if (usage?.ioWriteBytes !== undefined) r.usage.ioWriteBytes = usage.ioWriteBytes;
    this.tr.mark('result');
    this.tr.end();
    this.resolve(r);
  }
}

function safe(f: () => number): number {
  try {
    return f();
  } catch {
    return 0;
  }
}

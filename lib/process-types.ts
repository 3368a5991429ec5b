/**
 * The public shapes of a process in a sandbox and its result (API.md "Processes"):
 * ResourceUsage, EndReason, ExecResult, SandboxProcess. lib/process.ts runs them.
 */
import type { Readable, Writable } from 'node:stream';
import type { Violation } from './network/violations.js';

/**
 * Resources used: by one command ({@link ExecResult.usage}) or by the whole sandbox
 * ({@link Sandbox.stats}). Times are milliseconds, sizes bytes. A figure the host cannot
 * measure (a cgroup controller missing) is 0, or absent for the optional ones.
 * docs/limits.md says what each figure means.
 *
 * @example
 * ```ts
 * const { usage } = await sb.exec('sha256sum /bin/busybox');
 * console.log(`${usage.wallMs} ms, ${usage.cpuUserMs + usage.cpuSystemMs} ms CPU, peak ${usage.memoryPeakBytes} B`);
 * if (usage.oomKills > 0) console.log('something was OOM-killed');
 * ```
 */
export interface ResourceUsage {
  /** Wall-clock time from the start request to the end, ms (0 from stats()). */
  wallMs: number;
  /** User CPU time of the process and the descendants it waited for (rusage), ms; per sandbox in stats(). */
  cpuUserMs: number;
  /** System CPU time, likewise, ms. */
  cpuSystemMs: number;
  /**
   * Peak memory while this exec ran (whole sandbox for stats()), bytes. With a memory cgroup
   * of the sandbox's own (`limits.memory`, or `memoryAccounting: 'sandbox'`): the cgroup's
   * peak (everything charged: processes, page cache, tmpfs, kernel memory). Without
   * (`'shared'`, the default with no memory limit): the largest resident set of one process
   * of the exec (`ru_maxrss`); for stats(), the largest so far of its execs and live
   * processes (init's included). docs/limits.md "Memory accounting".
   */
  memoryPeakBytes: number;
  /** Tasks in the sandbox's cgroup when the exec ended (stats(): now). */
  pids: number;
  /**
   * Bytes read from block devices by the whole sandbox since its creation (cgroup io.stat,
   * or v1 blkio with an io limit). Absent when the host does not account io for the sandbox;
   * reads served from the page cache and the tmpfs writable layer do not count.
   */
  ioReadBytes?: number;
  /** Bytes written to block devices by the whole sandbox since its creation; like {@link ioReadBytes}. */
  ioWriteBytes?: number;
  /** Bytes received by the sandbox's network interface. Reserved: not reported yet (always absent). */
  netRxBytes?: number;
  /** Bytes sent by the sandbox's network interface. Reserved: not reported yet (always absent). */
  netTxBytes?: number;
  /**
   * Processes of the sandbox killed by the OOM killer during this exec (stats(): since
   * creation). 0 without a memory cgroup of its own (`memoryAccounting: 'shared'`): a kill
   * by the host's OOM killer then ends the exec with reason `'signal'` (SIGKILL).
   */
  oomKills: number;
}

/**
 * How a command ended ({@link ExecResult.reason}):
 *
 * - `'exit'`: it exited by itself (any exit code, non-zero included);
 * - `'signal'`: a signal from inside the sandbox ended it;
 * - `'timeout'`: `timeoutMs` passed and hutch SIGKILLed it;
 * - `'oom'`: the OOM killer ended it (read from the cgroup's counter, not guessed from SIGKILL);
 * - `'output-limit'`: the captured output reached `output` and hutch SIGKILLed it;
 * - `'killed'`: {@link SandboxProcess.kill}, an aborted `signal`, or the sandbox was destroyed under it.
 *
 * @example
 * ```ts
 * const r = await sb.exec('yes', { output: '64k' });
 * const why: EndReason = r.reason; // 'output-limit'
 * ```
 */
export type EndReason = 'exit' | 'signal' | 'timeout' | 'oom' | 'output-limit' | 'killed';

/**
 * How a command ended, what it wrote and what it used. {@link Sandbox.exec} resolves with
 * one for every way a command can end, a non-zero exit, a timeout and an OOM kill included.
 *
 * @example
 * ```ts
 * const r = await sb.exec('exit 3');
 * console.log(r.exitCode, r.signal, r.reason); // 3 null 'exit'
 * const t = await sb.exec('sleep 10', { timeoutMs: 100 });
 * console.log(t.exitCode, t.signal, t.reason); // null 'SIGKILL' 'timeout'
 * ```
 */
export interface ExecResult {
  /** Exit status, 0 to 255; `null` when a signal ended the process. */
  exitCode: number | null;
  /** The signal that ended the process, e.g. `'SIGKILL'`; `null` when it exited. */
  signal: NodeJS.Signals | null;
  /** Why it ended; see {@link EndReason}. */
  reason: EndReason;
  /**
   * Captured standard output: a Buffer, or a string when `encoding` was given. Empty for a
   * spawned process (its output was streamed).
   */
  stdout: Buffer | string;
  /** Captured standard error, like {@link stdout}. */
  stderr: Buffer | string;
  /** True when the `output` cap was reached: stdout/stderr hold the prefix captured until then. */
  truncated: boolean;
  /** What the command used; memory and pids are of the sandbox's cgroup while it ran. */
  usage: ResourceUsage;
  /** What the sandbox tried and was refused while it ran, at most 100 (see {@link Violation}). */
  violations: Violation[];
  /** Violations beyond those 100, or not reported (rate bound). */
  violationsDropped: number;
}

/**
 * A process started by {@link Sandbox.spawn}, its stdio as Node streams.
 *
 * @example
 * ```ts
 * const p = sb.spawn(['sh', '-c', 'while read l; do echo "got $l"; done']);
 * p.stdout.on('data', (b) => process.stdout.write(b));
 * p.stdin.write('one\n');
 * p.stdin.end();
 * const r = await p.result; // r.reason === 'exit'
 * ```
 */
export interface SandboxProcess {
  /** The pid inside the sandbox (0 until started). */
  readonly pid: number;
  /** The process's standard input; end it to send EOF. Writes after the process exits are dropped. */
  readonly stdin: Writable;
  /** The process's standard output. Read it (or `resume()` it): an unread pipe blocks the writer. */
  readonly stdout: Readable;
  /** The process's standard error; like {@link stdout}. */
  readonly stderr: Readable;
  /**
   * Settles when the process has ended and its stdout and stderr have closed; `stdout` and
   * `stderr` of the result are empty (they were streamed). Rejects only with a `HutchError`
   * when the command could not start (`ESETUP`, e.g. `step: 'exec'`, `errno: 'ENOENT'`).
   */
  readonly result: Promise<ExecResult>;
  /**
   * Sends `signal` (default `'SIGTERM'`) to the process's whole process group; the result
   * then says reason `'killed'`. No effect once it has ended.
   *
   * @throws HutchError `EINVAL` for an unknown signal name.
   *
   * @example
   * ```ts
   * const p = sb.spawn('sleep 100');
   * p.kill('SIGKILL');
   * console.log((await p.result).reason); // 'killed'
   * ```
   */
  kill(signal?: NodeJS.Signals): void;
  /**
   * Sets the terminal's size (TIOCSWINSZ on the pty): the process's foreground process group
   * gets `SIGWINCH` from the kernel. Only for a process spawned with `tty`; no effect once it
   * has ended.
   *
   * @throws HutchError `EINVAL` without `tty`, or for a size outside 1 to 65535.
   *
   * @example
   * ```ts
   * const p = sb.spawn('sh', { tty: { columns: 80, rows: 24 } });
   * p.resize(120, 40); // `stty size` now says "40 120"
   * ```
   */
  resize(columns: number, rows: number): void;
}

/**
 * A pool of ready sandboxes: each is created ahead (namespaces, root, cgroup, init waiting)
 * and handed out once, so a caller's run pays only for the exec. Refills in the background.
 */
import { HutchError, invalid } from './errors.js';
import { plainObject } from './validators.js';
import { resolveExecOptions, resolveSandboxOptions, type ExecOptions, type ResolvedExecOptions, type ResolvedSandboxOptions, type SandboxOptions } from './options.js';
import type { ExecResult } from './process.js';

/**
 * Options of a {@link SandboxPool}: the options of every sandbox it makes
 * ({@link SandboxOptions} without `signal`: a pool lives until `close()`) and its size.
 *
 * @example
 * ```ts
 * const options: PoolOptions = { image: 'busybox', size: 8, idleMs: 60_000, limits: { memory: '128MiB', timeoutMs: 5_000 } };
 * const pool = Sandbox.pool(options);
 * ```
 */
export interface PoolOptions extends SandboxOptions {
  /** Sandboxes kept ready, an integer from 0 to 10000 (0: each acquire creates one). */
  size: number;
  /**
   * After this many ms without an `acquire()` or `run()`, the ready sandboxes are destroyed
   * (the pool refills on the next use). Greater than 0. Default: never; an idle pool keeps `size` ready.
   */
  idleMs?: number;
}

const POOL_KEYS = ['image', 'store', 'limits', 'network', 'mounts', 'env', 'cwd', 'user', 'hostname', 'readonlyRootfs',
  'persistent', 'seccomp', 'capabilities', 'size', 'idleMs'];

/** @internal What a pool hands out: a {@link Sandbox}, named here so the pool sits below sandbox.ts (no import cycle). */
export interface PoolMember {
  readonly state: 'running' | 'destroyed';
  destroy(): Promise<void>;
  execResolved(command: unknown, o: ResolvedExecOptions): Promise<ExecResult>;
}

/**
 * @internal The pool's work; {@link SandboxPool} (lib/sandbox.ts) is this with `Sandbox` as the
 * member and `Sandbox.createResolved` as the factory.
 */
export class PoolOf<S extends PoolMember> {
  private readonly opts: ResolvedSandboxOptions;
  private readonly size: number;
  private readonly idleMs: number | null;
  private readonly ready: S[] = [];
  private readonly make: (opts: ResolvedSandboxOptions) => Promise<S>;
  private filling = 0;
  /** `run()` calls in flight: while there are any, the refill keeps only `lowWater`. */
  private running = 0;
  /** Kept ready or being made while runs are in flight: half the size, at least 1. */
  private readonly lowWater: number;
  private idleFill = false;
  private closed = false;
  private idleTimer: NodeJS.Timeout | undefined;
  private lastError: unknown = null;
  private readonly inflight = new Set<Promise<unknown>>();
  /** What a background create or destroy failed with after its work was the pool's alone: close() reports it. */
  private readonly failed: unknown[] = [];

  /** Validates the options (`EINVAL`) and starts making `size` members with `make`. */
  constructor(options: PoolOptions, make: (opts: ResolvedSandboxOptions) => Promise<S>) {
    this.make = make;
    const o = plainObject('options', options, 'an object of PoolOptions with a size');
    const { size, idleMs, ...rest } = o;
    if (typeof size !== 'number' || !Number.isInteger(size) || size < 0 || size > 10000) throw invalid('size', 'an integer from 0 to 10000', size);
    if (idleMs !== undefined && (typeof idleMs !== 'number' || !(idleMs > 0) || idleMs > 2 ** 31 - 1)) {
      throw invalid('idleMs', 'a number of ms from 1 to 2147483647', idleMs);
    }
    if ('signal' in rest) throw invalid('signal', 'no signal: a pool lives until close()', rest.signal);
    this.opts = resolveSandboxOptions(rest, POOL_KEYS);
    this.size = size;
    this.lowWater = Math.min(size, Math.max(1, Math.ceil(size / 2)));
    this.idleMs = (idleMs as number | undefined) ?? null;
    this.fill();
  }

  private async create(): Promise<S> {
    return this.make(this.opts);
  }

  /**
   * Starts creates up to the size, or, while `run()` calls are in flight (`busy`), only up to
   * `lowWater`: a create's clone, setup child and host-side steps share the event loop and the
   * CPUs with the runs the caller is waiting for, so a burst of runs is served from what is
   * ready, and the rest of the refill waits for a moment with no run in flight (fillWhenIdle).
   * A burst that outlasts half the pool is refilled one for one, keeping half the pool ready
   * or on its way: enough creates in parallel to keep up with a loaded machine's runs, never
   * the whole refill at once (that burst of creates made the slowest runs slower).
   */
  private fill(busy = this.running > 0): void {
    const target = busy ? this.lowWater : this.size;
    while (!this.closed && this.ready.length + this.filling < target) {
      this.filling++;
      const p = this.create().then(
        (sb) => {
          this.filling--;
          if (this.closed) return sb.destroy();
          this.lastError = null;
          this.ready.push(sb);
          return undefined;
        },
        (e) => {
          this.filling--;
          this.lastError = e; // the next acquire creates directly and reports it
        },
      );
      this.track(p);
      if (this.lastError) break;
    }
  }

  /**
   * The refill to the full size, once no run is in flight: checked after the callbacks of this
   * turn of the event loop, so that a caller that starts its next run as the last one returns
   * (a loop of `await pool.run(...)`) counts as busy.
   */
  private fillWhenIdle(): void {
    if (this.idleFill) return;
    this.idleFill = true;
    setImmediate(() => {
      this.idleFill = false;
      if (this.running === 0) this.fill();
    });
  }

  /**
   * Keeps `p` (a create or destroy nobody awaits) until it settles. Its rejection is handled
   * here and kept for close(): left unhandled it would end the Node process
   * (`--unhandled-rejections=throw`, Node's default), and dropped it would be lost.
   */
  private track(p: Promise<unknown>): void {
    this.inflight.add(p);
    p.then(
      () => this.inflight.delete(p),
      (e: unknown) => {
        this.inflight.delete(p);
        this.failed.push(e);
      },
    );
  }

  private touch(): void {
    if (this.idleMs === null) return;
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      for (const sb of this.ready.splice(0)) this.track(sb.destroy());
    }, this.idleMs);
    this.idleTimer.unref();
  }

  /**
   * A fresh, never-used sandbox; the caller destroys it. Resolves at once when one is ready,
   * else creates one.
   *
   * @throws HutchError `EDESTROYED` after `close()`; otherwise as {@link Sandbox.create}.
   *
   * @example
   * ```ts
   * const sb = await pool.acquire();
   * try {
   *   await sb.writeFile('/tmp/in.txt', 'data');
   *   await sb.exec('wc -c /tmp/in.txt');
   * } finally {
   *   await sb.destroy();
   * }
   * ```
   */
  async acquire(): Promise<S> {
    return this.take(true);
  }

  /** A ready sandbox (or a new one); refills now, or leaves that to the caller. */
  private async take(refill: boolean): Promise<S> {
    if (this.closed) throw new HutchError('EDESTROYED', 'the pool is closed; create a new one');
    this.touch();
    for (let sb = this.ready.shift(); sb; sb = this.ready.shift()) {
      if (refill) this.fill();
      if (sb.state === 'running') return sb;
    }
    if (refill) this.fill();
    return this.create();
  }

  /**
   * Runs a command in a fresh sandbox and destroys it after (in the background: the result
   * does not wait for the teardown).
   *
   * @throws HutchError as {@link SandboxPool.acquire} and {@link Sandbox.exec}.
   *
   * @example
   * ```ts
   * const r = await pool.run('echo $((6 * 7))', { encoding: 'utf8', timeoutMs: 2_000 });
   * console.log(r.stdout); // '42\n'
   * ```
   */
  async run(command: string[] | string, options?: ExecOptions): Promise<ExecResult> {
    const o = resolveExecOptions(options, 'exec');
    // The refill starts once the command has ended: its clone and setup would otherwise share
    // the event loop (and, on 2 cores, the CPU) with the command the caller is waiting for.
    // Above the low water mark it waits until no run is in flight (fill, fillWhenIdle).
    this.running++;
    let sb: S;
    try {
      sb = await this.take(false);
    } catch (e) {
      this.running--;
      throw e;
    }
    try {
      return await sb.execResolved(command, o);
    } finally {
      this.running--;
      // Everything in the used sandbox is killed here (destroy's first, synchronous step).
      this.track(sb.destroy());
      // As if busy: a caller's next run usually starts right after this one returns.
      this.fill(true);
      this.fillWhenIdle();
    }
  }

  /**
   * Destroys every ready sandbox and stops refilling; waits for sandboxes being created
   * or destroyed by the pool. Sandboxes handed out by `acquire()` are the caller's and
   * stay. Later `acquire()` and `run()` reject with `EDESTROYED`.
   *
   * @throws HutchError the first error a destroy the pool ran in the background (a used
   * sandbox's, an idle one's) failed with, once every one has settled: such a failure is kept
   * for close(), never dropped and never an unhandled rejection.
   *
   * @example
   * ```ts
   * const pool = Sandbox.pool({ size: 2 });
   * try { await pool.run('true'); } finally { await pool.close(); }
   * ```
   */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.idleTimer);
    const all = this.ready.splice(0).map((sb) => sb.destroy());
    const settled = await Promise.allSettled([...all, ...this.inflight]);
    const errors = [...this.failed.splice(0), ...settled.flatMap((s) => (s.status === 'rejected' ? [s.reason] : []))];
    if (errors.length > 0) throw errors[0];
  }

  /**
   * Same as {@link SandboxPool.close}, for `await using`.
   *
   * @example
   * ```ts
   * await using pool = Sandbox.pool({ size: 2 });
   * ```
   */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * A template's forks prepared ahead (`size`, docs/templates.md "Forks prepared ahead"): the
 * queue of ready forks, their refill, and when a refill starts. A run or fork() takes one;
 * the next is prepared after the result (refillSoon) when runs come slowly, or while the task
 * runs when they come faster than a fork is prepared (a moving average, `prepareMs`).
 *
 * Two kinds, by what was last asked for: a fork waiting for a task's request (run(), and
 * fork() when nothing else is ready), or, once fork() has been called, a fork that has gone on
 * to exec hutch's init and is a Sandbox already (fork() hands it over as it is). A take of
 * one kind that finds only the other kind's forks discards one, so that the refill makes the
 * kind asked for: the queue follows what its template is used for.
 */
import type { Sandbox } from '../sandbox.js';
import { discardFork, forkSandbox, prepareFork, type ForkSite, type Prepared } from './fork.js';
import type { Zygote } from './zygote.js';

/** What a prepared fork's queue needs from its template. */
export interface QueueHost {
  readonly site: ForkSite;
  /** The running zygote (started again when it has ended). */
  zygote(): Promise<Zygote>;
  /** Whether the zygote has ended (its forks have no one to report their end). */
  gone(z: Zygote): boolean;
  /** Background work the template's close() waits for. */
  track(p: Promise<unknown>): void;
}

/** The longest a run's teardown waits for the forks being prepared (ForkQueue.quiet). */
const QUIET_MAX_MS = 1000;

export class ForkQueue {
  /** Forks prepared ahead: set up, waiting for their task's request. */
  private readonly ready: Prepared[] = [];
  /** Forks prepared for fork(): init runs in each, a Sandbox already. */
  private readonly sandboxes: Sandbox[] = [];
  /** What the refill makes: what was asked for last. */
  private kind: 'task' | 'init' = 'task';
  private filling = 0;
  /** How long preparing a fork takes until it is placed (a moving average, ms), and when the last run's result was back. */
  private prepareMs = 20;
  private lastResult = -Infinity;
  /** The refills in flight: a run with none ready waits for one (less than forking anew). */
  private readonly fills = new Set<Promise<unknown>>();
  private closed = false;

  constructor(
    private readonly host: QueueHost,
    private readonly size: number,
  ) {}

  /**
   * A prepared fork whose zygote lives (a dead one's forks have no one to report their end),
   * for a run (`want` 'task': a fork() prepared ahead is discarded when no other is ready, so
   * that the refill makes one for runs) or for fork() (`want` 'init': the refill makes forks
   * that exec init ahead from now on).
   */
  take(want: 'task' | 'init' = 'task'): Prepared | undefined {
    this.kind = want;
    for (;;) {
      const p = this.ready.shift();
      if (!p) break;
      if (!this.host.gone(p.zygote)) return p;
      this.host.track(discardFork(this.host.site, p)); // close() waits for it, as for every other discard
    }
    if (want === 'task') {
      const sb = this.sandboxes.shift();
      if (sb) this.host.track(sb.destroy());
    }
    return undefined;
  }

  /** A Sandbox prepared for fork() whose init still runs (it is handed over as it is), or undefined. */
  takeSandbox(): Sandbox | undefined {
    this.kind = 'init';
    for (;;) {
      const sb = this.sandboxes.shift();
      if (!sb || sb.state === 'running') return sb;
      this.host.track(sb.destroy());
    }
  }

  /**
   * A prepared fork for a run, if one is ready or on the way (none: the run forks on demand).
   * `early`: runs that come faster than a fork is prepared (none ready, or this one came sooner
   * after the last result than preparing takes) have the next prepared while this task runs
   * (the caller calls {@link ForkQueue.refill} once its request is sent: the refill's host-side
   * steps do not delay it); others after the result ({@link ForkQueue.ran}), so that making it
   * does not take the CPU from the task.
   */
  async forRun(): Promise<{ ready: Prepared | undefined; early: boolean; waited: boolean }> {
    let ready = this.take();
    const early = !ready || performance.now() - this.lastResult < this.prepareMs;
    const waited = !ready;
    if (!ready) {
      // One due after the last run starts now; one on the way is nearer than a new fork (as
      // Sandbox.run waits for its blank).
      this.refill();
      if (this.fills.size > 0) {
        await Promise.race(this.fills);
        ready = this.take();
      }
    }
    return { ready, early, waited };
  }

  /** A run's result is back: the next fork is prepared now unless it was already (`early`: its refill started). */
  ran(early: boolean): void {
    this.lastResult = performance.now();
    if (!early) this.refillSoon();
  }

  /**
   * refill() once this turn's result is delivered: the caller's next step (often its next
   * run) goes first, and the next fork's host-side setup does not hold up this result.
   */
  refillSoon(): void {
    setImmediate(() => this.refill());
  }

  /** Starts preparing forks (of the kind last asked for) until `size` are ready or on the way. */
  refill(): void {
    while (!this.closed && this.ready.length + this.sandboxes.length + this.filling < this.size) {
      this.filling++;
      const t0 = performance.now();
      const site = this.host.site;
      const prepared = this.host.zygote().then((z) => prepareFork(site, z));
      const fill: Promise<unknown> = (this.kind === 'init' ? prepared.then((p) => forkSandbox(site, p.zygote, p)) : prepared).then(
        (p) => {
          this.filling--;
          if (!('ctl' in p)) {
            // init ahead: its Sandbox is all fork() needs.
            if (this.closed) return p.destroy();
            this.sandboxes.push(p);
            return undefined;
          }
          this.prepareMs = 0.8 * this.prepareMs + 0.2 * (performance.now() - t0);
          if (this.closed) return discardFork(site, p);
          this.ready.push(p);
          return undefined;
        },
        () => {
          this.filling--; // the next run forks on demand and reports what fails
        },
      );
      this.host.track(fill);
      this.fills.add(fill);
      void fill.finally(() => this.fills.delete(fill));
    }
  }

  /**
   * Resolves once the forks being prepared now are placed (at once when none is): a run's
   * teardown waits for that, so that the unmount of its mount tree and its cgroup's and
   * record's removal do not take the thread pool and the CPUs from the next fork's
   * preparation (its cgroup placement, its mounts), which a run back to back waits for.
   * Forks asked for later do not hold it up, and a preparation that hangs (a zygote stopped)
   * holds it up for QUIET_MAX_MS at most.
   */
  quiet(): Promise<unknown> {
    if (this.fills.size === 0) return Promise.resolve();
    let timer: NodeJS.Timeout | undefined;
    const most = new Promise((r) => (timer = setTimeout(r, QUIET_MAX_MS)));
    return Promise.race([Promise.allSettled([...this.fills]), most]).finally(() => clearTimeout(timer));
  }

  /** The zygote `z` ended: its prepared forks go with it (it was to report how their tasks end); new ones follow. */
  dropZygote(z: Zygote): void {
    const orphans = this.ready.filter((p) => p.zygote === z);
    if (orphans.length === 0) return;
    this.ready.splice(0, this.ready.length, ...this.ready.filter((p) => p.zygote !== z));
    this.host.track(Promise.all(orphans.map((p) => discardFork(this.host.site, p))));
    this.refill();
  }

  /** No more refills; the prepared forks are killed and freed. */
  close(): Promise<unknown> {
    this.closed = true;
    return Promise.all([...this.ready.splice(0).map((p) => discardFork(this.host.site, p)), ...this.sandboxes.splice(0).map((sb) => sb.destroy())]);
  }
}

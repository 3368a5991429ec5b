/**
 * Sandbox.pause/resume: the sandbox's cgroup freezer shared with commit, and the exec
 * timeouts that stop counting while the sandbox is paused.
 *
 * The freezer is held, not toggled: pause takes one hold and keeps it until resume, commit
 * takes one while it reads the writable layer. The cgroup freezes when the first hold is
 * taken and thaws when the last is given back, so a commit of a paused sandbox leaves it
 * paused, and a resume during a commit does not thaw what the commit is reading.
 */
import { HutchError } from './errors.js';
import type { SandboxCgroup } from './cgroup/driver.js';

/** A timer that stops counting while its clock is stopped (a paused sandbox's exec timeout). */
export class PausableTimer {
  private handle: NodeJS.Timeout | undefined;
  private since = 0;

  constructor(
    private readonly clock: PauseClock,
    private remaining: number,
    private readonly fire: () => void,
  ) {}

  /** @internal Counts on from where it stopped. */
  run(): void {
    if (this.handle) return;
    this.since = performance.now();
    this.handle = setTimeout(() => {
      this.handle = undefined;
      this.clear();
      this.fire();
    }, Math.max(0, this.remaining));
  }

  /** @internal Stops counting; run() goes on with what was left. */
  stop(): void {
    if (!this.handle) return;
    clearTimeout(this.handle);
    this.handle = undefined;
    this.remaining -= performance.now() - this.since;
  }

  /** Cancels it for good. */
  clear(): void {
    this.stop();
    this.clock.forget(this);
  }
}

/** The sandbox's clock for exec timeouts: stopped while the sandbox is paused. */
export class PauseClock {
  private stopped = false;
  private readonly timers = new Set<PausableTimer>();

  /** A timer that fires after `ms` of running (not paused) time. */
  timer(ms: number, fire: () => void): PausableTimer {
    const t = new PausableTimer(this, ms, fire);
    this.timers.add(t);
    if (!this.stopped) t.run();
    return t;
  }

  /** @internal */
  forget(t: PausableTimer): void {
    this.timers.delete(t);
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.timers) t.stop();
  }

  start(): void {
    this.stopped = false;
    for (const t of this.timers) t.run();
  }
}

/** One sandbox's freezer holds (pause, commit) and pause state. */
export class SandboxFreezer {
  readonly clock = new PauseClock();
  private holds = 0;
  /** Whether the last thaw is ours: false when the cgroup was frozen by someone else before the first hold. */
  private owned = false;
  private paused = false;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly id: string,
    private readonly cgroup: () => SandboxCgroup | null,
  ) {}

  /** Runs the transitions one after another (freezing takes a while; calls may overlap). */
  private serial<T>(f: () => Promise<T>): Promise<T> {
    const r = this.queue.then(f);
    this.queue = r.catch(() => undefined);
    return r;
  }

  /**
   * The sandbox's cgroup, for `what` (pause, commit), which uses its freezer.
   *
   * @throws HutchError EUNSUPPORTED when the sandbox has no cgroup, naming the fix.
   */
  check(what: string): SandboxCgroup {
    const cg = this.cgroup();
    if (!cg) {
      throw new HutchError('EUNSUPPORTED', `${what} is not supported for sandbox ${this.id}: it uses the cgroup freezer, and this sandbox has no cgroup; give hutch a cgroup (a delegated cgroup v2 subtree or HUTCH_CGROUP_PARENT)`);
    }
    return cg;
  }

  /** Freezes the sandbox unless a hold has it frozen already; resolves once it is frozen. */
  hold(what: string): Promise<void> {
    const cg = this.check(what);
    return this.serial(async () => {
      if (this.holds === 0) this.owned = await cg.freeze();
      this.holds++;
    });
  }

  /** Ends a hold; the sandbox thaws when it was the last. */
  unhold(): Promise<void> {
    return this.serial(async () => {
      if (this.holds === 0) return;
      this.holds--;
      if (this.holds === 0 && this.owned) await this.cgroup()?.thaw();
    });
  }

  get isPaused(): boolean {
    return this.paused;
  }

  async pause(): Promise<void> {
    const cg = this.check('pause');
    await this.serial(async () => {
      if (this.paused) return;
      // Timeouts stop first: the freeze itself may take some milliseconds.
      this.clock.stop();
      try {
        if (this.holds === 0) await cg.freeze();
      } catch (e) {
        this.clock.start();
        throw e;
      }
      this.holds++;
      this.owned = true; // resume thaws what pause stands for, whoever froze it first
      this.paused = true;
    });
  }

  async resume(): Promise<void> {
    await this.serial(async () => {
      if (!this.paused) return;
      this.paused = false;
      this.holds--;
      if (this.holds === 0 && this.owned) await this.cgroup()?.thaw();
      this.clock.start();
    });
  }
}

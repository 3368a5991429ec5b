/*
 * Violations: what a sandbox tried and was refused, reported to the host
 * as `'violation'` events and on the `ExecResult` of each exec that was running. Reporting is
 * bounded: a token bucket (100 at once, then 50 a second) per sandbox; past it a violation is
 * only counted (`violationsDropped`), so a flood costs the host a counter increment each.
 * Each exec keeps at most 100 of its own and counts the rest.
 */

/**
 * What a sandbox tried and was refused: a `'violation'` event of the {@link Sandbox} and an
 * entry of {@link ExecResult.violations}.
 */
export interface Violation {
  /** 'network': a name, connection or packet refused; 'syscall': a system call seccomp refused. */
  kind: 'network' | 'syscall';
  /** Date.now() when it happened (when hutch saw it). */
  time: number;
  /** 'not allowed', 'denied', an ask's reason, 'seccomp', ... */
  reason: string;
  /** Inside the sandbox, when known. */
  pid?: number;
  /** The name asked for or seen (SNI/Host), or one that resolved to `address`; null when none. */
  host?: string | null;
  /** The destination address; null for a refused name. */
  address?: string | null;
  /** The destination port (53 for a refused name). */
  port?: number | null;
  /** 'dns' for a refused name; 'tcp' or 'udp' for a connection or packet. */
  protocol?: 'tcp' | 'udp' | 'dns';
  /** The refused system call's name (kind 'syscall'). */
  syscall?: string;
  /** Its architecture, e.g. 'x86_64' (kind 'syscall'). */
  arch?: string;
}

export const EXEC_VIOLATIONS_MAX = 100;
const BURST = 100;
const PER_SECOND = 50;

export interface ViolationCollector {
  readonly list: Violation[];
  dropped: number;
}

export class ViolationLog {
  private tokens = BURST;
  private refilled = Date.now();
  private readonly open = new Set<ViolationCollector>();
  /** Violations not reported (rate bound) since the sandbox started. */
  dropped = 0;

  constructor(private readonly emit: (v: Violation) => void) {}

  /** Starts collecting for one exec; `close` returns what it saw. */
  begin(): ViolationCollector {
    const c: ViolationCollector = { list: [], dropped: 0 };
    this.open.add(c);
    return c;
  }

  /** Called at each exec's end, before its count is taken (egress.ts: refusals the kernel did not log). */
  settle: (() => void) | null = null;

  end(c: ViolationCollector | undefined): { violations: Violation[]; violationsDropped: number } {
    if (!c) return { violations: [], violationsDropped: 0 };
    this.settle?.();
    this.open.delete(c);
    return { violations: c.list, violationsDropped: c.dropped };
  }

  /** The collectors a violation goes to: every open one, or only `to` (null: none) when its exec is known. */
  private targets(to: ViolationCollector | null | undefined): Iterable<ViolationCollector> {
    return to === undefined ? this.open : to && this.open.has(to) ? [to] : [];
  }

  /** Counts `n` violations that their source did not report (rate bound there, e.g. a sandbox's init). */
  drop(n: number, to?: ViolationCollector | null): void {
    this.dropped += n;
    for (const c of this.targets(to)) c.dropped += n;
  }

  /** Records `n` violations like `v` (n > 1: a counted burst, e.g. from kernel counters); `to`: see targets. */
  record(v: Violation, n = 1, to?: ViolationCollector | null): void {
    const now = Date.now();
    this.tokens = Math.min(BURST, this.tokens + ((now - this.refilled) * PER_SECOND) / 1000);
    this.refilled = now;
    let reported = 0;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      reported = 1;
    }
    const lost = n - reported;
    this.dropped += lost;
    for (const c of this.targets(to)) {
      if (reported && c.list.length < EXEC_VIOLATIONS_MAX) c.list.push(v);
      else c.dropped += reported;
      c.dropped += lost;
    }
    if (reported) this.emit(v);
  }
}

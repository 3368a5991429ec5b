/**
 * HUTCH_TRACE=1: a per-sandbox breakdown of where create, exec and destroy spend their time,
 * printed to stderr as one line per phase set. Off: a no-op costing one branch.
 */
export const TRACE = process.env.HUTCH_TRACE === '1';

export class Trace {
  private last = performance.now();
  private readonly parts: string[] = [];
  constructor(private readonly what: string) {}
  mark(phase: string): void {
    if (!TRACE) return;
    const now = performance.now();
    this.parts.push(`${phase}=${(now - this.last).toFixed(3)}`);
    this.last = now;
  }
  end(): void {
    if (TRACE) process.stderr.write(`hutch-trace ${this.what} ${this.parts.join(' ')}\n`);
  }
}

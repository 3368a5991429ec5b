/**
 * Summaries of latency samples (milliseconds): percentiles by nearest rank on the sorted
 * samples, so p99 of fewer than 100 samples is the largest one (the table shows n).
 */

export interface Summary {
  n: number;
  failures: number;
  min: number;
  p25: number;
  p50: number;
  p75: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

/** Nearest-rank percentile of ascending samples; NaN when there are none. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

export function summarize(samples: readonly number[], failures = 0): Summary {
  const s = [...samples].sort((a, b) => a - b);
  const mean = s.length === 0 ? NaN : s.reduce((a, b) => a + b, 0) / s.length;
  return {
    n: s.length,
    failures,
    min: s[0] ?? NaN,
    p25: percentile(s, 25),
    p50: percentile(s, 50),
    p75: percentile(s, 75),
    p90: percentile(s, 90),
    p99: percentile(s, 99),
    max: s[s.length - 1] ?? NaN,
    mean,
  };
}

/** Milliseconds with precision that suits the magnitude: 0.412, 4.12, 41.2, 412. */
export function ms(v: number): string {
  if (!Number.isFinite(v)) return '–';
  if (v < 1) return v.toFixed(3);
  if (v < 10) return v.toFixed(2);
  if (v < 100) return v.toFixed(1);
  return v.toFixed(0);
}

/** a / b as "0.42×", or "–" when either side is missing. */
export function ratio(a: number, b: number): string {
  if (!Number.isFinite(a) || !Number.isFinite(b) || b === 0) return '–';
  return `${(a / b).toFixed(2)}×`;
}

export function mib(bytes: number): string {
  if (!Number.isFinite(bytes)) return '–';
  return `${(bytes / 1048576).toFixed(2)} MiB`;
}

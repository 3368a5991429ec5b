/**
 * Checks shared by every option validator (limits, capabilities, network, pool, ...): unknown
 * keys with a "did you mean" suggestion, plain objects. At the bottom of the layers, next to
 * errors.ts, so any concern can validate its own options without importing another's.
 */
import { HutchError, invalid } from './errors.js';

function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!;
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length]!;
}

/** The known name closest to `key` (case-insensitive edit distance <= 2, or a prefix), if any. */
export function suggest(key: string, known: readonly string[]): string | undefined {
  const k = key.toLowerCase();
  let best: string | undefined;
  let bestD = Infinity;
  for (const name of known) {
    const n = name.toLowerCase();
    let d = editDistance(k, n);
    if (d > 2 && k.length >= 3 && n.startsWith(k)) d = 2; // 'timeout' -> 'timeoutMs'
    if (d < bestD) {
      bestD = d;
      best = name;
    }
  }
  return bestD <= 2 ? best : undefined;
}

export function rejectUnknownKeys(field: string, obj: object, known: readonly string[]): void {
  for (const key of Object.keys(obj)) {
    if ((known as readonly string[]).includes(key)) continue;
    const guess = suggest(key, known);
    const hint = guess ? ` (did you mean '${guess}'?)` : '';
    throw new HutchError('EINVAL', `invalid option ${field}: unknown key '${key}'${hint}; known keys: ${known.join(', ')}`);
  }
}

export function plainObject(field: string, value: unknown, what: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid(field, what, value);
  return value as Record<string, unknown>;
}

/**
 * Sizes, rates and durations, parsed once at the edge (API.md, "Sizes, rates, durations").
 * Everything after this file sees plain numbers: bytes, bits per second, milliseconds.
 */
import { invalid } from './errors.js';

/**
 * A size. A number is bytes; strings: '512', '64k', '64KiB', '1.5G', '256MiB', '10MB'
 * (k/M/G/T and KiB/MiB/GiB/TiB are powers of 1024, kB/MB/GB/TB powers of 1000). Anything
 * else, a negative or fractional byte count included, is `HutchError` `EINVAL` naming the option.
 *
 * @example
 * ```ts
 * const limits: Limits = { memory: '256MiB', disk: '1.5G', output: 65536, fileSize: '10MB' };
 * ```
 */
export type ByteSize = number | string;
/**
 * A bandwidth. A number is bits per second; strings: '500kbit', '10mbit', '1gbit' (bits,
 * powers of 1000), '2MBps' (bytes per second). Anything else is `HutchError` `EINVAL`.
 *
 * @example
 * ```ts
 * const network: NetworkOptions = { mode: 'bridge', egress: '10mbit', ingress: 1_000_000 };
 * ```
 */
export type Rate = number | string;

const SIZE_FORMS =
  "a byte count (number) or a string such as '512', '64k', '64KiB', '1.5G', '256MiB' " +
  '(k/M/G/T and KiB/MiB/GiB/TiB are powers of 1024, kB/MB/GB/TB powers of 1000)';

const RATE_FORMS =
  "bits per second (number) or a string such as '500kbit', '10mbit', '1gbit' (bits, powers of 1000; " +
  "kibit/mibit/gibit powers of 1024) or '2MBps' (bytes per second)";

/** Multipliers by lower-cased unit. Single letters follow API.md: powers of 1024. */
const SIZE_UNITS: ReadonlyMap<string, number> = new Map([
  ['', 1],
  ['b', 1],
  // k, ki, kib: 1024; kb: 1000; and so on for m, g, t.
  ...['k', 'm', 'g', 't'].flatMap((p, i): [string, number][] => {
    const bin = 1024 ** (i + 1);
    return [[p, bin], [`${p}i`, bin], [`${p}ib`, bin], [`${p}b`, 1000 ** (i + 1)]];
  }),
]);

/** A decimal number with an optional fraction, then an optional unit. No sign, no exponent. */
const QUANTITY = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]*)\s*$/;

export interface ByteSizeOptions {
  /** Smallest accepted value in bytes (default 1: zero is rejected). */
  min?: number;
  /** Largest accepted value in bytes (default Number.MAX_SAFE_INTEGER). */
  max?: number;
}

function human(bytes: number): string {
  for (const [unit, m] of [
    ['TiB', 1024 ** 4],
    ['GiB', 1024 ** 3],
    ['MiB', 1024 ** 2],
    ['KiB', 1024],
  ] as const) {
    if (bytes >= m && bytes % m === 0) return `${bytes / m}${unit}`;
  }
  return `${bytes} bytes`;
}

function checkRange(field: string, bytes: number, value: unknown, min: number, max: number, forms: string): number {
  if (bytes < min || bytes > max) {
    const range = max >= Number.MAX_SAFE_INTEGER ? `at least ${human(min)}` : `from ${human(min)} to ${human(max)}`;
    throw invalid(field, `${range}: ${forms}`, value);
  }
  return bytes;
}

/**
 * Parses a `ByteSize` into a whole number of bytes. A fractional string ('1.5k') is rounded
 * to the nearest byte; a fractional number is rejected (a number already is bytes).
 *
 * @throws HutchError EINVAL naming `field` and the accepted forms.
 */
export function parseByteSize(field: string, value: unknown, opts: ByteSizeOptions = {}): number {
  const min = opts.min ?? 1;
  const max = opts.max ?? Number.MAX_SAFE_INTEGER;
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw invalid(field, `a whole, finite number of bytes, or ${SIZE_FORMS}`, value);
    return checkRange(field, value, value, min, max, SIZE_FORMS);
  }
  if (typeof value !== 'string') throw invalid(field, SIZE_FORMS, value);
  const m = QUANTITY.exec(value);
  const mult = m ? SIZE_UNITS.get(m[2]!.toLowerCase()) : undefined;
  if (!m || mult === undefined) throw invalid(field, SIZE_FORMS, value);
  const bytes = Math.round(Number(m[1]) * mult);
  if (!Number.isSafeInteger(bytes)) throw invalid(field, `at most ${Number.MAX_SAFE_INTEGER} bytes: ${SIZE_FORMS}`, value);
  return checkRange(field, bytes, value, min, max, SIZE_FORMS);
}

/** Rate units by their exact spelling after lower-casing the prefix; see parseRate. */
const RATE_PREFIX: ReadonlyMap<string, number> = new Map([
  ['', 1],
  ['k', 1000],
  ['m', 1000 ** 2],
  ['g', 1000 ** 3],
  ['t', 1000 ** 4],
  ['ki', 1024],
  ['mi', 1024 ** 2],
  ['gi', 1024 ** 3],
  ['ti', 1024 ** 4],
]);

/**
 * Parses a `Rate` into whole bits per second (at least 1).
 *
 * Units: `bit` with an SI prefix (`kbit`, `mbit`, `gbit`, `tbit`, any case; powers of 1000,
 * as tc(8) reads them) or a binary one (`kibit`, `mibit`...); `Bps` with a capital B is
 * bytes per second (`kBps`, `MBps`, `GBps`). A lower-case `bps` ('10mbps') is rejected: tc
 * reads it as bytes while people usually mean bits, so the message asks which was meant.
 *
 * @throws HutchError EINVAL naming `field` and the accepted forms.
 */
export function parseRate(field: string, value: unknown): number {
  let bits: number;
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw invalid(field, RATE_FORMS, value);
    bits = Math.round(value);
  } else if (typeof value === 'string') {
    const m = QUANTITY.exec(value);
    if (!m) throw invalid(field, RATE_FORMS, value);
    const n = Number(m[1]);
    const unit = m[2]!;
    const u = /^([A-Za-z]{0,2}?)(bit|Bps|bps)?$/.exec(unit);
    const prefix = u ? RATE_PREFIX.get(u[1]!.toLowerCase()) : undefined;
    if (!u || prefix === undefined || (u[2] === undefined && unit !== '')) throw invalid(field, RATE_FORMS, value);
    if (u[2] === 'bps') {
      const p = u[1]!;
      throw invalid(field, `an unambiguous unit: '${m[1]}${p}bit' for bits or '${m[1]}${p}Bps' for bytes per second (${RATE_FORMS})`, value);
    }
    bits = Math.round(n * prefix * (u[2] === 'Bps' ? 8 : 1));
  } else {
    throw invalid(field, RATE_FORMS, value);
  }
  if (!Number.isSafeInteger(bits) || bits < 1) {
    throw invalid(field, `a rate of at least 1 bit per second and at most ${Number.MAX_SAFE_INTEGER}: ${RATE_FORMS}`, value);
  }
  return bits;
}

/**
 * A whole number in [min, max] (default min 1). For counts such as pids, nofile, iops.
 *
 * @throws HutchError EINVAL naming `field`.
 */
export function parseCount(field: string, value: unknown, min = 1, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    const range = max >= Number.MAX_SAFE_INTEGER ? `at least ${min}` : `from ${min} to ${max}`;
    throw invalid(field, `a whole number ${range}`, value);
  }
  return value;
}

/** Largest delay a Node timer honours (2^31-1 ms, about 24.8 days); beyond it setTimeout fires at once. */
export const MAX_DURATION_MS = 2 ** 31 - 1;

/**
 * A positive duration in milliseconds, rounded up to a whole millisecond, at most
 * MAX_DURATION_MS (a longer one would overflow Node's timers and fire immediately).
 *
 * @throws HutchError EINVAL naming `field`.
 */
export function parseDurationMs(field: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || value > MAX_DURATION_MS) {
    throw invalid(field, `a duration in milliseconds greater than 0 and at most ${MAX_DURATION_MS}`, value);
  }
  return Math.ceil(value);
}

/** A positive finite number (e.g. cpus), within [min, max]. */
export function parsePositive(field: string, value: unknown, min: number, max: number, what = 'a number'): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    throw invalid(field, `${what} from ${min} to ${max}`, value);
  }
  return value;
}

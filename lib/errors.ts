import { getSystemErrorName } from 'node:util';

/** The stable error codes of hutch (API.md, "Errors"). */
export type HutchErrorCode =
  | 'EINVAL'
  | 'ENOIMAGE'
  | 'EBADIMAGE'
  | 'EUNSUPPORTED'
  | 'ESETUP'
  | 'EDESTROYED'
  | 'EREGISTRY'
  | 'EBUILD';

const brand = Symbol.for('hutch.HutchError');

export interface HutchErrorDetails {
  /** The setup step that failed (ESETUP), e.g. `overlay`, `pivot_root`, `exec`. */
  step?: string;
  /** The kernel's answer as a name, e.g. `ENOENT`. */
  errno?: string;
  /** The path the failing step worked on. */
  path?: string;
  /** A known likely cause and what to do about it. */
  hint?: string;
  /** The underlying error, kept rather than replaced. */
  cause?: unknown;
}

/**
 * Every failure of hutch itself is a `HutchError` with a stable `code`; the message says
 * what was wrong and how to fix it.
 *
 * @example
 * ```ts
 * try { await Sandbox.run({ command: ['true'], limits: { memory: 'lots' } }); }
 * catch (e) { if (HutchError.is(e) && e.code === 'EINVAL') console.error(e.message); }
 * ```
 */
export class HutchError extends Error {
  readonly code: HutchErrorCode;
  readonly step?: string;
  readonly errno?: string;
  readonly path?: string;
  readonly hint?: string;

  constructor(code: HutchErrorCode, message: string, details: HutchErrorDetails = {}) {
    super(message, details.cause !== undefined ? { cause: details.cause } : undefined);
    this.code = code;
    if (details.step !== undefined) this.step = details.step;
    if (details.errno !== undefined) this.errno = details.errno;
    if (details.path !== undefined) this.path = details.path;
    if (details.hint !== undefined) this.hint = details.hint;
  }

  /** True for a HutchError from any copy of this package (works across realms). */
  static is(value: unknown): value is HutchError {
    return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[brand] === true;
  }
}
Object.defineProperty(HutchError.prototype, 'name', { value: 'HutchError', enumerable: false });
Object.defineProperty(HutchError.prototype, brand, { value: true, enumerable: false });

/** An `EINVAL` naming the option, what was expected and what was given. */
export function invalid(option: string, expected: string, actual?: unknown): HutchError {
  const got = actual === undefined ? '' : `, got ${describe(actual)}`;
  return new HutchError('EINVAL', `invalid option ${option}: expected ${expected}${got}`);
}

/** An `EUNSUPPORTED` saying what the host lacks and how to get it. */
export function unsupported(what: string, howToGet: string, cause?: unknown): HutchError {
  return new HutchError('EUNSUPPORTED', `${what} is not supported on this host: ${howToGet}`, { cause });
}

/** Name of a (positive or negative) errno number, e.g. 2 -> 'ENOENT'. */
export function errnoName(err: number): string {
  try {
    return getSystemErrorName(-Math.abs(err));
  } catch {
    return `errno ${Math.abs(err)}`;
  }
}

/** Wraps a host-side failure (a cgroup write, a netlink call) naming the resource, keeping the cause. */
export function hostFailure(code: HutchErrorCode, what: string, cause: unknown): HutchError {
  const e = cause as NodeJS.ErrnoException | undefined;
  const errno = typeof e?.code === 'string' ? e.code : undefined;
  const msg = `${what}: ${errno ?? (e instanceof Error ? e.message : String(cause))}`;
  return new HutchError(code, msg, { errno, path: e?.path, cause });
}

export function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 80 ? v.slice(0, 77) + '...' : v);
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return `${String(v)} (${typeof v})`;
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v;
}

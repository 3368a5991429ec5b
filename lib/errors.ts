import { getSystemErrorName } from 'node:util';

/**
 * The stable error codes of hutch (docs/errors.md says what to do about each):
 *
 * - `EINVAL`: a bad option; the message names it, what was expected and what was given;
 * - `ENOIMAGE`: no image by that reference in the store;
 * - `EBADIMAGE`: an archive, layer or manifest was rejected (the message names the entry);
 * - `EUNSUPPORTED`: the host lacks a feature; the message says which and how to get it;
 * - `ESETUP`: setting a sandbox up (or tearing it down) failed: `step` names the step, `errno` the kernel's answer;
 * - `ENOENT`: a file asked for in a sandbox (`readFile`, `writeFile`'s directory) does not exist;
 * - `ECLEANUP`: `destroy()` freed the sandbox but could not free a host resource (`cause` says which);
 * - `EDESTROYED`: the sandbox (or pool) is destroyed (or closed, or aborted through its signal);
 * - `EREGISTRY`: a registry refused or failed a pull or push;
 * - `EBUILD`: a Dockerfile build failed (a bad instruction, a failing RUN);
 * - `ESTORE`: the image store could not be read or written (`errno` says why, e.g. `ENOSPC`,
 *   `path` where); the operation left nothing half-made and its space is free again.
 *
 * @example
 * ```ts
 * function retryable(code: HutchErrorCode): boolean {
 *   return code === 'EREGISTRY' || code === 'ESETUP';
 * }
 * ```
 */
export type HutchErrorCode =
  | 'EINVAL'
  | 'ENOIMAGE'
  | 'EBADIMAGE'
  | 'EUNSUPPORTED'
  | 'ESETUP'
  | 'ENOENT'
  | 'ECLEANUP'
  | 'EDESTROYED'
  | 'EREGISTRY'
  | 'EBUILD'
  | 'ESTORE';

const brand = Symbol.for('hutch.HutchError');

/**
 * The setup steps of a sandbox, in order: the same list as addon/steps.h (the addon exports
 * its names at load; test/runtime/errors.test.ts checks that the two agree).
 */
export const SETUP_STEPS = [
  'clone', 'sync', 'id_map', 'cgroup', 'setid', 'hostname', 'mount_ns', 'mount_private', 'scratch', 'layers', 'overlay',
  'root_attach', 'bind', 'proc', 'dev', 'mask', 'readonly', 'pivot_root', 'lock_mounts', 'loopback', 'fds', 'exec_init',
] as const satisfies readonly HutchErrorStep[];

/** The steps of one exec inside a running sandbox, as init reports them (addon/init/protocol.h, numbered from 1 in lib/protocol.ts). */
export const EXEC_STEPS = ['fork', 'fds', 'rlimit', 'cwd', 'credentials', 'capabilities', 'seccomp', 'exec'] as const satisfies readonly HutchErrorStep[];

/**
 * What {@link HutchError.step} can be: a setup step (addon/steps.h, docs/errors.md), a step of
 * one exec (reported by init), or one the host side reports: `network` (links, addresses,
 * nftables), `open` (readFile/writeFile, a build step's writable layer), `destroy` (ECLEANUP).
 *
 * @example
 * ```ts
 * if (HutchError.is(e) && e.step === 'overlay') console.error('the root could not be mounted:', e.errno);
 * ```
 */
export type HutchErrorStep =
  // setting a sandbox up (addon/steps.h, in order)
  | 'clone' | 'sync' | 'id_map' | 'cgroup' | 'setid' | 'hostname' | 'mount_ns' | 'mount_private' | 'scratch' | 'layers'
  | 'overlay' | 'root_attach' | 'bind' | 'proc' | 'dev' | 'mask' | 'readonly' | 'pivot_root' | 'lock_mounts' | 'loopback'
  | 'fds' | 'exec_init'
  // one exec (init)
  | 'fork' | 'rlimit' | 'cwd' | 'credentials' | 'capabilities' | 'seccomp' | 'exec'
  // the host side
  | 'network' | 'open' | 'destroy'
  // a template's fork (lib/template, addon/zygote/helper.c)
  | 'zygote' | 'request' | 'plan' | 'unshare' | 'session' | 'pivot' | 'mountinfo' | 'no_new_privs' | 'pidfd';

/**
 * The optional details of a {@link HutchError}, as its constructor takes them.
 *
 * @example
 * ```ts
 * const details: HutchErrorDetails = { step: 'overlay', errno: 'EINVAL', hint: 'the kernel is older than 5.11' };
 * throw new HutchError('ESETUP', 'mounting the root failed', details);
 * ```
 */
export interface HutchErrorDetails {
  /** The setup step that failed (ESETUP), e.g. `overlay`, `pivot_root`, `exec`. */
  step?: HutchErrorStep;
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
  /** What kind of failure; stable, to branch on (the message is for people). See {@link HutchErrorCode}. */
  readonly code: HutchErrorCode;
  /** `ESETUP`: the setup step that failed, e.g. `overlay`, `pivot_root`, `exec`, `open`, `destroy`. */
  readonly step?: HutchErrorStep;
  /** The kernel's answer as a name, e.g. `ENOENT`, when a system call failed. */
  readonly errno?: string;
  /** The path the failing step worked on, when there was one. */
  readonly path?: string;
  /** A known likely cause and what to do about it, when hutch recognises the failure. */
  readonly hint?: string;

  /**
   * hutch makes these itself; the constructor is public for code that wraps hutch and wants
   * to fail the same way.
   *
   * @param code One of the stable codes.
   * @param message What was wrong and how to fix it.
   * @param details step, errno, path, hint and cause, each optional.
   *
   * @example
   * ```ts
   * throw new HutchError('EINVAL', 'invalid option language: expected one of python, node');
   * ```
   */
  constructor(code: HutchErrorCode, message: string, details: HutchErrorDetails = {}) {
    super(message, details.cause !== undefined ? { cause: details.cause } : undefined);
    this.code = code;
    if (details.step !== undefined) this.step = details.step;
    if (details.errno !== undefined) this.errno = details.errno;
    if (details.path !== undefined) this.path = details.path;
    if (details.hint !== undefined) this.hint = details.hint;
  }

  /**
   * True for a HutchError from any copy of this package (works across realms and duplicate
   * installs, where `instanceof` does not).
   *
   * @example
   * ```ts
   * try { await sb.exec('true'); }
   * catch (e) { if (HutchError.is(e) && e.code === 'EDESTROYED') console.log('sandbox gone'); }
   * ```
   */
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

/**
 * errno names meaning the store's filesystem could not take a write (full, over quota, broken,
 * read-only, out of fds): the store's fault, not the input's, so `ESTORE` rather than `EBADIMAGE`.
 */
export const STORE_ERRNOS: ReadonlySet<string> = new Set(['ENOSPC', 'EDQUOT', 'EIO', 'EROFS', 'EFBIG', 'EMFILE', 'ENFILE']);

/**
 * The store-side failure inside `e` (itself or a cause up its chain): an errno of
 * {@link STORE_ERRNOS} and the path it names, if any; undefined when there is none.
 */
export function storeErrno(e: unknown): { errno: string; path?: string; error: unknown } | undefined {
  for (let cur = e, depth = 0; typeof cur === 'object' && cur !== null && depth < 8; cur = (cur as { cause?: unknown }).cause, depth++) {
    const o = cur as { code?: unknown; errno?: unknown; path?: unknown };
    const name = HutchError.is(cur) ? cur.errno : typeof o.code === 'string' ? o.code : undefined;
    if (name !== undefined && STORE_ERRNOS.has(name)) return { errno: name, path: typeof o.path === 'string' ? o.path : undefined, error: cur };
  }
  return undefined;
}

export function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 80 ? v.slice(0, 77) + '...' : v);
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return `${String(v)} (${typeof v})`;
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v;
}

/**
 * Validation of the public options (API.md SandboxOptions, ExecOptions): types, ranges,
 * combinations and misspellings, before anything is created. Each concern validates its own
 * part (limits.ts, seccomp/, network/, identity.ts); this file checks the rest and assembles.
 */
import { posix } from 'node:path';
import { invalid } from './errors.js';
import { parseUser } from './identity.js';
import { resolveLimits, withoutCgroupDefaults, type Limits, type ResolvedLimits } from './limits.js';
import { cgroupDriver } from './cgroup/driver.js';
import { plainObject, rejectUnknownKeys } from './validators.js';
import { resolveCapabilities } from './capabilities.js';
import { validateSeccompOption, type SeccompOption } from './seccomp/index.js';
import { parseByteSize, parseDurationMs, type ByteSize } from './units.js';
import type { ImageStore } from './image/store.js';
import type { Image } from './image/types.js';
import { resolveNetwork, type NetworkOptions, type NetworkPlan } from './network/options.js';
import { checkEgressCapabilities } from './network/policy.js';
import { checkUserspaceCapabilities } from './network/userspace-options.js';

/**
 * A host path bind-mounted into the sandbox ({@link SandboxOptions.mounts}).
 *
 * Files the sandbox writes through a writable mount belong to the sandbox's unprivileged host
 * uid range, not to the Node process's user.
 *
 * @example
 * ```ts
 * const sb = await Sandbox.create({
 *   mounts: [
 *     { source: '/srv/data', target: '/data' },                    // read-only
 *     { source: '/tmp/out', target: '/out', readonly: false },   // writable
 *   ],
 * });
 * ```
 */
export interface Mount {
  /**
   * Absolute host path (a directory or a file). It must be the real path: a source that
   * resolves through a symlink is refused (`EINVAL`) rather than followed; a missing one
   * fails creation with `ESETUP`.
   */
  source: string;
  /**
   * Absolute path inside the sandbox, normalised; anything but `/` itself. A missing target
   * is created inside.
   */
  target: string;
  /** Mount read-only. Default `true`: pass `false` to let the sandbox write to the host path. */
  readonly?: boolean;
}

/**
 * How to make a sandbox ({@link Sandbox.create}). Every field is optional; all are checked
 * before anything is created, and a wrong one (a misspelt key included, with a suggestion)
 * rejects with `HutchError` `EINVAL` naming it.
 *
 * @example
 * ```ts
 * const sb = await Sandbox.create({
 *   image: 'busybox',
 *   limits: { memory: '128MiB', cpus: 0.5, pids: 64, timeoutMs: 10_000 },
 *   env: { LANG: 'C.UTF-8' },
 *   cwd: '/tmp',
 *   user: '1000:1000',
 * });
 * ```
 */
export interface SandboxOptions {
  /**
   * The root filesystem: `'host'` (default: the host's system directories, read-only),
   * `'busybox'` (made on first use from the host's busybox-static), `'name:tag'`, a full id
   * `'sha256:<hex>'`, a unique id prefix of at least 12 hex digits, or an {@link Image}.
   * An unknown reference rejects with `ENOIMAGE`.
   */
  image?: string | Image;
  /** Where `image` is looked up and where persistent writable layers live. Default: {@link ImageStore.default}. */
  store?: ImageStore;
  /** Resource limits of the whole sandbox. Default: output 16 MiB per exec, pids 1024 and the 1 GiB writable layer ({@link DEFAULT_DISK_BYTES}); nothing else. */
  limits?: Limits;
  /** Default `'none'`: the sandbox has a private loopback only. See {@link NetworkOptions} for a link to the host. */
  network?: 'none' | NetworkOptions;
  /** Host paths made visible inside (bind mounts, read-only unless a mount says otherwise). Default: none. */
  mounts?: Mount[];
  /**
   * Environment of every process, over the image's own `Env`. Names may not contain `=` or
   * NUL, values may not contain NUL. The Node process's environment never leaks in.
   */
  env?: Record<string, string>;
  /** Working directory of processes (absolute path inside). Default: the image's `WorkingDir`, else `/`. */
  cwd?: string;
  /**
   * User of processes inside: a uid (the gid is the same) or `'uid:gid'`, numbers from 0 to
   * 65535. Default: the image's `User` (a name is looked up in the image's /etc/passwd), else 0
   * (root inside, which is never root on the host).
   */
  user?: number | string;
  /** Host name inside, letters, digits, `-` and `.`, at most 64 characters. Default: `hutch-<id>`. */
  hostname?: string;
  /** Mount the root read-only; mounts keep their own mode (a writable {@link Mount} stays writable). Default `false`. */
  readonlyRootfs?: boolean;
  /**
   * Keep the writable layer on disk in the store instead of in a tmpfs (memory): for large
   * or long-lived work, and for `limits.io`, which needs a block device. Default `false`.
   */
  persistent?: boolean;
  /**
   * Syscall filter: `'default'` (Docker's default profile; the default), `'unconfined'` (no
   * filter) or a profile object in the OCI / Docker JSON shape. See docs/seccomp.md.
   */
  seccomp?: SeccompOption;
  /**
   * Capabilities kept inside (names with or without `CAP_`, any case). Default:
   * {@link DEFAULT_CAPABILITIES}. An unknown name rejects with `EINVAL`. They are capabilities
   * of the sandbox's user namespace, never of the host.
   */
  capabilities?: string[];
  /**
   * Aborting destroys the sandbox (its running processes end with reason `'killed'`). Already
   * aborted at creation: `create` rejects with `EDESTROYED`.
   */
  signal?: AbortSignal;
}

/**
 * Options of one command ({@link Sandbox.exec}, {@link SandboxPool.run}). Unknown keys and
 * wrong values reject with `HutchError` `EINVAL` naming the option.
 *
 * @example
 * ```ts
 * const ac = new AbortController();
 * const r = await sb.exec(['wc', '-c'], {
 *   stdin: 'some input',
 *   env: { DEBUG: '1' },
 *   cwd: '/tmp',
 *   timeoutMs: 5_000,
 *   output: '1MiB',
 *   encoding: 'utf8',
 *   signal: ac.signal,
 * });
 * if (r.reason === 'timeout') console.log('too slow');
 * ```
 */
export interface ExecOptions {
  /**
   * Standard input: a string or bytes (written, then closed) or a readable stream (piped).
   * Default: none; the process reads EOF at once.
   */
  stdin?: string | Uint8Array | NodeJS.ReadableStream;
  /** Variables merged over the sandbox's environment for this command only. */
  env?: Record<string, string>;
  /** Working directory (absolute path inside). Default: the sandbox's `cwd`, else the image's, else `/`. */
  cwd?: string;
  /** A uid or `'uid:gid'` inside (0 to 65535). Default: the sandbox's `user`, else the image's, else 0. */
  user?: number | string;
  /**
   * Wall-clock limit in ms (greater than 0, at most 2^31 - 1, rounded up). When it passes
   * the command's whole process group is SIGKILLed and the result's reason is `'timeout'`.
   * Default: the sandbox's `limits.timeoutMs`, else none.
   */
  timeoutMs?: number;
  /**
   * Cap on captured stdout + stderr together. Past it the process is SIGKILLed; the result
   * has reason `'output-limit'`, `truncated: true` and the captured prefix. Default: the
   * sandbox's `limits.output`, else 16 MiB (`DEFAULT_OUTPUT_BYTES`).
   */
  output?: ByteSize;
  /** Given (e.g. `'utf8'`): `stdout` and `stderr` of the result are strings; absent: Buffers. */
  encoding?: BufferEncoding;
  /**
   * Aborting SIGKILLs the command's process group; the result says reason `'killed'`. The
   * promise still resolves (it does not reject).
   */
  signal?: AbortSignal;
}

/**
 * Options of {@link Sandbox.spawn}: those of {@link ExecOptions} except `stdin` and
 * `encoding` (the process's stdio are streams). `output` has no effect here: nothing is
 * captured, so nothing is capped.
 *
 * @example
 * ```ts
 * const p = sb.spawn('cat', { timeoutMs: 60_000 });
 * p.stdout.pipe(process.stdout);
 * p.stdin.end('hello\n');
 * const r = await p.result;
 * ```
 */
export interface SpawnOptions extends Omit<ExecOptions, 'stdin' | 'encoding'> {
  /**
   * A pseudo-terminal inside (from the sandbox's own devpts): stdin and stdout are its two ends,
   * stderr is empty, `isatty()` is true, Ctrl-C (`\x03` on stdin) signals the foreground process
   * group. `true` is 80x24; `TERM=xterm-256color` unless `env` sets it. docs/terminals.md.
   */
  tty?: boolean | {
    /** Window width in columns (default 80). */
    columns?: number;
    /** Window height in rows (default 24). */
    rows?: number;
  };
}

/**
 * Options of {@link Sandbox.run}: a sandbox's ({@link SandboxOptions}), one command's
 * ({@link ExecOptions}) and the command itself. `env`, `cwd`, `user` and `signal` apply
 * to both (the signal also destroys the sandbox).
 *
 * @example
 * ```ts
 * const r = await Sandbox.run({
 *   image: 'busybox',
 *   command: ['sh', '-c', 'echo $GREETING'],
 *   env: { GREETING: 'hi' },
 *   limits: { memory: '64MiB', timeoutMs: 2_000 },
 *   encoding: 'utf8',
 * });
 * console.log(r.exitCode, r.stdout); // 0 'hi\n'
 * ```
 */
export interface RunOptions extends SandboxOptions, ExecOptions {
  /**
   * A string runs under `/bin/sh -c`; an array is executed directly (looked up in the
   * sandbox's PATH). Absent: the image's Entrypoint + Cmd (`EINVAL` when it has neither).
   */
  command?: string[] | string;
}

const SANDBOX_KEYS = [
  'image', 'store', 'limits', 'network', 'mounts', 'env', 'cwd', 'user', 'hostname', 'readonlyRootfs',
  'persistent', 'seccomp', 'capabilities', 'signal',
] as const;
const EXEC_KEYS = ['stdin', 'env', 'cwd', 'user', 'timeoutMs', 'output', 'encoding', 'signal'] as const;
const SPAWN_KEYS = ['env', 'cwd', 'user', 'timeoutMs', 'output', 'signal', 'tty'] as const;
export const RUN_KEYS = [...new Set<string>([...SANDBOX_KEYS, ...EXEC_KEYS, 'command'])];

export interface ResolvedSandboxOptions {
  image: string | Image;
  store?: ImageStore;
  limits: ResolvedLimits;
  network: NetworkPlan;
  mounts: { source: string; target: string; readonly: boolean }[];
  env: Record<string, string>;
  cwd?: string;
  user?: { uid: number; gid: number };
  hostname?: string;
  readonlyRootfs: boolean;
  persistent: boolean;
  seccomp: SeccompOption;
  capabilities: string[];
  signal?: AbortSignal;
}

export function checkSignal(field: string, v: unknown): AbortSignal | undefined {
  if (v === undefined) return undefined;
  if (!(v instanceof AbortSignal)) throw invalid(field, 'an AbortSignal', v);
  return v;
}

export function checkEnv(field: string, v: unknown): Record<string, string> {
  if (v === undefined) return {};
  const o = plainObject(field, v, 'an object of string values, e.g. { LANG: "C.UTF-8" }');
  for (const [k, val] of Object.entries(o)) {
    if (k === '' || k.includes('=') || k.includes('\0')) throw invalid(`${field}`, 'variable names without "=" or NUL', k);
    if (typeof val !== 'string' || val.includes('\0')) throw invalid(`${field}.${k}`, 'a string without NUL', val);
  }
  return o as Record<string, string>;
}

/** An absolute path inside the sandbox, normalised ('..' may not climb above '/'). */
export function checkInsidePath(field: string, v: unknown): string {
  if (typeof v !== 'string' || !v.startsWith('/') || v.includes('\0')) throw invalid(field, 'an absolute path inside the sandbox', v);
  return posix.normalize(v);
}

function checkHostname(v: unknown): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !/^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$/.test(v) || v.length > 64) {
    throw invalid('hostname', 'a host name of letters, digits, "-" and ".", at most 64 characters', v);
  }
  return v;
}

function checkBool(field: string, v: unknown): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw invalid(field, 'true or false', v);
  return v;
}

function checkMounts(v: unknown): ResolvedSandboxOptions['mounts'] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw invalid('mounts', 'an array of { source, target, readonly? }', v);
  return v.map((m, i) => {
    const f = `mounts[${i}]`;
    const o = plainObject(f, m, '{ source, target, readonly? }');
    rejectUnknownKeys(f, o, ['source', 'target', 'readonly']);
    if (typeof o.source !== 'string' || !o.source.startsWith('/') || o.source.includes('\0')) {
      throw invalid(`${f}.source`, 'an absolute host path', o.source);
    }
    const target = checkInsidePath(`${f}.target`, o.target);
    if (target === '/') throw invalid(`${f}.target`, 'a path below / (the root is the image)', o.target);
    if (o.readonly !== undefined && typeof o.readonly !== 'boolean') throw invalid(`${f}.readonly`, 'true or false', o.readonly);
    return { source: posix.normalize(o.source), target, readonly: o.readonly !== false };
  });
}

/** True when sandboxes get no cgroup here (lib/cgroup/none.ts); a driver that cannot be made says so at create. */
function noCgroups(): boolean {
  try {
    return cgroupDriver().kind === 'none';
  } catch {
    return false;
  }
}

export function resolveSandboxOptions(options: unknown, known: readonly string[] = SANDBOX_KEYS): ResolvedSandboxOptions {
  const o = options === undefined ? {} : plainObject('options', options, 'an object of SandboxOptions');
  rejectUnknownKeys('options', o, known);
  const image = o.image ?? 'host';
  if (typeof image !== 'string' && (typeof image !== 'object' || image === null || typeof (image as Image).id !== 'string')) {
    throw invalid('image', "an image reference ('host', 'busybox', 'name:tag', 'sha256:...') or an Image", image);
  }
  if (typeof image === 'string' && image.trim() === '') throw invalid('image', 'a non-empty image reference', image);
  if (o.store !== undefined && (typeof o.store !== 'object' || o.store === null || typeof (o.store as ImageStore).resolve !== 'function')) {
    throw invalid('store', 'an ImageStore', o.store);
  }
  const seccomp = o.seccomp === undefined ? 'default' : validateSeccompOption('seccomp', o.seccomp);
  const r: ResolvedSandboxOptions = {
    image: image as string | Image,
    limits: noCgroups() ? withoutCgroupDefaults(resolveLimits(o.limits as Limits | undefined, 'limits')) : resolveLimits(o.limits as Limits | undefined, 'limits'),
    network: resolveNetwork(o.network as 'none' | NetworkOptions | undefined, 'network'),
    mounts: checkMounts(o.mounts),
    env: checkEnv('env', o.env),
    readonlyRootfs: checkBool('readonlyRootfs', o.readonlyRootfs),
    persistent: checkBool('persistent', o.persistent),
    seccomp,
    capabilities: resolveCapabilities('capabilities', o.capabilities),
  };
  checkUserspaceCapabilities(r.network, r.capabilities);
  checkEgressCapabilities(r.network, r.capabilities);
  if (o.store !== undefined) r.store = o.store as ImageStore;
  if (o.cwd !== undefined) r.cwd = checkInsidePath('cwd', o.cwd);
  if (o.user !== undefined) r.user = parseUser('user', o.user as number | string);
  const hn = checkHostname(o.hostname);
  if (hn !== undefined) r.hostname = hn;
  const sig = checkSignal('signal', o.signal);
  if (sig) r.signal = sig;
  return r;
}

export interface ResolvedExecOptions {
  env: Record<string, string>;
  cwd?: string;
  user?: { uid: number; gid: number };
  timeoutMs?: number;
  output?: number;
  encoding?: BufferEncoding;
  signal?: AbortSignal;
  stdin?: string | Uint8Array | NodeJS.ReadableStream;
  tty?: { columns: number; rows: number };
}

export function resolveExecOptions(options: unknown, kind: 'exec' | 'spawn' | 'run' = 'exec'): ResolvedExecOptions {
  const o = options === undefined ? {} : plainObject('options', options, 'an object of ExecOptions');
  if (kind !== 'run') rejectUnknownKeys('options', o, kind === 'exec' ? EXEC_KEYS : SPAWN_KEYS);
  const r: ResolvedExecOptions = { env: checkEnv('env', o.env) };
  if (o.cwd !== undefined) r.cwd = checkInsidePath('cwd', o.cwd);
  if (o.user !== undefined) r.user = parseUser('user', o.user as number | string);
  if (o.timeoutMs !== undefined) r.timeoutMs = parseDurationMs('timeoutMs', o.timeoutMs);
  if (o.output !== undefined) r.output = parseByteSize('output', o.output);
  if (o.encoding !== undefined) {
    if (typeof o.encoding !== 'string' || !Buffer.isEncoding(o.encoding)) throw invalid('encoding', "a Buffer encoding such as 'utf8'", o.encoding);
    r.encoding = o.encoding as BufferEncoding;
  }
  const sig = checkSignal('signal', o.signal);
  if (sig) r.signal = sig;
  if (o.stdin !== undefined) {
    const s = o.stdin;
    const ok = typeof s === 'string' || s instanceof Uint8Array || (typeof s === 'object' && s !== null && typeof (s as NodeJS.ReadableStream).pipe === 'function');
    if (!ok) throw invalid('stdin', 'a string, a Uint8Array or a readable stream', s);
    r.stdin = s as ResolvedExecOptions['stdin'];
  }
  const tty = checkTty(o.tty);
  if (tty) r.tty = tty;
  return r;
}

/** A terminal size: 1 to 65535 columns and rows (struct winsize holds 16 bits). */
export function checkTtySize(field: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 0xffff) throw invalid(field, 'an integer from 1 to 65535', v);
  return v;
}

function checkTty(v: unknown): { columns: number; rows: number } | undefined {
  if (v === undefined || v === false) return undefined;
  if (v === true) return { columns: 80, rows: 24 };
  const o = plainObject('tty', v, 'true, false or { columns, rows }');
  rejectUnknownKeys('tty', o, ['columns', 'rows']);
  return {
    columns: o.columns === undefined ? 80 : checkTtySize('tty.columns', o.columns),
    rows: o.rows === undefined ? 24 : checkTtySize('tty.rows', o.rows),
  };
}

/** A command: a string runs under /bin/sh -c; an array is exec'd directly. */
export function resolveCommand(field: string, v: unknown): string[] {
  if (typeof v === 'string') {
    if (v.trim() === '') throw invalid(field, 'a non-empty command', v);
    if (v.includes('\0')) throw invalid(field, 'a command without NUL', v);
    return ['/bin/sh', '-c', v];
  }
  if (Array.isArray(v) && v.length > 0 && v.every((a) => typeof a === 'string' && !a.includes('\0')) && v[0] !== '') return v as string[];
  throw invalid(field, 'a string (run by /bin/sh -c) or a non-empty array of strings', v);
}

/**
 * Options of {@link Sandbox.template}: a sandbox's options plus the zygote's. Each fork gets
 * the sandbox options as a created sandbox would (limits, seccomp, capabilities, user,
 * mounts); with `network: { mode: 'bridge' }` a link of its own, made before its task runs
 * (`ports` is refused: every fork would publish the same host port). `persistent` is refused.
 * Host root only (docs/templates.md).
 */
export interface TemplateOptions extends SandboxOptions {
  /** `'python'`, `'node'`, or a command that serves the zygote protocol (docs/templates.md). */
  zygote: 'python' | 'node' | string[];
  /** Modules the zygote imports before it serves (`'numpy'`, a file path). */
  preload?: string[];
  /** Forked sandboxes kept ready (default 0: fork on demand). */
  size?: number;
  /** How long the zygote may take to say it is ready (its preload included); default 30 000. */
  zygoteTimeoutMs?: number;
}

/** What {@link SandboxTemplate.run} takes besides ExecOptions: files written before the task starts. */
export type TemplateRunOptions = ExecOptions & {
  /** Files written into the fork before the task starts: path inside → contents. */
  files?: Record<string, string | Uint8Array>;
};

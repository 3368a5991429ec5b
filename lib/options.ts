/**
 * Validation of the public options (API.md SandboxOptions, ExecOptions): types, ranges,
 * combinations and misspellings, before anything is created. Each concern validates its own
 * part (limits.ts, seccomp/, network/, identity.ts); this file checks the rest and assembles.
 */
import { posix } from 'node:path';
import { invalid } from './errors.js';
import { parseUser } from './identity.js';
import { plainObject, rejectUnknownKeys, resolveLimits, type Limits, type ResolvedLimits } from './limits.js';
import { resolveCapabilities } from './capabilities.js';
import { validateSeccompOption, type SeccompOption } from './seccomp/index.js';
import { parseByteSize, parseDurationMs, type ByteSize } from './units.js';
import type { ImageStore } from './image/store.js';
import type { Image } from './image/types.js';
import { resolveNetwork, type NetworkOptions, type NetworkPlan } from './network/options.js';

export interface Mount {
  source: string;
  target: string;
  /** Default true. */
  readonly?: boolean;
}

export interface SandboxOptions {
  image?: string | Image;
  store?: ImageStore;
  limits?: Limits;
  network?: 'none' | NetworkOptions;
  mounts?: Mount[];
  env?: Record<string, string>;
  cwd?: string;
  user?: number | string;
  hostname?: string;
  readonlyRootfs?: boolean;
  persistent?: boolean;
  seccomp?: SeccompOption;
  capabilities?: string[];
  signal?: AbortSignal;
}

export interface ExecOptions {
  stdin?: string | Uint8Array | NodeJS.ReadableStream;
  env?: Record<string, string>;
  cwd?: string;
  user?: number | string;
  timeoutMs?: number;
  output?: ByteSize;
  encoding?: BufferEncoding;
  signal?: AbortSignal;
}

export interface SpawnOptions extends Omit<ExecOptions, 'stdin' | 'encoding'> {
  tty?: boolean;
}

export interface RunOptions extends SandboxOptions, ExecOptions {
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
    limits: resolveLimits(o.limits as Limits | undefined, 'limits'),
    network: resolveNetwork(o.network as 'none' | NetworkOptions | undefined, 'network'),
    mounts: checkMounts(o.mounts),
    env: checkEnv('env', o.env),
    readonlyRootfs: checkBool('readonlyRootfs', o.readonlyRootfs),
    persistent: checkBool('persistent', o.persistent),
    seccomp,
    capabilities: resolveCapabilities('capabilities', o.capabilities),
  };
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
  tty?: boolean;
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
  if (o.tty !== undefined) {
    if (o.tty !== false) throw invalid('tty', 'false (terminals are not supported yet)', o.tty);
    r.tty = false;
  }
  return r;
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

/**
 * `Limits` (API.md) validated and resolved to numbers, once, before anything is created.
 * The cgroup part goes to a CgroupDriver (lib/cgroup/), the rlimit part to init, the rest
 * (timeout, output cap, disk) to the TypeScript side and the scratch tmpfs.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { HutchError, invalid, describe } from './errors.js';
import {
  type ByteSize,
  parseByteSize,
  parseCount,
  parseDurationMs,
  parsePositive,
} from './units.js';

export type { ByteSize, Rate } from './units.js';
import { plainObject, rejectUnknownKeys } from './validators.js';
/** Moved to lib/validators.ts; re-exported while other modules and tests still import them from here. */
export { plainObject, rejectUnknownKeys, suggest } from './validators.js';
import { CPU_PERIOD_US, type CgroupLimits } from './cgroup/types.js';
export { CPU_PERIOD_US, type CgroupLimits } from './cgroup/types.js';

export type { Limits } from './limit-types.js';
import type { Limits } from './limit-types.js';

/** `limits.pids` when not given: a fork bomb stops at 1024 tasks (API.md's default for untrusted code). */
export const DEFAULT_PIDS = 1024;
/** `limits.output` when not given: 16 MiB captured per exec, then the process is killed (`'output-limit'`). */
export const DEFAULT_OUTPUT_BYTES = 16 * 1024 * 1024;

/** One setrlimit() for init to apply per process. */
export interface RlimitSetting {
  /** The Limits field it came from (for messages). */
  name: 'nofile' | 'nproc' | 'fileSize' | 'stack' | 'cpuTimeMs';
  /** RLIMIT_* number on Linux. */
  resource: number;
  soft: number;
  hard: number;
}

export interface ResolvedLimits {
  cgroup: CgroupLimits;
  /** In a fixed order: nofile, nproc, fileSize, stack, cpuTimeMs (only those given). */
  rlimits: RlimitSetting[];
  /** Wall clock per exec, ms; null: none. */
  timeoutMs: number | null;
  /** Cap on captured stdout+stderr per exec, bytes ({@link DEFAULT_OUTPUT_BYTES} unless given); null: none. */
  outputBytes: number | null;
  /** Size of the scratch tmpfs / disk quota, bytes; null: none. */
  diskBytes: number | null;
}

/** RLIMIT_* numbers on Linux (asm-generic/resource.h; the same on x86, arm, riscv, ppc, s390). */
export const RLIMIT = { CPU: 0, FSIZE: 1, DATA: 2, STACK: 3, CORE: 4, RSS: 5, NPROC: 6, NOFILE: 7 } as const;

/** The kernel refuses a CFS quota under 1 ms. */
const MIN_CPU_QUOTA_US = 1000;
/** The sandbox's init and a shell need some memory; below this nothing can start. */
export const MIN_MEMORY_BYTES = 1024 * 1024;
/** PID_MAX_LIMIT on 64-bit kernels. */
const MAX_PIDS = 4_194_304;

const LIMIT_KEYS = [
  'memory',
  'memorySwap',
  'memoryAccounting',
  'cpus',
  'cpuset',
  'pids',
  'disk',
  'io',
  'nofile',
  'nproc',
  'fileSize',
  'stack',
  'cpuTimeMs',
  'timeoutMs',
  'output',
] as const;
const IO_KEYS = ['readBps', 'writeBps', 'readIops', 'writeIops'] as const;

/** Parses a CPU list ('0-3,8,10-11') into sorted unique CPU numbers; undefined when malformed. */
export function parseCpuList(text: string): number[] | undefined {
  const t = text.trim();
  if (t === '') return [];
  const out = new Set<number>();
  for (const part of t.split(',')) {
    const m = /^\s*(\d+)(?:\s*-\s*(\d+))?\s*$/.exec(part);
    if (!m) return undefined;
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (hi < lo || hi > 65535) return undefined;
    for (let c = lo; c <= hi; c++) out.add(c);
  }
  return [...out].sort((a, b) => a - b);
}

/** Formats sorted CPU numbers as the kernel's list format ('0-2,5'). */
export function formatCpuList(cpus: number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < cpus.length; ) {
    let j = i;
    while (j + 1 < cpus.length && cpus[j + 1] === cpus[j]! + 1) j++;
    parts.push(i === j ? `${cpus[i]}` : `${cpus[i]}-${cpus[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}

/** CPUs online now (/sys/devices/system/cpu/online). */
export function onlineCpus(): number[] {
  try {
    const list = parseCpuList(readFileSync('/sys/devices/system/cpu/online', 'utf8'));
    if (list && list.length > 0) return list;
  } catch {
    // Fall through: a /sys without it (odd containers) still has the count from the OS.
  }
  return Array.from({ length: Math.max(1, availableParallelism()) }, (_, i) => i);
}

/** Hard limits of this process by resource name in /proc/self/limits ('Max open files' ...); Infinity = unlimited. */
function hardLimits(): Map<string, number> {
  const out = new Map<string, number>();
  let text = '';
  try {
    text = readFileSync('/proc/self/limits', 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('\n').slice(1)) {
    const m = /^(.+?)\s{2,}(\S+)\s+(\S+)/.exec(line);
    if (!m) continue;
    out.set(m[1]!.trim(), m[3] === 'unlimited' ? Infinity : Number(m[3]));
  }
  return out;
}

const RLIMIT_SPECS = [
  { name: 'nofile', resource: RLIMIT.NOFILE, proc: 'Max open files', unit: 'files', kind: 'count', min: 1 },
  { name: 'nproc', resource: RLIMIT.NPROC, proc: 'Max processes', unit: 'processes', kind: 'count', min: 1 },
  { name: 'fileSize', resource: RLIMIT.FSIZE, proc: 'Max file size', unit: 'bytes', kind: 'size', min: 0 },
  { name: 'stack', resource: RLIMIT.STACK, proc: 'Max stack size', unit: 'bytes', kind: 'size', min: 16 * 1024 },
  { name: 'cpuTimeMs', resource: RLIMIT.CPU, proc: 'Max cpu time', unit: 'seconds', kind: 'ms', min: 1 },
] as const;

function resolveRlimits(field: string, l: Limits): RlimitSetting[] {
  const out: RlimitSetting[] = [];
  let hard: Map<string, number> | undefined;
  for (const spec of RLIMIT_SPECS) {
    const raw = l[spec.name];
    if (raw === undefined) continue;
    const f = `${field}.${spec.name}`;
    let value: number;
    if (spec.kind === 'count') value = parseCount(f, raw, spec.min);
    else if (spec.kind === 'size') value = parseByteSize(f, raw, { min: spec.min });
    else value = Math.ceil(parseDurationMs(f, raw) / 1000);
    // Raising a hard limit needs CAP_SYS_RESOURCE in the initial user namespace, which
    // the sandbox's root never has: init's setrlimit would fail with EPERM at exec time.
    hard ??= hardLimits();
    const max = hard.get(spec.proc);
    if (max !== undefined && value > max) {
      const shown = spec.kind === 'ms' ? `${max * 1000} ms (${max} s)` : `${max} ${spec.unit}`;
      throw new HutchError(
        'EINVAL',
        `invalid option ${f}: ${describe(raw)} is above this process's hard limit (${spec.proc}); the maximum is ${shown}. ` +
          'Raising it needs CAP_SYS_RESOURCE: raise the hard limit of the Node process (ulimit -H, systemd LimitNOFILE=...) instead',
      );
    }
    out.push({ name: spec.name, resource: spec.resource, soft: value, hard: value });
  }
  return out;
}

/** `limits.memoryAccounting`: 'sandbox' when a memory limit is set, else 'shared', unless given. */
function resolveMemoryAccounting(field: string, value: unknown, limited: boolean): CgroupLimits['memoryAccounting'] {
  const f = `${field}.memoryAccounting`;
  if (value === undefined) return limited ? 'sandbox' : 'shared';
  if (value !== 'sandbox' && value !== 'shared') throw invalid(f, "'sandbox' (a memory cgroup of the sandbox's own) or 'shared' (one hutch shares among sandboxes)", value);
  if (value === 'shared' && limited) {
    throw new HutchError(
      'EINVAL',
      `invalid option ${f}: 'shared' cannot go with ${field}.memory or ${field}.memorySwap: a memory limit needs a memory cgroup of the sandbox's own. ` +
        `Leave ${f} unset (or 'sandbox') to keep the limit, or drop the limit to share`,
    );
  }
  return value;
}

function resolveCgroup(field: string, l: Limits): CgroupLimits {
  const memoryBytes = l.memory === undefined ? null : parseByteSize(`${field}.memory`, l.memory, { min: MIN_MEMORY_BYTES });
  const swapExplicit = l.memorySwap !== undefined;
  const swapBytes = swapExplicit ? parseByteSize(`${field}.memorySwap`, l.memorySwap, { min: 0 }) : 0;
  const memoryAccounting = resolveMemoryAccounting(field, l.memoryAccounting, memoryBytes !== null || swapExplicit);

  let cpuQuotaUs: number | null = null;
  let cpuPeriodUs: number | null = null;
  const online = l.cpus !== undefined || l.cpuset !== undefined ? onlineCpus() : [];
  if (l.cpus !== undefined) {
    const cpus = parsePositive(`${field}.cpus`, l.cpus, MIN_CPU_QUOTA_US / CPU_PERIOD_US, online.length, 'a number of CPUs (0.5 = half a core)');
    cpuPeriodUs = CPU_PERIOD_US;
    cpuQuotaUs = Math.max(MIN_CPU_QUOTA_US, Math.round(cpus * CPU_PERIOD_US));
  }

  let cpuset: string | null = null;
  if (l.cpuset !== undefined) {
    const f = `${field}.cpuset`;
    const forms = `a CPU list such as '0', '0-1' or '0,2-3' of online CPUs (${formatCpuList(online)})`;
    if (typeof l.cpuset !== 'string') throw invalid(f, forms, l.cpuset);
    const list = parseCpuList(l.cpuset);
    if (!list || list.length === 0) throw invalid(f, forms, l.cpuset);
    const offline = list.filter((c) => !online.includes(c));
    if (offline.length > 0) throw invalid(f, `${forms}; CPU ${formatCpuList(offline)} is not online`, l.cpuset);
    cpuset = formatCpuList(list);
  }

  const pidsExplicit = l.pids !== undefined;
  const pids = pidsExplicit ? parseCount(`${field}.pids`, l.pids, 1, MAX_PIDS) : DEFAULT_PIDS;

  let io: CgroupLimits['io'] = null;
  if (l.io !== undefined) {
    const f = `${field}.io`;
    const o = plainObject(f, l.io, `an object with readBps, writeBps (sizes per second), readIops, writeIops (counts)`);
    rejectUnknownKeys(f, o, IO_KEYS);
    io = {
      readBps: o.readBps === undefined ? null : parseByteSize(`${f}.readBps`, o.readBps),
      writeBps: o.writeBps === undefined ? null : parseByteSize(`${f}.writeBps`, o.writeBps),
      readIops: o.readIops === undefined ? null : parseCount(`${f}.readIops`, o.readIops),
      writeIops: o.writeIops === undefined ? null : parseCount(`${f}.writeIops`, o.writeIops),
    };
    if (Object.values(io).every((v) => v === null)) io = null;
  }

  return { memoryBytes, swapBytes, swapExplicit, memoryAccounting, cpuQuotaUs, cpuPeriodUs, cpuset, pids, pidsExplicit, io };
}

/**
 * Validates `limits` and resolves every field to numbers. Unknown keys are rejected with
 * the likely intended name. Nothing on the host is changed.
 *
 * @param field the option's name in messages (`limits`, `options.limits`).
 * @throws HutchError EINVAL naming the field and the accepted forms.
 */
export function resolveLimits(limits: Limits | undefined, field = 'limits'): ResolvedLimits {
  const l = limits === undefined ? {} : (plainObject(field, limits, 'an object of limits (see Limits)') as Limits);
  rejectUnknownKeys(field, l, LIMIT_KEYS);
  // An explicit `undefined` is the same as absent, as with every other option.
  return {
    cgroup: resolveCgroup(field, l),
    rlimits: resolveRlimits(field, l),
    timeoutMs: l.timeoutMs === undefined ? null : parseDurationMs(`${field}.timeoutMs`, l.timeoutMs),
    outputBytes: l.output === undefined ? DEFAULT_OUTPUT_BYTES : parseByteSize(`${field}.output`, l.output),
    diskBytes: l.disk === undefined ? null : parseByteSize(`${field}.disk`, l.disk, { min: MIN_MEMORY_BYTES }),
  };
}

/**
 * Without a cgroup (lib/cgroup/none.ts) the default `pids` cannot be enforced: a sandbox that
 * set neither `pids` nor `nproc` gets an nproc rlimit of DEFAULT_PIDS instead. The kernel counts
 * RLIMIT_NPROC per user namespace and uid, so per sandbox, and it stops a fork bomb the same
 * way (fork fails with EAGAIN). An explicit `pids` stays the driver's to refuse.
 */
export function withoutCgroupDefaults(l: ResolvedLimits): ResolvedLimits {
  if (l.cgroup.pidsExplicit || l.rlimits.some((r) => r.name === 'nproc')) return { ...l, cgroup: { ...l.cgroup, pids: l.cgroup.pidsExplicit ? l.cgroup.pids : null } };
  const hard = hardLimits().get('Max processes');
  const n = hard === undefined ? DEFAULT_PIDS : Math.min(DEFAULT_PIDS, hard);
  const nproc: RlimitSetting = { name: 'nproc', resource: RLIMIT.NPROC, soft: n, hard: n };
  // The fixed order of ResolvedLimits.rlimits: nofile first, then nproc.
  const rlimits = [...l.rlimits.filter((r) => r.name === 'nofile'), nproc, ...l.rlimits.filter((r) => r.name !== 'nofile')];
  return { ...l, cgroup: { ...l.cgroup, pids: null }, rlimits };
}

/** What governs one exec: the sandbox's timeoutMs/output unless the exec gives its own. */
export interface ExecLimits {
  timeoutMs: number | null;
  outputBytes: number | null;
}

/**
 * Per-exec `timeoutMs` and `output` override the sandbox's (API.md ExecOptions).
 *
 * @param field the options' name in messages (`options` for exec(cmd, options)).
 * @throws HutchError EINVAL naming `${field}.timeoutMs` or `${field}.output`.
 */
export function mergeExecLimits(
  sandbox: Pick<ResolvedLimits, 'timeoutMs' | 'outputBytes'>,
  exec: { timeoutMs?: number | undefined; output?: ByteSize | undefined } = {},
  field = 'options',
): ExecLimits {
  return {
    timeoutMs: exec.timeoutMs === undefined ? sandbox.timeoutMs : parseDurationMs(`${field}.timeoutMs`, exec.timeoutMs),
    outputBytes: exec.output === undefined ? sandbox.outputBytes : parseByteSize(`${field}.output`, exec.output),
  };
}

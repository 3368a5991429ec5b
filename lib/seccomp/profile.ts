import { constants as osConstants } from 'node:os';
import { invalid } from '../errors.js';
import { SYSCALLS_AARCH64, SYSCALLS_X86_64, SYSCALL_NAMES_ANY_ARCH } from './syscalls.generated.js';
import { CAPABILITIES as CAPABILITY_NAMES } from '../capabilities.js';

// The seccomp profile: the OCI runtime-spec `linux.seccomp` shape plus the extensions of
// Docker's profile format that decide which rules apply (`archMap`, `includes`/`excludes`
// by capability, architecture and kernel version). Validation turns the JSON into a
// `CheckedProfile` once; `resolveProfile` then picks the rules for one architecture,
// capability set and kernel and turns names into numbers and actions into SECCOMP_RET_*.

/** Architectures hutch compiles seccomp programs for. */
export type SeccompArch = 'x86_64' | 'aarch64';

/**
 * What the filter does with a call (libseccomp / OCI names): `SCMP_ACT_ALLOW` runs it;
 * `SCMP_ACT_ERRNO` fails it with `errnoRet` (default EPERM); `SCMP_ACT_KILL` /
 * `SCMP_ACT_KILL_THREAD` kill the thread, `SCMP_ACT_KILL_PROCESS` the process;
 * `SCMP_ACT_TRAP` sends SIGSYS; `SCMP_ACT_TRACE` notifies a ptrace tracer (fails with
 * ENOSYS without one); `SCMP_ACT_LOG` allows and logs. `SCMP_ACT_NOTIFY` is refused
 * (`EINVAL`): hutch runs no seccomp agent.
 *
 * @example
 * ```ts
 * const deny: SeccompAction = 'SCMP_ACT_ERRNO';
 * const profile: SeccompProfile = { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['ptrace'], action: deny }] };
 * ```
 */
export type SeccompAction =
  | 'SCMP_ACT_KILL'
  | 'SCMP_ACT_KILL_PROCESS'
  | 'SCMP_ACT_KILL_THREAD'
  | 'SCMP_ACT_TRAP'
  | 'SCMP_ACT_ERRNO'
  | 'SCMP_ACT_TRACE'
  | 'SCMP_ACT_ALLOW'
  | 'SCMP_ACT_LOG'
  | 'SCMP_ACT_NOTIFY';

/**
 * How an argument is compared with {@link SeccompArg.value}: not equal, less than, less or
 * equal, equal, greater or equal, greater than (unsigned 64-bit), or masked equal
 * (`(arg & value) === (valueTwo & value)`, as libseccomp compares).
 *
 * @example
 * ```ts
 * // personality(0xffffffff) only: a query, not a change
 * const arg: SeccompArg = { index: 0, op: 'SCMP_CMP_EQ', value: 0xffffffff };
 * ```
 */
export type SeccompOperator =
  | 'SCMP_CMP_NE'
  | 'SCMP_CMP_LT'
  | 'SCMP_CMP_LE'
  | 'SCMP_CMP_EQ'
  | 'SCMP_CMP_GE'
  | 'SCMP_CMP_GT'
  | 'SCMP_CMP_MASKED_EQ';

/**
 * A 64-bit unsigned argument value. JSON numbers are exact only up to 2^53, so larger values
 * are given as a bigint or a decimal or `0x` hex string.
 *
 * @example
 * ```ts
 * const values: SeccompValue[] = [2, 0xffffffffffffffffn, '0xffffffffffffffff', '18446744073709551615'];
 * ```
 */
export type SeccompValue = number | bigint | string;

/**
 * A condition on one argument of a call, in a {@link SeccompSyscallRule}.
 *
 * @example
 * ```ts
 * // clone without CLONE_NEWUSER (0x10000000)
 * const arg: SeccompArg = { index: 0, op: 'SCMP_CMP_MASKED_EQ', value: 0x10000000, valueTwo: 0 };
 * ```
 */
export interface SeccompArg {
  /** Argument number, 0..5. */
  index: number;
  /** Compared against; for SCMP_CMP_MASKED_EQ, the mask. */
  value: SeccompValue;
  /**
   * For SCMP_CMP_MASKED_EQ only: what `arg & value` must equal (default 0). Only its bits
   * inside the mask count, as in libseccomp: `(arg & value) === (valueTwo & value)`.
   */
  valueTwo?: SeccompValue;
  /** How the argument is compared. */
  op: SeccompOperator;
}

/**
 * Docker's conditions on a rule ({@link SeccompSyscallRule.includes} and `excludes`).
 *
 * @example
 * ```ts
 * const rule: SeccompSyscallRule = {
 *   names: ['bpf'], action: 'SCMP_ACT_ALLOW',
 *   includes: { caps: ['SYS_ADMIN'], minKernel: '5.8' },
 *   excludes: { arches: ['s390x'] },
 * };
 * ```
 */
export interface SeccompFilter {
  /** Capabilities, `CAP_SYS_ADMIN` or `SYS_ADMIN`. includes: all held; excludes: any held. */
  caps?: string[];
  /** Docker's architecture names: `amd64`, `arm64`, `x86`, `x32`, `arm`, `s390x`, ... */
  arches?: string[];
  /**
   * `"<kernel>.<major>"`, e.g. `"4.8"`: includes: host kernel at least this; excludes: below it.
   * `""` means 0.0, as in Docker: always reached.
   */
  minKernel?: string;
}

/**
 * One rule of a {@link SeccompProfile}: what to do with some calls, optionally only for
 * some arguments, capabilities, architectures or kernels. Several rules for one call combine
 * as Docker (runc + libseccomp) combines them: a rule whose action is the default action is
 * dropped; the first rule without conditions decides the call alone; otherwise, when several
 * conditional rules match, the most restrictive action wins (KILL_PROCESS, KILL_THREAD, TRAP,
 * ERRNO, TRACE, LOG, ALLOW; between equals, the earlier rule). docs/seccomp.md.
 *
 * @example
 * ```ts
 * const rules: SeccompSyscallRule[] = [
 *   { names: ['mount', 'umount2'], action: 'SCMP_ACT_ERRNO', errnoRet: 1, comment: 'no mounts' },
 *   { names: ['chroot'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['SYS_CHROOT'] } },
 * ];
 * ```
 */
export interface SeccompSyscallRule {
  /**
   * Call names, e.g. `['mount', 'umount2']`. A name no Linux architecture defines is
   * `EINVAL`; one this architecture lacks is skipped.
   */
  names?: string[];
  /** Docker's older single-name form; use `names`. */
  name?: string;
  /** What to do with a matching call. */
  action: SeccompAction;
  /** errno for SCMP_ACT_ERRNO (default EPERM) or the tracer's data for SCMP_ACT_TRACE. */
  errnoRet?: number;
  /**
   * podman's (containers-common) name for the errno, e.g. `"EPERM"` or `"1"`. Docker ignores
   * it and reads `errnoRet`; hutch accepts it when both engines would use the same errno, and
   * refuses it (`EINVAL`) when they would not.
   */
  errno?: string;
  /** All must hold (AND); several rules for one syscall are alternatives (OR). */
  args?: SeccompArg[];
  /** Free text, ignored. */
  comment?: string;
  /** The rule applies only when all of these hold (Docker's extension). */
  includes?: SeccompFilter;
  /** The rule does not apply when any of these holds (Docker's extension). */
  excludes?: SeccompFilter;
}

/**
 * A seccomp profile: the OCI runtime-spec `linux.seccomp` object with Docker's extensions,
 * so Docker's and runc's profile JSON files load as they are ({@link SandboxOptions.seccomp}).
 * It is checked whole before anything is created; a wrong field rejects with `EINVAL`
 * naming it (e.g. `seccomp.syscalls[3].args[0].op`). docs/seccomp.md.
 *
 * @example
 * ```ts
 * import { readFileSync } from 'node:fs';
 * const fromDocker: SeccompProfile = JSON.parse(readFileSync('profile.json', 'utf8'));
 * const noNetwork: SeccompProfile = {
 *   defaultAction: 'SCMP_ACT_ALLOW',
 *   syscalls: [{ names: ['socket'], action: 'SCMP_ACT_ERRNO', args: [{ index: 0, op: 'SCMP_CMP_NE', value: 1 }] }],
 * };
 * await Sandbox.run({ command: ['ls'], seccomp: noNetwork });
 * ```
 */
export interface SeccompProfile {
  /** What happens to a call no rule matches. */
  defaultAction: SeccompAction;
  /** errno of a defaultAction SCMP_ACT_ERRNO (default EPERM). */
  defaultErrnoRet?: number;
  /** podman's name for defaultErrnoRet, e.g. `"ENOSYS"`; as {@link SeccompSyscallRule.errno}. */
  defaultErrno?: string;
  /** `SCMP_ARCH_*` names. hutch filters the native architecture only; see docs/seccomp.md. */
  architectures?: string[];
  /** Docker's form of `architectures`. */
  archMap?: {
    /** A `SCMP_ARCH_*` name. */
    architecture: string;
    /** Further `SCMP_ARCH_*` names filtered along with it. */
    subArchitectures?: string[] | null;
  }[];
  /** `SECCOMP_FILTER_FLAG_*` names, passed to seccomp(2) by init. */
  flags?: string[];
  /** The rules; see {@link SeccompSyscallRule} for how several matching ones combine. */
  syscalls?: SeccompSyscallRule[];
  /** Free text, ignored. */
  comment?: string;
}

/** SECCOMP_RET_* values (linux/seccomp.h). */
export const SECCOMP_RET = {
  KILL_PROCESS: 0x80000000,
  KILL_THREAD: 0x00000000,
  TRAP: 0x00030000,
  ERRNO: 0x00050000,
  TRACE: 0x7ff00000,
  LOG: 0x7ffc0000,
  ALLOW: 0x7fff0000,
} as const;

/** SECCOMP_FILTER_FLAG_* values that hutch passes through to seccomp(2). */
export const SECCOMP_FILTER_FLAGS: Readonly<Record<string, number>> = {
  SECCOMP_FILTER_FLAG_TSYNC: 1,
  SECCOMP_FILTER_FLAG_LOG: 2,
  SECCOMP_FILTER_FLAG_SPEC_ALLOW: 4,
  SECCOMP_FILTER_FLAG_TSYNC_ESRCH: 16,
};

export const EPERM = 1;
export const ENOSYS = 38;
/** The kernel clamps a filter's errno to MAX_ERRNO. */
const MAX_ERRNO = 4095;

export const AUDIT_ARCH: Readonly<Record<SeccompArch, number>> = {
  x86_64: 0xc000003e,
  aarch64: 0xc00000b7,
};

/** Each arch's name in Docker's `includes.arches` (Go's GOARCH spelling) and in `architectures`. */
const DOCKER_ARCH: Readonly<Record<SeccompArch, string>> = { x86_64: 'amd64', aarch64: 'arm64' };
const SCMP_ARCH: Readonly<Record<SeccompArch, string>> = { x86_64: 'SCMP_ARCH_X86_64', aarch64: 'SCMP_ARCH_AARCH64' };

const DOCKER_ARCH_NAMES = new Set([
  'x86', 'amd64', 'x32', 'arm', 'arm64', 'loong64', 'loongarch64', 'mips', 'mipsle', 'mipsel', 'mips64',
  'mips64n32', 'mipsel64', 'mipsel64n32', 'mips3l64n32', 'ppc', 'ppc64', 'ppc64le', 'riscv64', 's390', 's390x',
]);
const SCMP_ARCH_NAMES = new Set([
  'SCMP_ARCH_NATIVE', 'SCMP_ARCH_X86', 'SCMP_ARCH_X86_64', 'SCMP_ARCH_X32', 'SCMP_ARCH_ARM', 'SCMP_ARCH_AARCH64',
  'SCMP_ARCH_LOONGARCH64', 'SCMP_ARCH_M68K', 'SCMP_ARCH_MIPS', 'SCMP_ARCH_MIPS64', 'SCMP_ARCH_MIPS64N32',
  'SCMP_ARCH_MIPSEL', 'SCMP_ARCH_MIPSEL64', 'SCMP_ARCH_MIPSEL64N32', 'SCMP_ARCH_PPC', 'SCMP_ARCH_PPC64',
  'SCMP_ARCH_PPC64LE', 'SCMP_ARCH_S390', 'SCMP_ARCH_S390X', 'SCMP_ARCH_PARISC', 'SCMP_ARCH_PARISC64',
  'SCMP_ARCH_RISCV64', 'SCMP_ARCH_SH', 'SCMP_ARCH_SHEB',
]);

/** Capability names without `CAP_` (linux/capability.h): one list, in lib/capabilities.ts. */
export const CAPABILITIES: ReadonlySet<string> = new Set(CAPABILITY_NAMES);

const OPERATORS = new Set<string>([
  'SCMP_CMP_NE', 'SCMP_CMP_LT', 'SCMP_CMP_LE', 'SCMP_CMP_EQ', 'SCMP_CMP_GE', 'SCMP_CMP_GT', 'SCMP_CMP_MASKED_EQ',
]);
const ACTIONS = new Set<string>([
  'SCMP_ACT_KILL', 'SCMP_ACT_KILL_PROCESS', 'SCMP_ACT_KILL_THREAD', 'SCMP_ACT_TRAP', 'SCMP_ACT_ERRNO',
  'SCMP_ACT_TRACE', 'SCMP_ACT_ALLOW', 'SCMP_ACT_LOG', 'SCMP_ACT_NOTIFY',
]);

export function syscallTable(arch: SeccompArch): Readonly<Record<string, number>> {
  return arch === 'x86_64' ? SYSCALLS_X86_64 : SYSCALLS_AARCH64;
}

// ---- checked form ----

export interface CheckedArg {
  index: number;
  op: SeccompOperator;
  value: bigint;
  valueTwo: bigint;
}

export interface CheckedFilter {
  caps: string[];
  arches: string[];
  minKernel?: [number, number];
}

export interface CheckedRule {
  /** Position in the profile's `syscalls`, for messages and tie-breaking. */
  index: number;
  names: string[];
  /** SECCOMP_RET_* value, data included. */
  action: number;
  args: CheckedArg[];
  includes?: CheckedFilter;
  excludes?: CheckedFilter;
}

export interface CheckedProfile {
  defaultAction: number;
  /** True when defaultAction is SCMP_ACT_ERRNO with ENOSYS, or a permissive action. */
  defaultIsPermissiveOrEnosys: boolean;
  flags: number;
  rules: CheckedRule[];
}

const TOP_KEYS = new Set([
  'defaultAction', 'defaultErrnoRet', 'defaultErrno', 'architectures', 'archMap', 'flags', 'syscalls', 'comment',
  'listenerPath', 'listenerMetadata',
]);
const RULE_KEYS = new Set(['names', 'name', 'action', 'errnoRet', 'errno', 'args', 'comment', 'includes', 'excludes']);
const ARG_KEYS = new Set(['index', 'value', 'valueTwo', 'op']);
const FILTER_KEYS = new Set(['caps', 'arches', 'minKernel', 'comment']);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkKeys(obj: Record<string, unknown>, allowed: Set<string>, where: string): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.has(k)) {
      throw invalid(`${where}.${k}`, `one of the fields ${[...allowed].join(', ')} (unknown field)`);
    }
  }
}

function stringArray(v: unknown, where: string): string[] {
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw invalid(where, 'an array of strings', v);
  return v as string[];
}

const U64_MAX = (1n << 64n) - 1n;

/** A u64 from a JSON number, bigint, or decimal/hex string. */
export function parseU64(v: unknown, where: string): bigint {
  let n: bigint | undefined;
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) {
      throw invalid(where, 'an integer below 2^53 (give larger values as a bigint or a string)', v);
    }
    n = BigInt(v);
  } else if (typeof v === 'bigint') {
    n = v;
  } else if (typeof v === 'string' && /^(0x[0-9a-fA-F]+|\d+)$/.test(v)) {
    n = BigInt(v);
  }
  if (n === undefined || n < 0n || n > U64_MAX) throw invalid(where, 'an unsigned 64-bit integer', v);
  return n;
}

function errnoValue(v: unknown, max: number, where: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) {
    throw invalid(where, `an integer 0..${max}`, v);
  }
  return v;
}

/** podman's errno field (containers-common getErrno): a decimal number or a Linux errno name. */
function errnoByName(v: unknown, where: string): number {
  if (typeof v === 'string' && /^\d+$/.test(v) && Number(v) <= MAX_ERRNO) return Number(v);
  const n = typeof v === 'string' && /^E[A-Z0-9]+$/.test(v) ? (osConstants.errno as Record<string, number | undefined>)[v] : undefined;
  if (n === undefined) throw invalid(where, 'an errno name such as "EPERM" or a number 0..4095', v);
  return n;
}

/** SECCOMP_RET_* for an action, with its errno or trace data. */
function actionValue(action: unknown, errnoRet: unknown, where: string, errnoField: string, podmanErrno: unknown, podmanField: string): number {
  if (typeof action !== 'string' || !ACTIONS.has(action)) {
    throw invalid(`${where}`, `one of ${[...ACTIONS].filter((a) => a !== 'SCMP_ACT_NOTIFY').join(', ')}`, action);
  }
  if (errnoRet !== undefined && action !== 'SCMP_ACT_ERRNO' && action !== 'SCMP_ACT_TRACE') {
    throw invalid(errnoField, `no value: it applies only to SCMP_ACT_ERRNO and SCMP_ACT_TRACE, not ${action}`, errnoRet);
  }
  if (podmanErrno !== undefined && podmanErrno !== '') {
    if (action !== 'SCMP_ACT_ERRNO' && action !== 'SCMP_ACT_TRACE') {
      throw invalid(podmanField, `no value: it applies only to SCMP_ACT_ERRNO and SCMP_ACT_TRACE, not ${action}`, podmanErrno);
    }
    const named = errnoByName(podmanErrno, podmanField);
    const docker = errnoRet === undefined ? EPERM : errnoValue(errnoRet, 0xffff, errnoField);
    if (named !== docker) {
      const ret = errnoField.slice(errnoField.lastIndexOf('.') + 1);
      const absent = errnoRet === undefined ? ', EPERM as it is absent' : '';
      throw invalid(
        podmanField,
        `the errno ${ret} gives (${docker}${absent}): Docker reads only ${ret} and podman prefers this field, so give both the same errno`,
        podmanErrno,
      );
    }
  }
  switch (action as SeccompAction) {
    case 'SCMP_ACT_KILL':
    case 'SCMP_ACT_KILL_THREAD':
      return SECCOMP_RET.KILL_THREAD;
    case 'SCMP_ACT_KILL_PROCESS':
      return SECCOMP_RET.KILL_PROCESS;
    case 'SCMP_ACT_TRAP':
      return SECCOMP_RET.TRAP;
    case 'SCMP_ACT_ERRNO':
      return (SECCOMP_RET.ERRNO | (errnoRet === undefined ? EPERM : errnoValue(errnoRet, MAX_ERRNO, errnoField))) >>> 0;
    case 'SCMP_ACT_TRACE':
      // As runc: the tracer's data is errnoRet, EPERM when not given.
      return (SECCOMP_RET.TRACE | (errnoRet === undefined ? EPERM : errnoValue(errnoRet, 0xffff, errnoField))) >>> 0;
    case 'SCMP_ACT_ALLOW':
      return SECCOMP_RET.ALLOW;
    case 'SCMP_ACT_LOG':
      return SECCOMP_RET.LOG;
    case 'SCMP_ACT_NOTIFY':
      throw invalid(where, 'an action other than SCMP_ACT_NOTIFY (hutch runs no seccomp agent to answer notifications)', action);
  }
}

function checkFilter(v: unknown, where: string): CheckedFilter {
  if (!isObject(v)) throw invalid(where, 'an object with caps, arches or minKernel', v);
  checkKeys(v, FILTER_KEYS, where);
  const out: CheckedFilter = { caps: [], arches: [] };
  if (v.caps !== undefined) {
    out.caps = stringArray(v.caps, `${where}.caps`).map((c, i) => normalizeCapability(c, `${where}.caps[${i}]`));
  }
  if (v.arches !== undefined) {
    out.arches = stringArray(v.arches, `${where}.arches`);
    out.arches.forEach((a, i) => {
      if (!DOCKER_ARCH_NAMES.has(a)) {
        const hint = a === 'x86_64' ? " (Docker's name for x86_64 is 'amd64')" : a === 'aarch64' ? " (Docker's name for aarch64 is 'arm64')" : '';
        throw invalid(`${where}.arches[${i}]`, `a Docker architecture name such as amd64, arm64, x86, x32, arm${hint}`, a);
      }
    });
  }
  // As moby reads it: null is no condition; "" is version 0.0, which every kernel reaches
  // (an `excludes` with it always drops its rule); "0.0" written out, or a part past 255, is
  // refused there too.
  if (v.minKernel === '') {
    out.minKernel = [0, 0];
  } else if (v.minKernel !== undefined && v.minKernel !== null) {
    const m = typeof v.minKernel === 'string' ? /^(\d+)\.(\d+)$/.exec(v.minKernel) : null;
    const kernel = m ? [Number(m[1]), Number(m[2])] : [];
    if (!m || kernel.some((n) => n > 255) || (kernel[0] === 0 && kernel[1] === 0)) {
      throw invalid(`${where}.minKernel`, 'a kernel version "<kernel>.<major>" such as "4.8" (each part 0..255, not "0.0")', v.minKernel);
    }
    out.minKernel = [kernel[0]!, kernel[1]!];
  }
  return out;
}

/** `CAP_SYS_ADMIN` or `sys_admin` -> `SYS_ADMIN`; EINVAL for a name that is no capability. */
export function normalizeCapability(name: string, where: string): string {
  const n = name.toUpperCase().replace(/^CAP_/, '');
  if (!CAPABILITIES.has(n)) throw invalid(where, 'a capability name such as CAP_SYS_ADMIN or SYS_ADMIN', name);
  return n;
}

function checkArg(v: unknown, where: string): CheckedArg {
  if (!isObject(v)) throw invalid(where, 'an object {index, value, op}', v);
  checkKeys(v, ARG_KEYS, where);
  if (typeof v.index !== 'number' || !Number.isInteger(v.index) || v.index < 0 || v.index > 5) {
    throw invalid(`${where}.index`, 'an argument number 0..5', v.index);
  }
  if (typeof v.op !== 'string' || !OPERATORS.has(v.op)) {
    throw invalid(`${where}.op`, `one of ${[...OPERATORS].join(', ')}`, v.op);
  }
  const value = parseU64(v.value, `${where}.value`);
  let valueTwo = v.valueTwo === undefined ? 0n : parseU64(v.valueTwo, `${where}.valueTwo`);
  if (valueTwo !== 0n && v.op !== 'SCMP_CMP_MASKED_EQ') {
    throw invalid(`${where}.valueTwo`, `0 or nothing: only SCMP_CMP_MASKED_EQ takes a second value, not ${v.op}`, v.valueTwo);
  }
  // libseccomp masks the datum too ((arg & mask) == (datum & mask)): bits of valueTwo outside
  // the mask are ignored, so a mask of 0 holds for every argument (generated allowlists use
  // it to say "any value").
  if (v.op === 'SCMP_CMP_MASKED_EQ') valueTwo &= value;
  return { index: v.index, op: v.op as SeccompOperator, value, valueTwo };
}

function checkRule(v: unknown, index: number, option: string): CheckedRule {
  const where = `${option}.syscalls[${index}]`;
  if (!isObject(v)) throw invalid(where, 'an object {names, action, ...}', v);
  checkKeys(v, RULE_KEYS, where);
  if (v.name !== undefined && v.names !== undefined) {
    throw invalid(where, "either 'names' or 'name', not both");
  }
  let names: string[];
  if (v.name !== undefined) {
    if (typeof v.name !== 'string') throw invalid(`${where}.name`, 'a syscall name', v.name);
    names = [v.name];
  } else {
    names = stringArray(v.names, `${where}.names`);
  }
  if (names.length === 0) throw invalid(`${where}.names`, 'at least one syscall name', v.names);
  names.forEach((n, i) => {
    if (!SYSCALL_NAMES_ANY_ARCH.has(n)) {
      throw invalid(`${where}.names[${i}]`, 'a syscall name that some Linux architecture defines', n);
    }
  });
  const action = actionValue(v.action, v.errnoRet, `${where}.action`, `${where}.errnoRet`, v.errno, `${where}.errno`);
  let args: CheckedArg[] = [];
  if (v.args !== undefined && v.args !== null) {
    if (!Array.isArray(v.args)) throw invalid(`${where}.args`, 'an array of {index, value, op}', v.args);
    // A mask of 0 holds for every value: libseccomp emits no test for it, and neither does hutch.
    args = v.args.map((a, i) => checkArg(a, `${where}.args[${i}]`)).filter((a) => !(a.op === 'SCMP_CMP_MASKED_EQ' && a.value === 0n));
  }
  const rule: CheckedRule = { index, names, action, args };
  if (v.includes !== undefined && v.includes !== null) rule.includes = checkFilter(v.includes, `${where}.includes`);
  if (v.excludes !== undefined && v.excludes !== null) rule.excludes = checkFilter(v.excludes, `${where}.excludes`);
  return rule;
}

/**
 * Checks a profile's shape and every value in it; throws `EINVAL` naming the field (e.g.
 * `seccomp.syscalls[3].args[0].op`) and what was expected.
 */
export function checkProfile(v: unknown, option = 'seccomp'): CheckedProfile {
  if (!isObject(v)) throw invalid(option, "'default', 'unconfined' or a seccomp profile object", v);
  checkKeys(v, TOP_KEYS, option);
  if (v.listenerPath !== undefined || v.listenerMetadata !== undefined) {
    throw invalid(`${option}.listenerPath`, 'nothing: hutch runs no seccomp agent (SCMP_ACT_NOTIFY is unsupported)');
  }
  if (v.defaultAction === undefined) throw invalid(`${option}.defaultAction`, 'an action such as SCMP_ACT_ERRNO');
  const defaultAction = actionValue(
    v.defaultAction, v.defaultErrnoRet, `${option}.defaultAction`, `${option}.defaultErrnoRet`, v.defaultErrno, `${option}.defaultErrno`,
  );
  if (v.architectures !== undefined && v.architectures !== null && v.archMap !== undefined && v.archMap !== null) {
    throw invalid(option, "either 'architectures' or 'archMap', not both");
  }
  if (v.architectures !== undefined && v.architectures !== null) {
    stringArray(v.architectures, `${option}.architectures`).forEach((a, i) => {
      if (!SCMP_ARCH_NAMES.has(a)) throw invalid(`${option}.architectures[${i}]`, 'an SCMP_ARCH_* name', a);
    });
  }
  if (v.archMap !== undefined && v.archMap !== null) {
    if (!Array.isArray(v.archMap)) throw invalid(`${option}.archMap`, 'an array of {architecture, subArchitectures}', v.archMap);
    v.archMap.forEach((e: unknown, i) => {
      const where = `${option}.archMap[${i}]`;
      if (!isObject(e)) throw invalid(where, 'an object {architecture, subArchitectures}', e);
      checkKeys(e, new Set(['architecture', 'subArchitectures']), where);
      const arches = [e.architecture, ...(e.subArchitectures == null ? [] : stringArray(e.subArchitectures, `${where}.subArchitectures`))];
      for (const a of arches) if (typeof a !== 'string' || !SCMP_ARCH_NAMES.has(a)) throw invalid(where, 'SCMP_ARCH_* names', a);
    });
  }
  let flags = 0;
  if (v.flags !== undefined && v.flags !== null) {
    stringArray(v.flags, `${option}.flags`).forEach((f, i) => {
      const bit = SECCOMP_FILTER_FLAGS[f];
      if (bit === undefined) throw invalid(`${option}.flags[${i}]`, `one of ${Object.keys(SECCOMP_FILTER_FLAGS).join(', ')}`, f);
      flags |= bit;
    });
  }
  let rules: CheckedRule[] = [];
  if (v.syscalls !== undefined && v.syscalls !== null) {
    if (!Array.isArray(v.syscalls)) throw invalid(`${option}.syscalls`, 'an array of rules', v.syscalls);
    rules = v.syscalls.map((r, i) => checkRule(r, i, option));
  }
  const kind = actionKind(defaultAction);
  const permissive = kind === SECCOMP_RET.ALLOW || kind === SECCOMP_RET.LOG || kind === SECCOMP_RET.TRACE;
  return { defaultAction, defaultIsPermissiveOrEnosys: permissive || defaultAction === (SECCOMP_RET.ERRNO | ENOSYS), flags, rules };
}

/** The action without its data. */
export function actionKind(ret: number): number {
  return (ret & 0xffff0000) >>> 0;
}

/**
 * Lower is stricter: when several rules match one call, the strictest action wins, in the
 * kernel's order for stacked filters (KILL_PROCESS, KILL_THREAD, TRAP, ERRNO, TRACE, LOG, ALLOW).
 */
export function actionPrecedence(ret: number): number {
  return actionKind(ret) | 0;
}

export { SCMP_ARCH, DOCKER_ARCH };

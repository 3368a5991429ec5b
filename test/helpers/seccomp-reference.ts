/**
 * Shared by the seccomp compiler tests: constants, a call builder, and `reference`, a direct
 * evaluation of a profile with Docker's semantics (moby's rule selection, runc's dropping of
 * rules that repeat the default action, libseccomp's masked comparison, runc's ENOSYS stub),
 * written independently of lib/seccomp/.
 */
import type { SeccompArch, SeccompArg, SeccompProfile, SeccompSyscallRule } from '../../lib/seccomp/index.js';
import { SYSCALLS_AARCH64, SYSCALLS_X86_64 } from '../../lib/seccomp/syscalls.generated.js';
import type { SeccompData } from './bpf-interp.js';

export const AUDIT_ARCH = { x86_64: 0xc000003e, aarch64: 0xc00000b7, i386: 0x40000003, arm: 0x40000028 } as const;
export const RET = {
  KILL_PROCESS: 0x80000000,
  KILL_THREAD: 0,
  TRAP: 0x00030000,
  ERRNO: 0x00050000,
  TRACE: 0x7ff00000,
  LOG: 0x7ffc0000,
  ALLOW: 0x7fff0000,
};
export const EPERM = (RET.ERRNO | 1) >>> 0;
export const ENOSYS = (RET.ERRNO | 38) >>> 0;
export const ARCHES: SeccompArch[] = ['x86_64', 'aarch64'];
export const TABLE = { x86_64: SYSCALLS_X86_64, aarch64: SYSCALLS_AARCH64 };
/** API.md's default capability set. */
export const DEFAULT_CAPS = ['CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'FSETID', 'KILL', 'NET_BIND_SERVICE', 'SETFCAP', 'SETGID', 'SETPCAP', 'SETUID', 'SYS_CHROOT'];

export function call(arch: SeccompArch, name: string, args: (bigint | number)[] = []): SeccompData {
  const nr = TABLE[arch][name];
  if (nr === undefined) throw new Error(`${name} is not a syscall on ${arch}`);
  return { nr, arch: AUDIT_ARCH[arch], args: args.map(BigInt) };
}

export function hex(n: number): string {
  return `0x${(n >>> 0).toString(16)}`;
}


export const DOCKER_ARCH = { x86_64: 'amd64', aarch64: 'arm64' };

export function actionOf(action: string, errnoRet: number | undefined): number {
  switch (action) {
    case 'SCMP_ACT_KILL':
    case 'SCMP_ACT_KILL_THREAD':
      return RET.KILL_THREAD;
    case 'SCMP_ACT_KILL_PROCESS':
      return RET.KILL_PROCESS;
    case 'SCMP_ACT_TRAP':
      return RET.TRAP;
    case 'SCMP_ACT_ERRNO':
      return (RET.ERRNO + (errnoRet ?? 1)) >>> 0;
    case 'SCMP_ACT_TRACE':
      return (RET.TRACE + (errnoRet ?? 1)) >>> 0;
    case 'SCMP_ACT_LOG':
      return RET.LOG;
    case 'SCMP_ACT_ALLOW':
      return RET.ALLOW;
  }
  throw new Error(action);
}

export function holds(a: SeccompArg, x: bigint): boolean {
  const v = BigInt(a.value);
  switch (a.op) {
    case 'SCMP_CMP_EQ': return x === v;
    case 'SCMP_CMP_NE': return x !== v;
    case 'SCMP_CMP_LT': return x < v;
    case 'SCMP_CMP_LE': return x <= v;
    case 'SCMP_CMP_GT': return x > v;
    case 'SCMP_CMP_GE': return x >= v;
    // libseccomp masks the datum as well as the argument
    case 'SCMP_CMP_MASKED_EQ': return (x & v) === (BigInt(a.valueTwo ?? 0) & v);
  }
}

export function reference(profile: SeccompProfile, arch: SeccompArch, capList: string[], kernel: [number, number]): (d: SeccompData) => number {
  const table = TABLE[arch];
  const caps = new Set(capList.map((c) => c.replace(/^CAP_/, '')));
  const has = (c: string): boolean => caps.has(c.replace(/^CAP_/, ''));
  const atLeast = (v: string): boolean => {
    if (v === '') return true; // moby: version 0.0
    const [a, b] = v.split('.').map(Number) as [number, number];
    return kernel[0] > a || (kernel[0] === a && kernel[1] >= b);
  };
  const applies = (r: SeccompSyscallRule): boolean => {
    const ex = r.excludes;
    if (ex?.arches?.includes(DOCKER_ARCH[arch])) return false;
    if (ex?.caps?.some(has)) return false;
    if (ex?.minKernel != null && atLeast(ex.minKernel)) return false;
    const inc = r.includes;
    if (inc?.arches?.length && !inc.arches.includes(DOCKER_ARCH[arch])) return false;
    if (inc?.caps && !inc.caps.every(has)) return false;
    if (inc?.minKernel != null && !atLeast(inc.minKernel)) return false;
    return true;
  };
  const rules = (profile.syscalls ?? []).map((r, i) => ({ r, i })).filter(({ r }) => applies(r));
  const names = (r: SeccompSyscallRule): string[] => r.names ?? (r.name ? [r.name] : []);
  const dflt = actionOf(profile.defaultAction, profile.defaultErrnoRet);
  let highest = -1;
  for (const { r } of rules) for (const n of names(r)) if (table[n] !== undefined) highest = Math.max(highest, table[n]!);
  const kind = (dflt & 0xffff0000) >>> 0;
  const enosys = !(kind === RET.ALLOW || kind === RET.LOG || kind === RET.TRACE || dflt === ENOSYS) && highest > 0;
  // runc skips a rule whose action is the default action (libseccomp would refuse it)
  const kept = rules.filter(({ r }) => actionOf(r.action, r.errnoRet) !== dflt);
  return (d) => {
    if (d.arch >>> 0 !== AUDIT_ARCH[arch]) return RET.KILL_PROCESS;
    const nr = d.nr >>> 0;
    if (nr === 0xffffffff) return RET.ALLOW;
    if (arch === 'x86_64' && (nr & 0x40000000) !== 0) return RET.KILL_PROCESS;
    if (enosys && nr > highest) return ENOSYS; // 0x80000000.. too: runc's stub catches them
    const args = d.args ?? [];
    const matching = kept.filter(
      ({ r }) => names(r).some((n) => table[n] === nr) && (r.args ?? []).every((a) => holds(a, BigInt.asUintN(64, args[a.index] ?? 0n))),
    );
    // libseccomp: the first rule without conditions decides its syscall alone
    const plain = kept.find(({ r }) => names(r).some((n) => table[n] === nr) && (r.args ?? []).every((a) => a.op === 'SCMP_CMP_MASKED_EQ' && BigInt(a.value) === 0n));
    if (plain) return actionOf(plain.r.action, plain.r.errnoRet);
    if (matching.length === 0) return dflt;
    const ranked = matching.map(({ r, i }) => ({ ret: actionOf(r.action, r.errnoRet), i }));
    ranked.sort((a, b) => ((a.ret & 0xffff0000) | 0) - ((b.ret & 0xffff0000) | 0) || a.i - b.i);
    return ranked[0]!.ret;
  };
}


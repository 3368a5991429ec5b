/**
 * A model of what Docker does with a seccomp profile JSON, for comparing hutch's compiled
 * program with it call by call. Written from the behaviour of moby (profiles/seccomp,
 * setupSeccomp), runc (libcontainer/seccomp InitSeccomp/matchCall, patchbpf's ENOSYS stub)
 * and libseccomp (seccomp_rule_add(3), db.c), not from hutch's code:
 *
 * 1. moby keeps a rule when its `excludes` and `includes` allow it: arches in Go's names
 *    (amd64, arm64) against the host's; caps compared verbatim with the bounding set, which
 *    holds `CAP_`-prefixed names; minKernel absent or null is no condition, `""` is 0.0
 *    (every kernel), anything else `"<kernel>.<major>"` compared with the host's.
 * 2. runc turns each (rule, name) into a libseccomp rule: the action with errnoRet (EPERM when
 *    absent, for ERRNO and TRACE); a rule whose action equals the default action is skipped
 *    (libseccomp refuses it); a name the arch lacks is skipped; a rule with two conditions on
 *    one argument becomes one rule per condition. podman's `errno` fields are not read.
 * 3. libseccomp: rules of one action are a union; the first unconditional rule for a syscall
 *    discards every other rule for it, added before or after, whatever its action (db.c,
 *    db_rule_add); a mask of 0 is no condition (db.c skips it); MASKED_EQ is
 *    `(arg & mask) == (datum & mask)`, the other comparisons unsigned 64-bit. Where conditional
 *    rules with different actions both match a call, libseccomp's answer comes from its tree
 *    merge (or it refuses the filter), which no document fixes: the model throws.
 * 4. runc's ENOSYS stub: unless the default action is ALLOW, LOG or TRACE, a number above the
 *    largest one that a kept rule (step 1) names answers ENOSYS; on x86_64 numbers with bit 30
 *    set skip the stub.
 * Only the native architecture is modelled, and not x32 numbers (bit 30) or -1, which hutch
 * decides differently on purpose (docs/seccomp.md).
 */
import type { SeccompArch, SeccompArg } from '../../lib/seccomp/index.js';
import type { SeccompData } from './bpf-interp.js';
// libseccomp's comparisons, masked datum included, are the reference's.
import { DOCKER_ARCH, holds, RET, TABLE } from './seccomp-reference.js';

type JsonArg = SeccompArg;
interface JsonFilter {
  caps?: string[];
  arches?: string[];
  minKernel?: string | null;
}
interface JsonRule {
  names?: string[];
  name?: string;
  action: string;
  errnoRet?: number;
  args?: JsonArg[] | null;
  includes?: JsonFilter | null;
  excludes?: JsonFilter | null;
}
export interface JsonProfile {
  defaultAction: string;
  defaultErrnoRet?: number;
  syscalls?: JsonRule[] | null;
}

function retOf(action: string, errnoRet: number | undefined): number {
  switch (action) {
    case 'SCMP_ACT_KILL':
    case 'SCMP_ACT_KILL_THREAD': return RET.KILL_THREAD;
    case 'SCMP_ACT_KILL_PROCESS': return RET.KILL_PROCESS;
    case 'SCMP_ACT_TRAP': return RET.TRAP;
    case 'SCMP_ACT_ERRNO': return (RET.ERRNO | (errnoRet ?? 1)) >>> 0;
    case 'SCMP_ACT_TRACE': return (RET.TRACE | (errnoRet ?? 1)) >>> 0;
    case 'SCMP_ACT_LOG': return RET.LOG;
    case 'SCMP_ACT_ALLOW': return RET.ALLOW;
  }
  throw new Error(`runc refuses action ${action}`);
}

function kernelAtLeast(kernel: [number, number], min: string): boolean {
  if (min === '') return true;
  const [a, b] = min.split('.').map(Number) as [number, number];
  return kernel[0] > a || (kernel[0] === a && kernel[1] >= b);
}

/** Step 1, moby's setupSeccomp. `bounding`: capability names as in the OCI spec, `CAP_CHOWN`. */
function mobyKeeps(r: JsonRule, arch: SeccompArch, bounding: readonly string[], kernel: [number, number]): boolean {
  const ex = r.excludes;
  if (ex) {
    if (ex.arches?.includes(DOCKER_ARCH[arch])) return false;
    if (ex.caps?.some((c) => bounding.includes(c))) return false;
    if (ex.minKernel != null && kernelAtLeast(kernel, ex.minKernel)) return false;
  }
  const inc = r.includes;
  if (inc) {
    if (inc.arches?.length && !inc.arches.includes(DOCKER_ARCH[arch])) return false;
    if (inc.caps?.length && !inc.caps.every((c) => bounding.includes(c))) return false;
    if (inc.minKernel != null && !kernelAtLeast(kernel, inc.minKernel)) return false;
  }
  return true;
}

interface LibseccompRule {
  ret: number;
  conds: JsonArg[];
}

/**
 * What a container that Docker starts with this profile gets for a call on `arch`, with the
 * given bounding set (`CAP_` names) and kernel. Throws where libseccomp's answer is not fixed.
 */
export function dockerDecides(
  profile: JsonProfile,
  arch: SeccompArch,
  bounding: readonly string[],
  kernel: [number, number],
): (d: SeccompData) => number {
  const table = TABLE[arch];
  const dflt = retOf(profile.defaultAction, profile.defaultErrnoRet);
  const kept = (profile.syscalls ?? []).filter((r) => mobyKeeps(r, arch, bounding, kernel));
  const bySyscall = new Map<number, LibseccompRule[]>();
  let largest = 0;
  for (const r of kept) {
    const ret = retOf(r.action, r.errnoRet);
    const args = (r.args ?? []).filter((a) => !(a.op === 'SCMP_CMP_MASKED_EQ' && BigInt(a.value) === 0n));
    const sameArg = new Set(args.map((a) => a.index)).size !== args.length;
    for (const name of r.names ?? (r.name ? [r.name] : [])) {
      const nr = table[name];
      if (nr === undefined) continue;
      largest = Math.max(largest, nr);
      if (ret === dflt) continue;
      const list = bySyscall.get(nr) ?? [];
      bySyscall.set(nr, list);
      if (sameArg) for (const a of args) list.push({ ret, conds: [a] });
      else list.push({ ret, conds: args });
    }
  }
  const kind = (dflt & 0xffff0000) >>> 0;
  const stub = !(kind === RET.ALLOW || kind === RET.LOG || kind === RET.TRACE) && largest > 0;
  return (d) => {
    const nr = d.nr >>> 0;
    if (arch === 'x86_64' && (nr & 0x40000000) !== 0) throw new Error(`x32 number ${nr} is outside the model`);
    if (stub && nr > largest) return (RET.ERRNO | 38) >>> 0;
    const rules = bySyscall.get(nr) ?? [];
    const unconditional = rules.find((r) => r.conds.length === 0);
    if (unconditional) return unconditional.ret;
    const args = d.args ?? [];
    const hits = [...new Set(rules.filter((r) => r.conds.every((a) => holds(a, BigInt.asUintN(64, args[a.index] ?? 0n)))).map((r) => r.ret))];
    if (hits.length > 1) throw new Error(`syscall ${nr}: conditional rules with different actions match one call`);
    return hits[0] ?? dflt;
  };
}

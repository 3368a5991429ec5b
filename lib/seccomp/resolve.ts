import { kernelFeatures } from '../host/features.js';
import { invalid } from '../errors.js';
import {
  actionPrecedence,
  DOCKER_ARCH,
  syscallTable,
  type CheckedArg,
  type CheckedProfile,
  type CheckedRule,
  type SeccompArch,
} from './profile.js';

// Resolution of a checked profile for one architecture, capability set and kernel, as Docker
// (moby profiles/seccomp) and runc decide which rules reach libseccomp: rules whose conditions
// do not hold are dropped, names turn into this architecture's numbers, and actions into
// SECCOMP_RET_* values.

export interface ResolvedRule {
  index: number;
  action: number;
  args: CheckedArg[];
}

export interface ResolvedFilter {
  arch: SeccompArch;
  defaultAction: number;
  /** Rules per syscall number, strictest action first, then profile order. */
  bySyscall: Map<number, ResolvedRule[]>;
  /**
   * Numbers above this get ERRNO(ENOSYS), as runc does: a syscall newer than any the profile
   * names is one its author could not have known, and ENOSYS lets libc fall back (as for
   * clone3) where EPERM would be taken as a refusal. Undefined when not applied.
   */
  enosysAbove?: number;
}

export interface ResolveOptions {
  arch: SeccompArch;
  /** Capabilities the process holds, without `CAP_`. */
  capabilities: readonly string[];
  /** Kernel release such as `6.8.0-45-generic` for `minKernel`; default: this host's. */
  kernelRelease?: string;
}

/** `6.8.0-45-generic` -> [6, 8] (Docker ignores what follows the major revision). */
export function parseKernelRelease(rel: string): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(rel);
  if (!m) throw invalid('kernelRelease', 'a kernel release such as "6.8.0"', rel);
  return [Number(m[1]), Number(m[2])];
}

function kernelAtLeast(kernel: [number, number], min: [number, number]): boolean {
  return kernel[0] > min[0] || (kernel[0] === min[0] && kernel[1] >= min[1]);
}

/**
 * Whether a rule applies, with Docker's semantics for includes (all must hold) and excludes
 * (any excludes). A `minKernel` of `""` is version 0.0, which every kernel reaches (moby reads
 * it so): it keeps an `includes` and drops an `excludes`.
 */
export function ruleApplies(rule: CheckedRule, arch: SeccompArch, caps: ReadonlySet<string>, kernel: [number, number]): boolean {
  const dockerArch = DOCKER_ARCH[arch];
  const ex = rule.excludes;
  if (ex) {
    if (ex.arches.includes(dockerArch)) return false;
    if (ex.caps.some((c) => caps.has(c))) return false;
    if (ex.minKernel && kernelAtLeast(kernel, ex.minKernel)) return false;
  }
  const inc = rule.includes;
  if (inc) {
    if (inc.arches.length > 0 && !inc.arches.includes(dockerArch)) return false;
    if (!inc.caps.every((c) => caps.has(c))) return false;
    if (inc.minKernel && !kernelAtLeast(kernel, inc.minKernel)) return false;
  }
  return true;
}

/**
 * The rules that apply for one arch, capability set and kernel, by syscall number. Names that
 * this arch lacks (e.g. `chown32` on x86_64) are skipped, as Docker does. Where a syscall has a
 * rule without conditions, the first one decides it alone, as in libseccomp. A rule whose action
 * (errno included) is the default action is dropped, as runc does before libseccomp (which
 * refuses such a rule): it cannot refuse a call that another rule allows. It still counts for
 * the newest named syscall, as in runc's ENOSYS stub, which reads the whole list.
 */
export function resolveProfile(profile: CheckedProfile, opts: ResolveOptions): ResolvedFilter {
  const table = syscallTable(opts.arch);
  const caps = new Set(opts.capabilities);
  const kernel = parseKernelRelease(opts.kernelRelease ?? kernelFeatures().kernelRelease);
  const bySyscall = new Map<number, ResolvedRule[]>();
  let highest = -1;
  for (const rule of profile.rules) {
    if (!ruleApplies(rule, opts.arch, caps, kernel)) continue;
    for (const name of new Set(rule.names)) {
      const nr = table[name];
      if (nr === undefined) continue;
      highest = Math.max(highest, nr);
      if (rule.action === profile.defaultAction) continue;
      let list = bySyscall.get(nr);
      if (!list) bySyscall.set(nr, (list = []));
      list.push({ index: rule.index, action: rule.action, args: rule.args });
    }
  }
  for (const [nr, list] of bySyscall) {
    // libseccomp (db.c, db_rule_add): a rule without conditions replaces every conditional
    // rule for its syscall, before or after it, and the first such rule stays.
    const unconditional = list.find((r) => r.args.length === 0);
    if (unconditional) bySyscall.set(nr, [unconditional]);
    else list.sort((a, b) => actionPrecedence(a.action) - actionPrecedence(b.action) || a.index - b.index);
  }
  const filter: ResolvedFilter = { arch: opts.arch, defaultAction: profile.defaultAction, bySyscall };
  // runc adds no stub when the largest named number is 0 (x86_64 read alone).
  if (!profile.defaultIsPermissiveOrEnosys && highest > 0) filter.enosysAbove = highest;
  return filter;
}

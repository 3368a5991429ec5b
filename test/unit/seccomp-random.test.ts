// Random profiles compiled and run in a classic-BPF interpreter, against `reference`, a direct
// evaluation of the profile written independently of the compiler (helpers/seccomp-reference.ts).
import { describe, it } from 'vitest';
import fc from 'fast-check';
import { compileSeccomp, type SeccompArch, type SeccompArg, type SeccompProfile, type SeccompSyscallRule } from '../../lib/seccomp/index.js';
import { runFilter, type SeccompData } from '../helpers/bpf-interp.js';
import { AUDIT_ARCH, TABLE, hex, reference } from '../helpers/seccomp-reference.js';
import { dockerDecides, type JsonProfile } from '../helpers/runc-seccomp.js';

const HI = 0x1_0000_0000n;

// ---- random profiles against the reference ----

const NAME_POOL = ['read', 'write', 'openat', 'open', 'close', 'mmap', 'clone', 'clone3', 'socket', 'personality', 'kill',
  'ioctl', 'prctl', 'futex', 'arch_prctl', 'chown32', 'getpid', 'exit_group', 'renameat', 'mount', 'ptrace', 'io_uring_setup',
  'rseq_slice_yield', 'fchmodat2', 'mseal', 'listns', 'dup2', 'epoll_wait', 'execve', 'setxattrat'];
const VALUE_POOL = [0n, 1n, 2n, 38n, 0xffffffffn, HI, HI + 1n, 5n * HI + 38n, 1n << 63n, (1n << 64n) - 1n, 0x7e020000n];
const CAP_POOL = ['SYS_ADMIN', 'CHOWN', 'NET_RAW'];

const arbValue = fc.oneof(fc.constantFrom(...VALUE_POOL), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }));
const arbArg: fc.Arbitrary<SeccompArg> = fc
  .record({
    index: fc.integer({ min: 0, max: 5 }),
    op: fc.constantFrom<SeccompArg['op']>('SCMP_CMP_NE', 'SCMP_CMP_LT', 'SCMP_CMP_LE', 'SCMP_CMP_EQ', 'SCMP_CMP_GE', 'SCMP_CMP_GT', 'SCMP_CMP_MASKED_EQ'),
    value: arbValue,
    valueTwo: arbValue,
  })
  .map((a) =>
    a.op !== 'SCMP_CMP_MASKED_EQ'
      ? { index: a.index, op: a.op, value: a.value }
      : // Mostly a datum inside the mask; sometimes one with bits outside it (which do not count).
        { ...a, valueTwo: a.valueTwo % 4n === 0n ? a.valueTwo : a.valueTwo & a.value },
  );
const arbAction = fc.oneof(
  fc.constantFrom<Pick<SeccompSyscallRule, 'action' | 'errnoRet'>>(
    { action: 'SCMP_ACT_ALLOW' }, { action: 'SCMP_ACT_ALLOW' }, { action: 'SCMP_ACT_KILL' }, { action: 'SCMP_ACT_KILL_PROCESS' },
    { action: 'SCMP_ACT_TRAP' }, { action: 'SCMP_ACT_LOG' }, { action: 'SCMP_ACT_ERRNO' },
  ),
  fc.record({ action: fc.constantFrom<SeccompSyscallRule['action']>('SCMP_ACT_ERRNO', 'SCMP_ACT_TRACE'), errnoRet: fc.integer({ min: 0, max: 4095 }) }),
);
const arbFilter = fc.record(
  { caps: fc.subarray(CAP_POOL, { maxLength: 2 }), arches: fc.subarray(['amd64', 'arm64', 'x86'], { maxLength: 2 }), minKernel: fc.constantFrom('4.8', '6.9', '9.0', '') },
  { requiredKeys: [] },
);
const arbRule: fc.Arbitrary<SeccompSyscallRule> = fc
  .record({
    names: fc.subarray(NAME_POOL, { minLength: 1, maxLength: 3 }),
    act: arbAction,
    args: fc.array(arbArg, { maxLength: 3 }),
    includes: fc.option(arbFilter, { nil: undefined, freq: 4 }),
    excludes: fc.option(arbFilter, { nil: undefined, freq: 4 }),
  })
  .map(({ act, includes, excludes, ...r }) => {
    const rule: SeccompSyscallRule = { ...r, ...act };
    if (includes) rule.includes = includes;
    if (excludes) rule.excludes = excludes;
    return rule;
  });
const arbProfile: fc.Arbitrary<SeccompProfile> = fc.record({
  def: arbAction,
  syscalls: fc.array(arbRule, { maxLength: 14 }),
}).map(({ def, syscalls }) => {
  const p: SeccompProfile = { defaultAction: def.action, syscalls };
  if (def.errnoRet !== undefined) p.defaultErrnoRet = def.errnoRet;
  return p;
});

describe('random profiles', () => {
  it('decide as the reference evaluation of the profile does', () => {
    fc.assert(
      fc.property(
        arbProfile,
        fc.constantFrom<SeccompArch>('x86_64', 'aarch64'),
        fc.subarray(CAP_POOL),
        fc.constantFrom<[number, number]>([5, 10], [6, 12]),
        fc.array(
          fc.record({
            name: fc.oneof(fc.constantFrom(...NAME_POOL), fc.integer({ min: 0, max: 600 }), fc.constantFrom(0x40000005, -1, 0x7fffffff)),
            args: fc.array(arbValue, { minLength: 6, maxLength: 6 }),
            // Most calls aim at one rule: its syscall, its values nudged by -1, 0 or +1 (or, for
            // a mask, the datum with other bits flipped), so the boundaries of every op are hit.
            aim: fc.option(fc.record({ rule: fc.nat(), name: fc.nat(), nudge: fc.array(fc.constantFrom(-1n, 0n, 0n, 1n), { minLength: 3, maxLength: 3 }), noise: arbValue }), { freq: 3 }),
            foreign: fc.integer({ min: 0, max: 19 }).map((n) => n === 0),
          }),
          { minLength: 1, maxLength: 25 },
        ),
        (profile, arch, caps, kernel, calls) => {
          const prog = compileSeccomp(profile, { arch, capabilities: caps, kernelRelease: kernel.join('.') })!;
          const ref = reference(profile, arch, caps, kernel);
          // The same profile as Docker reads it (capabilities spelt CAP_X, as moby compares
          // them verbatim), where the model of moby + runc + libseccomp gives one answer.
          const spelt = (f?: SeccompSyscallRule['includes']): typeof f => f && { ...f, ...(f.caps ? { caps: f.caps.map((c) => `CAP_${c}`) } : {}) };
          const forDocker = { ...profile, syscalls: profile.syscalls?.map((r) => ({ ...r, includes: spelt(r.includes), excludes: spelt(r.excludes) })) };
          const docker = dockerDecides(forDocker as JsonProfile, arch, caps.map((c) => `CAP_${c}`), kernel);
          const twiceOnOneArg = (nr: number): boolean =>
            (profile.syscalls ?? []).some((r) => r.names!.some((n) => TABLE[arch][n] === nr) && new Set((r.args ?? []).map((a) => a.index)).size !== (r.args ?? []).length);
          for (const c of calls) {
            let nr = typeof c.name === 'number' ? c.name : TABLE[arch][c.name] ?? 7;
            const args = [...c.args];
            const rules = profile.syscalls ?? [];
            if (c.aim && rules.length > 0) {
              const r = rules[c.aim.rule % rules.length]!;
              nr = TABLE[arch][r.names![c.aim.name % r.names!.length]!] ?? nr;
              (r.args ?? []).forEach((a, i) => {
                const v = BigInt(a.value);
                args[a.index] =
                  a.op === 'SCMP_CMP_MASKED_EQ'
                    ? BigInt(a.valueTwo ?? 0) | (c.aim!.nudge[i] === 0n ? 0n : c.aim!.noise & ~v)
                    : v + c.aim!.nudge[i]!;
              });
            }
            const d: SeccompData = { nr, arch: c.foreign ? AUDIT_ARCH.i386 : AUDIT_ARCH[arch], args: args.map((v) => BigInt.asUintN(64, v)) };
            const got = runFilter(prog, d);
            const want = ref(d);
            if (got !== want) throw new Error(`nr ${nr} args ${d.args!.join(',')}: program ${hex(got)}, reference ${hex(want)}`);
            // Docker's reading, outside the differences docs/seccomp.md lists (x32, -1, foreign
            // arches, two conditions on one argument, overlapping actions libseccomp merges).
            const n = nr >>> 0;
            if (c.foreign || n === 0xffffffff || (arch === 'x86_64' && (n & 0x40000000) !== 0) || twiceOnOneArg(n)) continue;
            let byDocker: number | undefined;
            try {
              byDocker = docker(d);
            } catch (e) {
              if (!String(e).includes('different actions')) throw e;
            }
            if (byDocker !== undefined && got !== byDocker) throw new Error(`nr ${nr} args ${d.args!.join(',')}: program ${hex(got)}, Docker ${hex(byDocker)}`);
          }
        },
      ),
      { numRuns: 400 },
    );
  });
});


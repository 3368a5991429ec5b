// hutch reads a seccomp profile JSON as Docker does: compiled programs, run in the classic-BPF
// interpreter, against a model of moby + runc + libseccomp (helpers/runc-seccomp.ts) on real
// profiles (Docker's default, podman's containers-common, hutch's own exported default) and on
// the cases where hutch used to differ. No kernel needed; seccomp-kernel.test.ts runs the
// same decisions on the real kernel.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { compileSeccomp, DEFAULT_SECCOMP_PROFILE, validateSeccompOption, type SeccompArch, type SeccompProfile } from '../../lib/seccomp/index.js';
import { HutchError } from '../../lib/errors.js';
import { decode, runFilter, type SeccompData } from '../helpers/bpf-interp.js';
import { dockerDecides, type JsonProfile } from '../helpers/runc-seccomp.js';
import { ARCHES, AUDIT_ARCH, call, DEFAULT_CAPS, ENOSYS, EPERM, hex, RET, TABLE } from '../helpers/seccomp-reference.js';

const fixture = (name: string): SeccompProfile => JSON.parse(readFileSync(new URL(`../fixtures/seccomp/${name}`, import.meta.url), 'utf8')) as SeccompProfile;
const MOBY = fixture('moby-default.json');
const PODMAN = fixture('containers-common.json');
/** hutch's default as Docker receives it: the exported object written out as JSON. */
const HUTCH = JSON.parse(JSON.stringify(DEFAULT_SECCOMP_PROFILE)) as SeccompProfile;

const CAP_SETS: string[][] = [
  [],
  DEFAULT_CAPS,
  ['SYS_ADMIN'],
  ['SYS_ADMIN', 'BPF', 'PERFMON', 'SYS_PTRACE', 'SYS_TIME', 'SYS_NICE', 'DAC_READ_SEARCH', 'SYS_BOOT', 'SYS_MODULE', 'SYS_PACCT',
    'SYS_RAWIO', 'SYS_TTY_CONFIG', 'SYSLOG', 'SYS_CHROOT', 'AUDIT_WRITE'],
];
const KERNELS: [number, number][] = [[6, 18], [4, 4]];
const HI = 1n << 32n;
/** Argument values around every comparison the real profiles make. */
const VALUES = [
  0n, 1n, 2n, 8n, 9n, 10n, 16n, 17n, 31n, 32n, 37n, 38n, 39n, 40n, 41n, 45n, 63n, 64n, 0x20000n, 0x20008n, 0xffffffffn,
  0x10000000n, 0x7e020000n, HI, HI | 38n, HI | 40n, (0xdeadn << 32n) | 2n, (1n << 64n) - 1n,
];

function numbers(arch: SeccompArch): number[] {
  const named = Object.values(TABLE[arch]);
  const max = Math.max(...named);
  const out = new Set<number>();
  for (let nr = 0; nr <= max + 3; nr++) out.add(nr);
  for (const nr of [1000, 0x3fffffff, 0x80000000, 0x80000000 + 59, 0xbfffffff]) out.add(nr);
  if (arch === 'aarch64') for (const nr of [0x40000000, 0xc0000000, 0xfffffffe]) out.add(nr);
  return [...out];
}

/**
 * Every call of the grid decided by hutch's program and by the Docker model; returns the
 * disagreements (at most 10), as `arch caps nr args: hutch, docker`.
 */
function compare(profile: SeccompProfile, arches: readonly SeccompArch[] = ARCHES): string[] {
  const out: string[] = [];
  for (const arch of arches) {
    for (const caps of CAP_SETS) {
      for (const kernel of KERNELS) {
        const prog = decode(compileSeccomp(profile, { arch, capabilities: caps, kernelRelease: `${kernel.join('.')}.0` })!);
        const docker = dockerDecides(profile as JsonProfile, arch, caps.map((c) => `CAP_${c}`), kernel);
        for (const nr of numbers(arch)) {
          // Most calls: one value in every argument; calls with argument rules: each value in
          // arg 0 against a few in arg 2 (podman's socket rules compare both).
          const grids: bigint[][] = VALUES.map((v) => [v, v, v, v, v, v]);
          if ([TABLE[arch].socket, TABLE[arch].clone, TABLE[arch].personality].includes(nr)) {
            for (const a of VALUES) for (const c of [0n, 9n, HI | 9n]) grids.push([a, 1n, c, 0n, 0n, 0n]);
          }
          for (const args of grids) {
            const d: SeccompData = { nr, arch: AUDIT_ARCH[arch], args };
            const got = runFilter(prog, d);
            const want = docker(d);
            if (got !== want && out.length < 10) out.push(`${arch} [${caps.join(',')}] ${kernel.join('.')} nr ${nr} args ${args[0]},${args[2]}: hutch ${hex(got)}, docker ${hex(want)}`);
          }
        }
      }
    }
  }
  return out;
}

describe('real profiles decide as Docker + runc + libseccomp decide them', () => {
  it("hutch's exported default, handed to Docker as JSON", () => {
    expect(compare(HUTCH)).toEqual([]);
  });

  it("and it refuses socket(AF_ALG) and socket(AF_VSOCK) in Docker's reading as in hutch's, whatever the high word", () => {
    for (const arch of ARCHES) {
      const docker = dockerDecides(HUTCH as JsonProfile, arch, DEFAULT_CAPS.map((c) => `CAP_${c}`), [6, 18]);
      const prog = compileSeccomp(HUTCH, { arch, capabilities: DEFAULT_CAPS })!;
      for (const family of [38n, 40n, HI | 38n, (0xdeadn << 32n) | 40n]) {
        expect([family, hex(docker(call(arch, 'socket', [family, 1, 0])))]).toEqual([family, hex(EPERM)]);
        expect([family, hex(runFilter(prog, call(arch, 'socket', [family, 1, 0])))]).toEqual([family, hex(EPERM)]);
      }
      for (const family of [1n, 2n, 10n, 16n, 17n, 37n, 39n, 41n, 64n, 0xffffffffn, (1n << 64n) - 1n]) {
        expect([family, hex(docker(call(arch, 'socket', [family, 1, 0])))]).toEqual([family, hex(RET.ALLOW)]);
      }
    }
  });

  it("hutch's default decides as Docker's default, but for AF_ALG/AF_VSOCK with a dirty high word, which it refuses", () => {
    const diffs = new Set<string>();
    for (const arch of ARCHES) {
      for (const caps of CAP_SETS) {
        const bounding = caps.map((c) => `CAP_${c}`);
        const ours = dockerDecides(HUTCH as JsonProfile, arch, bounding, [6, 18]);
        const docker = dockerDecides(MOBY as JsonProfile, arch, bounding, [6, 18]);
        for (const nr of numbers(arch)) {
          for (const v of VALUES) {
            const d: SeccompData = { nr, arch: AUDIT_ARCH[arch], args: [v, v, v, v, v, v] };
            if (ours(d) !== docker(d)) diffs.add(`${nr === TABLE[arch].socket ? 'socket' : nr} ${v}: ${hex(ours(d))} vs ${hex(docker(d))}`);
          }
        }
      }
    }
    expect([...diffs].sort()).toEqual([`socket ${HI | 38n}: ${hex(EPERM)} vs ${hex(RET.ALLOW)}`, `socket ${HI | 40n}: ${hex(EPERM)} vs ${hex(RET.ALLOW)}`]);
  });

  it("Docker's own default profile (moby profiles/seccomp/default.json)", () => {
    expect(compare(MOBY)).toEqual([]);
  });

  it("podman's default profile (containers-common seccomp.json): accepted, and decided as Docker decides it", () => {
    expect(validateSeccompOption('seccomp', PODMAN)).toBe(PODMAN);
    expect(compare(PODMAN)).toEqual([]);
    // defaultErrnoRet 38: unlisted calls answer ENOSYS; errnoRet 1 rules answer EPERM.
    for (const arch of ARCHES) {
      const prog = compileSeccomp(PODMAN, { arch, capabilities: DEFAULT_CAPS })!;
      expect(hex(runFilter(prog, call(arch, 'add_key')))).toBe(hex(ENOSYS));
      expect(hex(runFilter(prog, call(arch, 'kexec_load')))).toBe(hex(EPERM));
      // setns: allowed by its first rule, without conditions, so its later refusal without
      // CAP_SYS_ADMIN is discarded by libseccomp (the kernel still asks for the capability).
      expect(hex(runFilter(prog, call(arch, 'setns')))).toBe(hex(RET.ALLOW));
    }
  });

  it('the model is no mirror of hutch: the old default shape allows AF_ALG in it', () => {
    // What DEFAULT_SECCOMP_PROFILE used to say: refusals with the default's own errno before
    // an unconditional allow. runc drops the refusals and libseccomp keeps the allow.
    const old: SeccompProfile = {
      defaultAction: 'SCMP_ACT_ERRNO',
      defaultErrnoRet: 1,
      syscalls: [
        { names: ['socket'], action: 'SCMP_ACT_ERRNO', errnoRet: 1, args: [{ index: 0, op: 'SCMP_CMP_MASKED_EQ', value: 0xffffffff, valueTwo: 38 }] },
        { names: ['socket'], action: 'SCMP_ACT_ALLOW' },
      ],
    };
    for (const arch of ARCHES) {
      expect(hex(dockerDecides(old as JsonProfile, arch, [], [6, 18])(call(arch, 'socket', [38])))).toBe(hex(RET.ALLOW));
    }
    expect(compare(old)).toEqual([]);
  });
});

describe('the points where hutch used to differ', () => {
  it('SCMP_CMP_MASKED_EQ with mask 0 matches every value (generated allowlists), as in Docker', () => {
    const allowlist: SeccompProfile = {
      defaultAction: 'SCMP_ACT_ERRNO',
      syscalls: [
        { names: ['read', 'write', 'exit_group', 'openat'], action: 'SCMP_ACT_ALLOW' },
        { names: ['socket'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, op: 'SCMP_CMP_MASKED_EQ', value: 0, valueTwo: 2 }] },
        { names: ['ioctl'], action: 'SCMP_ACT_ALLOW', args: [{ index: 1, op: 'SCMP_CMP_MASKED_EQ', value: 0xff, valueTwo: 0x5401 }] },
      ],
    };
    expect(compare(allowlist)).toEqual([]);
    for (const arch of ARCHES) {
      const prog = compileSeccomp(allowlist, { arch, capabilities: [] })!;
      expect(hex(runFilter(prog, call(arch, 'socket', [10])))).toBe(hex(RET.ALLOW));
      expect(hex(runFilter(prog, call(arch, 'ioctl', [0, 0x01]))), 'datum 0x5401 & 0xff = 0x01').toBe(hex(RET.ALLOW));
      expect(hex(runFilter(prog, call(arch, 'ioctl', [0, 0x5402])))).toBe(hex(EPERM));
    }
  });

  it('excludes.minKernel "" always excludes and includes.minKernel "" always includes (moby: version 0.0); null is no condition', () => {
    const profile: SeccompProfile = {
      defaultAction: 'SCMP_ACT_ERRNO',
      syscalls: [
        { names: ['read'], action: 'SCMP_ACT_ALLOW', excludes: { minKernel: '' } },
        { names: ['write'], action: 'SCMP_ACT_ALLOW', includes: { minKernel: '' } },
        { names: ['getpid'], action: 'SCMP_ACT_ALLOW', excludes: { minKernel: null as unknown as string } },
      ],
    };
    expect(compare(profile)).toEqual([]);
    for (const arch of ARCHES) {
      const prog = compileSeccomp(profile, { arch, capabilities: [], kernelRelease: '3.10.0' })!;
      expect(hex(runFilter(prog, call(arch, 'read')))).toBe(hex(EPERM));
      expect(hex(runFilter(prog, call(arch, 'write')))).toBe(hex(RET.ALLOW));
      expect(hex(runFilter(prog, call(arch, 'getpid')))).toBe(hex(RET.ALLOW));
    }
  });

  it('minKernel that moby refuses is EINVAL', () => {
    for (const bad of ['0.0', '4.256', '4', '4.8.1', 'v4.8', ' 4.8', 48]) {
      const p = { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['read'], action: 'SCMP_ACT_ERRNO', includes: { minKernel: bad } }] };
      expect(() => validateSeccompOption('seccomp', p), String(bad)).toThrow(/seccomp\.syscalls\[0\]\.includes\.minKernel/);
    }
  });

  it('numbers 0x80000000..0xbfffffff answer ENOSYS under a refusing default, as runc; with an allowing one, the default', () => {
    const profile: SeccompProfile = { defaultAction: 'SCMP_ACT_KILL_PROCESS', syscalls: [{ names: ['read', 'exit_group'], action: 'SCMP_ACT_ALLOW' }] };
    expect(compare(profile)).toEqual([]);
    const prog = compileSeccomp(profile, { arch: 'x86_64', capabilities: [] })!;
    for (const nr of [0x80000000, 0x800000e7, 0xbfffffff]) expect(hex(runFilter(prog, { nr, arch: AUDIT_ARCH.x86_64 }))).toBe(hex(ENOSYS));
    expect(hex(runFilter(prog, { nr: 0xc00000e7, arch: AUDIT_ARCH.x86_64 })), 'x32 stays killed').toBe(hex(RET.KILL_PROCESS));
  });

  it('a rule that repeats the default action is dropped, other errnos kept, as runc', () => {
    const profile: SeccompProfile = {
      defaultAction: 'SCMP_ACT_ERRNO',
      syscalls: [
        { names: ['socket'], action: 'SCMP_ACT_ERRNO', args: [{ index: 0, op: 'SCMP_CMP_EQ', value: 38 }] },
        { names: ['socket'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, op: 'SCMP_CMP_LT', value: 64 }] },
        { names: ['socket'], action: 'SCMP_ACT_ERRNO', errnoRet: 97, args: [{ index: 0, op: 'SCMP_CMP_GE', value: 64 }] },
      ],
    };
    expect(compare(profile)).toEqual([]);
  });

  it("podman's errno / defaultErrno names: accepted when Docker's errnoRet gives the same errno, EINVAL when not", () => {
    const ok: SeccompProfile = {
      defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: 38, defaultErrno: 'ENOSYS',
      syscalls: [
        { names: ['read'], action: 'SCMP_ACT_ERRNO', errnoRet: 13, errno: 'EACCES' },
        { names: ['write'], action: 'SCMP_ACT_ERRNO', errno: 'EPERM' },
        { names: ['getpid'], action: 'SCMP_ACT_ERRNO', errnoRet: 22, errno: '22' },
      ],
    };
    expect(validateSeccompOption('seccomp', ok)).toBe(ok);
    const einval = (p: unknown, ...frags: string[]): void => {
      let err: unknown;
      try {
        validateSeccompOption('seccomp', p);
      } catch (e) {
        err = e;
      }
      expect(HutchError.is(err) && err.code, String(err)).toBe('EINVAL');
      for (const f of frags) expect((err as Error).message).toContain(f);
    };
    einval({ defaultAction: 'SCMP_ACT_ERRNO', defaultErrno: 'ENOSYS' }, 'seccomp.defaultErrno', 'Docker reads only defaultErrnoRet');
    einval({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['read'], action: 'SCMP_ACT_ERRNO', errnoRet: 1, errno: 'EACCES' }] }, 'seccomp.syscalls[0].errno');
    einval({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['read'], action: 'SCMP_ACT_ERRNO', errno: 'ENOTANERRNO' }] }, 'an errno name such as "EPERM"');
    einval({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW', errno: 'EPERM' }] }, 'applies only to SCMP_ACT_ERRNO');
  });
});

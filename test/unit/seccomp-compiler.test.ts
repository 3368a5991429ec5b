// The seccomp compiler, run in a classic-BPF interpreter: no kernel needed. Compiled programs
// are checked against hand-computed answers and against a direct evaluation of the profile
// written independently of the compiler (`reference`, helpers/seccomp-reference.ts); random
// profiles are in seccomp-random.test.ts, Docker's reading of the JSON in seccomp-docker.test.ts.
import { describe, expect, it } from 'vitest';
import {
  compileSeccomp,
  DEFAULT_SECCOMP_PROFILE,
  seccompFilterFlags,
  validateSeccompOption,
  type SeccompArch,
  type SeccompArg,
  type SeccompProfile,
  type SeccompSyscallRule,
} from '../../lib/seccomp/index.js';
import { SYSCALLS_AARCH64, SYSCALLS_X86_64 } from '../../lib/seccomp/syscalls.generated.js';
import { HutchError } from '../../lib/errors.js';
import { checkProgram, decode, runFilter, type SeccompData } from '../helpers/bpf-interp.js';
import { ARCHES, AUDIT_ARCH, call, DEFAULT_CAPS, ENOSYS, EPERM, hex, reference, RET, TABLE } from '../helpers/seccomp-reference.js';

// ---- the default profile ----

describe('default profile', () => {
  for (const arch of ARCHES) {
    describe(arch, () => {
      const prog = compileSeccomp('default', { arch, capabilities: DEFAULT_CAPS })!;
      const run = (d: SeccompData): number => runFilter(prog, d);

      it('is a well-formed program well under BPF_MAXINSNS', () => {
        checkProgram(prog);
        expect(prog.length % 8).toBe(0);
        expect(prog.length / 8).toBeLessThan(500); // ~450: ioctl has ~33 allow rules (all but TIOCSTI, TIOCLINUX)
      });

      it('allows every call of the allowlist that this arch has', () => {
        const allow = DEFAULT_SECCOMP_PROFILE.syscalls![0]!;
        let seen = 0;
        for (const name of allow.names!) {
          if (TABLE[arch][name] === undefined) continue;
          seen++;
          expect([name, hex(run(call(arch, name, [1, 2, 3])))]).toEqual([name, hex(RET.ALLOW)]);
        }
        expect(seen).toBeGreaterThan(250);
      });

      it('refuses with EPERM what needs a capability the sandbox lacks, and what Docker never allows', () => {
        const denied = [
          'mount', 'umount2', 'unshare', 'setns', 'pivot_root', 'kexec_load', 'kexec_file_load', 'open_by_handle_at',
          'bpf', 'perf_event_open', 'keyctl', 'add_key', 'request_key', 'userfaultfd', 'io_uring_setup',
          'io_uring_enter', 'io_uring_register', 'init_module', 'finit_module', 'delete_module', 'reboot', 'swapon',
          'swapoff', 'acct', 'settimeofday', 'clock_settime', 'sethostname', 'setdomainname', 'syslog',
          'fsopen', 'fsmount', 'move_mount', 'open_tree', 'mount_setattr', 'quotactl', 'vhangup', 'mbind',
          'set_mempolicy', 'kcmp', 'pidfd_getfd', 'process_madvise', 'lookup_dcookie', 'fanotify_init',
          'name_to_handle_at_not_a_call',
        ].filter((n) => TABLE[arch][n] !== undefined);
        expect(denied.length).toBeGreaterThan(35);
        for (const name of denied) expect([name, hex(run(call(arch, name)))]).toEqual([name, hex(EPERM)]);
      });

      it('allows ptrace and process_vm_* on kernels since 4.8 only', () => {
        for (const name of ['ptrace', 'process_vm_readv', 'process_vm_writev']) {
          expect(run(call(arch, name))).toBe(RET.ALLOW);
          const old = compileSeccomp('default', { arch, capabilities: DEFAULT_CAPS, kernelRelease: '4.4.0-210-generic' })!;
          expect(runFilter(old, call(arch, name))).toBe(EPERM);
        }
      });

      it('allows chroot with CAP_SYS_CHROOT only', () => {
        expect(run(call(arch, 'chroot'))).toBe(RET.ALLOW);
        const none = compileSeccomp('default', { arch, capabilities: [] })!;
        expect(runFilter(none, call(arch, 'chroot'))).toBe(EPERM);
      });

      it('allows clone without namespace flags only, unless CAP_SYS_ADMIN', () => {
        const SIGCHLD = 17;
        const CLONE_THREAD_FLAGS = 0x003d0f00; // what pthread_create passes
        expect(run(call(arch, 'clone', [SIGCHLD]))).toBe(RET.ALLOW);
        expect(run(call(arch, 'clone', [CLONE_THREAD_FLAGS]))).toBe(RET.ALLOW);
        // Namespace flags sit in the low word; the high word is not masked.
        expect(run(call(arch, 'clone', [(1n << 32n) | 17n]))).toBe(RET.ALLOW);
        const admin = compileSeccomp('default', { arch, capabilities: [...DEFAULT_CAPS, 'SYS_ADMIN'] })!;
        for (const ns of [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000]) {
          expect([hex(ns), hex(run(call(arch, 'clone', [ns | SIGCHLD])))]).toEqual([hex(ns), hex(EPERM)]);
          expect(runFilter(admin, call(arch, 'clone', [ns | SIGCHLD]))).toBe(RET.ALLOW);
        }
        expect(run(call(arch, 'clone3'))).toBe(ENOSYS);
        expect(runFilter(admin, call(arch, 'clone3'))).toBe(RET.ALLOW);
        expect(runFilter(admin, call(arch, 'mount'))).toBe(RET.ALLOW);
      });

      it('refuses socket for AF_ALG and AF_VSOCK only, whatever the high word', () => {
        for (const family of [0, 1, 2, 10, 16, 17, 37, 39, 41, 44, 45, 100, 0xffffffff]) {
          expect([family, hex(run(call(arch, 'socket', [family, 1, 0])))]).toEqual([family, hex(RET.ALLOW)]);
        }
        for (const family of [38n, 40n, (1n << 32n) | 38n, (0xdeadn << 32n) | 40n]) {
          expect(run(call(arch, 'socket', [family, 1, 0]))).toBe(EPERM);
        }
      });

      it('allows personality with the usual personas only', () => {
        for (const p of [0x0, 0x8, 0x20000, 0x20008, 0xffffffff]) expect(run(call(arch, 'personality', [p]))).toBe(RET.ALLOW);
        for (const p of [0x0400000, 0x0040000, 0x1, 0x20001, 0x100000000n, 0xffffffffffffffffn]) {
          expect(run(call(arch, 'personality', [p]))).toBe(EPERM);
        }
      });

      it('kills foreign architectures with KILL_PROCESS', () => {
        for (const a of [AUDIT_ARCH.i386, AUDIT_ARCH.arm, arch === 'x86_64' ? AUDIT_ARCH.aarch64 : AUDIT_ARCH.x86_64, 0]) {
          expect(run({ nr: 0, arch: a })).toBe(RET.KILL_PROCESS);
          expect(run({ nr: 59, arch: a })).toBe(RET.KILL_PROCESS);
        }
      });

      it('answers EPERM for unlisted numbers, ENOSYS past the newest named call, and lets a skipped call (-1) through', () => {
        const hole = arch === 'x86_64' ? 400 : 300; // unallocated on both
        expect(Object.values(TABLE[arch])).not.toContain(hole);
        expect(run({ nr: hole, arch: AUDIT_ARCH[arch] })).toBe(EPERM);
        expect(run({ nr: 1000, arch: AUDIT_ARCH[arch] })).toBe(ENOSYS);
        expect(run({ nr: 0x3fffffff, arch: AUDIT_ARCH[arch] })).toBe(ENOSYS);
        expect(run({ nr: -1, arch: AUDIT_ARCH[arch] })).toBe(RET.ALLOW);
      });
    });
  }

  it('allows arch_prctl and modify_ldt on x86_64', () => {
    const prog = compileSeccomp('default', { arch: 'x86_64', capabilities: [] })!;
    expect(runFilter(prog, call('x86_64', 'arch_prctl', [0x1002]))).toBe(RET.ALLOW);
    expect(runFilter(prog, call('x86_64', 'modify_ldt'))).toBe(RET.ALLOW);
  });

  it('kills x32 syscalls on x86_64, and answers ENOSYS for 0x80000000..0xbfffffff (no syscall of any ABI), as runc', () => {
    const prog = compileSeccomp('default', { arch: 'x86_64', capabilities: [] })!;
    for (const nr of [0x40000000, 0x40000000 + 1, 0x40000000 + 59, 0x40000000 + 512, 0x7fffffff, 0xc0000000, 0xc0000000 + 59, 0xfffffffe]) {
      expect([hex(nr), hex(runFilter(prog, { nr, arch: AUDIT_ARCH.x86_64 }))]).toEqual([hex(nr), hex(RET.KILL_PROCESS)]);
    }
    for (const nr of [0x80000000, 0x80000000 + 59, 0x80000000 + 0x3fffffff]) {
      expect([hex(nr), hex(runFilter(prog, { nr, arch: AUDIT_ARCH.x86_64 }))]).toEqual([hex(nr), hex(ENOSYS)]);
    }
    // Without the ENOSYS rule (a permissive default), they get the default action.
    const log = compileSeccomp({ defaultAction: 'SCMP_ACT_LOG', syscalls: [{ names: ['read'], action: 'SCMP_ACT_ERRNO' }] }, { arch: 'x86_64', capabilities: [] })!;
    expect(hex(runFilter(log, { nr: 0x80000000, arch: AUDIT_ARCH.x86_64 }))).toBe(hex(RET.LOG));
    expect(hex(runFilter(log, { nr: 0xc0000000, arch: AUDIT_ARCH.x86_64 }))).toBe(hex(RET.KILL_PROCESS));
  });

  it('equals the reference evaluation for every syscall, several capability sets and argument values', () => {
    const capSets = [[], DEFAULT_CAPS, ['SYS_ADMIN'], ['SYS_PTRACE', 'SYS_TIME', 'SYS_NICE', 'DAC_READ_SEARCH', 'SYS_BOOT', 'SYS_MODULE', 'SYS_PACCT', 'SYS_RAWIO', 'SYS_TTY_CONFIG', 'SYSLOG', 'BPF', 'PERFMON']];
    const values = [0n, 8n, 17n, 38n, 40n, 41n, 0x20000n, 0x20008n, 0xffffffffn, 0x10000000n, 1n << 32n, (1n << 64n) - 1n];
    for (const arch of ARCHES) {
      for (const caps of capSets) {
        const prog = compileSeccomp('default', { arch, capabilities: caps, kernelRelease: '6.8.0' })!;
        const ref = reference(DEFAULT_SECCOMP_PROFILE, arch, caps, [6, 8]);
        for (const nr of [...Object.values(TABLE[arch]), 500, 0x40000001, 0x80000000, 0xbfffffff, 0xc0000001]) {
          for (const v of values) {
            const d = { nr, arch: AUDIT_ARCH[arch], args: [v, v, v] };
            expect([arch, nr, v, hex(runFilter(prog, d))]).toEqual([arch, nr, v, hex(ref(d))]);
          }
        }
      }
    }
  });

  it('is cached: the same Buffer for the same profile, arch and capabilities', () => {
    const t0 = performance.now();
    const a = compileSeccomp('default', { arch: 'x86_64', capabilities: ['CHOWN', 'KILL'], kernelRelease: '6.1.0' });
    const t1 = performance.now();
    const b = compileSeccomp('default', { arch: 'x86_64', capabilities: ['CAP_KILL', 'CHOWN', 'KILL'], kernelRelease: '6.1.99' });
    const t2 = performance.now();
    expect(b).toBe(a);
    expect(t2 - t1).toBeLessThanOrEqual(Math.max(t1 - t0, 1));
    expect(compileSeccomp('default', { arch: 'aarch64', capabilities: ['CHOWN', 'KILL'], kernelRelease: '6.1.0' })).not.toBe(a);
    expect(compileSeccomp('default', { arch: 'x86_64', capabilities: ['SYS_ADMIN'], kernelRelease: '6.1.0' })).not.toBe(a);
    // An equal profile made anew hits the cache by its JSON.
    const copy = JSON.parse(JSON.stringify(DEFAULT_SECCOMP_PROFILE)) as SeccompProfile;
    expect(compileSeccomp(copy, { arch: 'x86_64', capabilities: ['CHOWN', 'KILL'], kernelRelease: '6.1.0' })).toBe(a);
  });

  it('returns null for unconfined', () => {
    expect(compileSeccomp('unconfined', { capabilities: [] })).toBeNull();
  });
});

// ---- hand-written profiles ----

const HI = 0x1_0000_0000n;
function oneRule(name: string, args: SeccompArg[], action: SeccompSyscallRule['action'] = 'SCMP_ACT_ALLOW'): SeccompProfile {
  return { defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: 13, syscalls: [{ names: [name], action, args }] };
}

describe('argument comparisons on 64-bit values', () => {
  const EACCES = (RET.ERRNO | 13) >>> 0;
  // Values straddling the boundary in both words: hi words differ, lo words differ.
  const V = 5n * HI + 100n;
  const probes = [0n, 100n, 5n * HI, V - 1n, V, V + 1n, 5n * HI + 0xffffffffn, 4n * HI + 200n, 6n * HI, 6n * HI + 50n, (1n << 64n) - 1n];
  const cases: [SeccompArg['op'], (x: bigint) => boolean][] = [
    ['SCMP_CMP_EQ', (x) => x === V],
    ['SCMP_CMP_NE', (x) => x !== V],
    ['SCMP_CMP_LT', (x) => x < V],
    ['SCMP_CMP_LE', (x) => x <= V],
    ['SCMP_CMP_GT', (x) => x > V],
    ['SCMP_CMP_GE', (x) => x >= V],
  ];
  for (const arch of ARCHES) {
    for (const [op, expected] of cases) {
      it(`${op} on ${arch}, on every argument`, () => {
        for (let index = 0; index < 6; index++) {
          const prog = compileSeccomp(oneRule('read', [{ index, op, value: V }]), { arch, capabilities: [] })!;
          for (const x of probes) {
            const args = [7n, 7n, 7n, 7n, 7n, 7n];
            args[index] = x;
            const got = runFilter(prog, { nr: TABLE[arch].read!, arch: AUDIT_ARCH[arch], args });
            expect([index, x, hex(got)]).toEqual([index, x, hex(expected(x) ? RET.ALLOW : EACCES)]);
          }
        }
      });
    }
    it(`SCMP_CMP_MASKED_EQ on ${arch}, with masks in both words`, () => {
      const mask = 0xff00_0000_0000_00ffn;
      const datum = 0x1200_0000_0000_0034n;
      const prog = compileSeccomp(oneRule('write', [{ index: 2, op: 'SCMP_CMP_MASKED_EQ', value: mask, valueTwo: datum }]), { arch, capabilities: [] })!;
      for (const x of [datum, datum | 0x00ff_ffff_ffff_ff00n, 0x1200_0000_0000_0035n, 0x1300_0000_0000_0034n, 0x34n, 0n]) {
        const got = runFilter(prog, { nr: TABLE[arch].write!, arch: AUDIT_ARCH[arch], args: [0n, 0n, x] });
        expect([x, hex(got)]).toEqual([x, hex((x & mask) === datum ? RET.ALLOW : EACCES)]);
      }
    });
  }

  it("SCMP_CMP_MASKED_EQ ignores the datum's bits outside the mask, as libseccomp; a mask of 0 always holds", () => {
    for (const arch of ARCHES) {
      const prog = compileSeccomp(oneRule('write', [{ index: 0, op: 'SCMP_CMP_MASKED_EQ', value: 0xff, valueTwo: HI | 0x12n }]), { arch, capabilities: [] })!;
      for (const x of [0x12n, HI | 0x12n, 0xabcd12n, 0xffff_ffff_ffff_ff12n]) {
        expect([x, runFilter(prog, { nr: TABLE[arch].write!, arch: AUDIT_ARCH[arch], args: [x] })]).toEqual([x, RET.ALLOW]);
      }
      for (const x of [0x13n, HI | 0x02n, 0n, (1n << 64n) - 1n]) {
        expect([x, runFilter(prog, { nr: TABLE[arch].write!, arch: AUDIT_ARCH[arch], args: [x] })]).toEqual([x, EACCES]);
      }
      // A generated allowlist's "any value": mask 0 with a datum, in both words or one.
      for (const [mask, datum] of [[0n, 5n], [0n, HI | 7n], [0xffn << 32n, 0x12n << 32n]] as const) {
        const any = compileSeccomp(oneRule('write', [{ index: 1, op: 'SCMP_CMP_MASKED_EQ', value: mask, valueTwo: datum }]), { arch, capabilities: [] })!;
        checkProgram(any);
        for (const x of [0n, 5n, 6n, HI | 7n, (0x12n << 32n) | 9n, (1n << 64n) - 1n]) {
          const want = (x & mask) === (datum & mask) ? RET.ALLOW : EACCES;
          expect([mask, x, hex(runFilter(any, { nr: TABLE[arch].write!, arch: AUDIT_ARCH[arch], args: [0n, x] }))]).toEqual([mask, x, hex(want)]);
        }
      }
    }
  });

  it('drops a rule whose action is the default action, as runc; a rule without conditions decides alone, as libseccomp', () => {
    for (const arch of ARCHES) {
      const profile: SeccompProfile = {
        defaultAction: 'SCMP_ACT_ERRNO',
        defaultErrnoRet: 1,
        syscalls: [
          { names: ['socket'], action: 'SCMP_ACT_ERRNO', errnoRet: 1, args: [{ index: 0, op: 'SCMP_CMP_EQ', value: 38 }] },
          { names: ['socket'], action: 'SCMP_ACT_ERRNO', errnoRet: 22, args: [{ index: 0, op: 'SCMP_CMP_EQ', value: 40 }] },
          { names: ['socket'], action: 'SCMP_ACT_ALLOW' },
          { names: ['mkdir', 'read'], action: 'SCMP_ACT_ERRNO' },
          { names: ['read'], action: 'SCMP_ACT_ALLOW' },
          { names: ['kill'], action: 'SCMP_ACT_ERRNO', errnoRet: 1, args: [{ index: 0, op: 'SCMP_CMP_EQ', value: 1 }] },
          { names: ['kill'], action: 'SCMP_ACT_ERRNO', errnoRet: 22, args: [{ index: 0, op: 'SCMP_CMP_LE', value: 1 }] },
          { names: ['kill'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, op: 'SCMP_CMP_LE', value: 5 }] },
          { names: ['getpid'], action: 'SCMP_ACT_LOG' },
          { names: ['getpid'], action: 'SCMP_ACT_KILL_PROCESS' },
        ],
      };
      const prog = compileSeccomp(profile, { arch, capabilities: [] })!;
      const run = (name: string, a0 = 0n): string => hex(runFilter(prog, call(arch, name, [a0])));
      expect(run('socket', 38n)).toBe(hex(RET.ALLOW));
      expect(run('socket', 40n)).toBe(hex(RET.ALLOW)); // the unconditional allow discards the ERRNO(22) rule
      expect(run('kill', 1n)).toBe(hex((RET.ERRNO | 22) >>> 0)); // ERRNO(1) dropped, ERRNO(22) outranks ALLOW
      expect(run('kill', 0n)).toBe(hex((RET.ERRNO | 22) >>> 0));
      expect(run('kill', 3n)).toBe(hex(RET.ALLOW));
      expect(run('kill', 6n)).toBe(hex(EPERM));
      expect(run('getpid')).toBe(hex(RET.LOG)); // the first rule without conditions stays
      expect(run('read')).toBe(hex(RET.ALLOW));
      if (TABLE[arch].mkdir !== undefined) expect(run('mkdir')).toBe(hex(EPERM));
    }
  });

  it('ANDs the conditions of one rule and ORs the rules of one syscall', () => {
    const profile: SeccompProfile = {
      defaultAction: 'SCMP_ACT_KILL_PROCESS',
      syscalls: [
        { names: ['openat'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, op: 'SCMP_CMP_EQ', value: 1 }, { index: 2, op: 'SCMP_CMP_GT', value: 10 }] },
        { names: ['openat'], action: 'SCMP_ACT_ALLOW', args: [{ index: 1, op: 'SCMP_CMP_EQ', value: '0x20000000000' }] },
      ],
    };
    for (const arch of ARCHES) {
      const prog = compileSeccomp(profile, { arch, capabilities: [] })!;
      const run = (args: bigint[]): number => runFilter(prog, { nr: TABLE[arch].openat!, arch: AUDIT_ARCH[arch], args });
      expect(run([1n, 0n, 11n])).toBe(RET.ALLOW);
      expect(run([1n, 0n, 10n])).toBe(RET.KILL_PROCESS);
      expect(run([2n, 0n, 11n])).toBe(RET.KILL_PROCESS);
      expect(run([2n, 0x20000000000n, 0n])).toBe(RET.ALLOW);
      expect(run([1n + HI, 0n, 11n])).toBe(RET.KILL_PROCESS);
    }
  });

  it('lets the strictest matching action win, then the earlier rule', () => {
    const profile: SeccompProfile = {
      defaultAction: 'SCMP_ACT_ALLOW',
      syscalls: [
        { names: ['kill'], action: 'SCMP_ACT_ALLOW' },
        { names: ['kill'], action: 'SCMP_ACT_ERRNO', errnoRet: 3, args: [{ index: 1, op: 'SCMP_CMP_EQ', value: 9 }] },
        { names: ['kill'], action: 'SCMP_ACT_ERRNO', errnoRet: 4, args: [{ index: 1, op: 'SCMP_CMP_GE', value: 9 }] },
        { names: ['kill'], action: 'SCMP_ACT_TRAP', args: [{ index: 1, op: 'SCMP_CMP_EQ', value: 19 }] },
        { names: ['kill'], action: 'SCMP_ACT_LOG', args: [{ index: 1, op: 'SCMP_CMP_EQ', value: 2 }] },
      ],
    };
    const prog = compileSeccomp(profile, { arch: 'x86_64', capabilities: [] })!;
    const run = (sig: number): number => runFilter(prog, call('x86_64', 'kill', [1, sig]));
    expect(run(9)).toBe((RET.ERRNO | 3) >>> 0);
    expect(run(10)).toBe((RET.ERRNO | 4) >>> 0);
    expect(run(19)).toBe(RET.TRAP);
    expect(run(2)).toBe(RET.LOG); // LOG is stricter than ALLOW
    expect(run(1)).toBe(RET.ALLOW);
  });

  it('encodes every action', () => {
    const actions: [SeccompSyscallRule['action'], number | undefined, number][] = [
      ['SCMP_ACT_KILL', undefined, RET.KILL_THREAD],
      ['SCMP_ACT_KILL_THREAD', undefined, RET.KILL_THREAD],
      ['SCMP_ACT_KILL_PROCESS', undefined, RET.KILL_PROCESS],
      ['SCMP_ACT_TRAP', undefined, RET.TRAP],
      ['SCMP_ACT_ERRNO', undefined, EPERM],
      ['SCMP_ACT_ERRNO', 4095, (RET.ERRNO | 4095) >>> 0],
      ['SCMP_ACT_TRACE', 1234, (RET.TRACE | 1234) >>> 0],
      ['SCMP_ACT_LOG', undefined, RET.LOG],
      ['SCMP_ACT_ALLOW', undefined, RET.ALLOW],
    ];
    for (const [action, errnoRet, ret] of actions) {
      const rule: SeccompSyscallRule = { names: ['getpid'], action };
      if (errnoRet !== undefined) rule.errnoRet = errnoRet;
      const prog = compileSeccomp({ defaultAction: 'SCMP_ACT_ALLOW', syscalls: [rule] }, { arch: 'aarch64', capabilities: [] })!;
      expect([action, hex(runFilter(prog, call('aarch64', 'getpid')))]).toEqual([action, hex(ret)]);
    }
  });

  it('skips names this arch lacks and applies includes/excludes by arch, capability and kernel', () => {
    const profile: SeccompProfile = {
      defaultAction: 'SCMP_ACT_ERRNO',
      syscalls: [
        // rseq, named last in both tables, keeps the others below runc's ENOSYS cut-off.
        { names: ['open', 'chown32', 'getpid', 'rseq'], action: 'SCMP_ACT_ALLOW' },
        { names: ['getppid'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['arm64'] } },
        { names: ['gettid'], action: 'SCMP_ACT_ALLOW', excludes: { arches: ['amd64'] } },
        { names: ['getuid'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SETUID', 'CAP_SETGID'] } },
        { names: ['getgid'], action: 'SCMP_ACT_ALLOW', excludes: { caps: ['SYS_ADMIN', 'NET_ADMIN'] } },
        { names: ['geteuid'], action: 'SCMP_ACT_ALLOW', includes: { minKernel: '5.10' } },
        { names: ['getegid'], action: 'SCMP_ACT_ALLOW', excludes: { minKernel: '5.10' } },
      ],
    };
    const x86 = compileSeccomp(profile, { arch: 'x86_64', capabilities: ['SETUID'], kernelRelease: '5.4.0' })!;
    const arm = compileSeccomp(profile, { arch: 'aarch64', capabilities: ['SETUID', 'SETGID', 'NET_ADMIN'], kernelRelease: '5.10.1' })!;
    const x = (n: string): number => runFilter(x86, call('x86_64', n));
    const a = (n: string): number => runFilter(arm, call('aarch64', n));
    expect([x('open'), x('getpid'), a('getpid')]).toEqual([RET.ALLOW, RET.ALLOW, RET.ALLOW]);
    expect([x('rseq_slice_yield'), a('rseq_slice_yield')]).toEqual([ENOSYS, ENOSYS]);
    expect([x('getppid'), a('getppid')]).toEqual([EPERM, RET.ALLOW]);
    expect([x('gettid'), a('gettid')]).toEqual([EPERM, RET.ALLOW]);
    expect([x('getuid'), a('getuid')]).toEqual([EPERM, RET.ALLOW]);
    expect([x('getgid'), a('getgid')]).toEqual([RET.ALLOW, EPERM]);
    expect([x('geteuid'), a('geteuid')]).toEqual([EPERM, RET.ALLOW]);
    expect([x('getegid'), a('getegid')]).toEqual([RET.ALLOW, EPERM]);
  });

  it('uses long jumps when a program outgrows 8-bit jump offsets', () => {
    // Many argument rules, each on its own syscall, spread the tree far past 255 instructions.
    const names = Object.keys(SYSCALLS_AARCH64).filter((n) => SYSCALLS_X86_64[n] !== undefined).slice(0, 120);
    const syscalls: SeccompSyscallRule[] = names.map((n, i) => ({
      names: [n],
      action: 'SCMP_ACT_ERRNO',
      errnoRet: i + 1,
      args: [{ index: i % 6, op: 'SCMP_CMP_GT', value: BigInt(i) * HI + BigInt(i) }],
    }));
    const profile: SeccompProfile = { defaultAction: 'SCMP_ACT_ALLOW', syscalls };
    for (const arch of ARCHES) {
      const prog = compileSeccomp(profile, { arch, capabilities: [] })!;
      checkProgram(prog);
      const insns = decode(prog);
      expect(insns.length).toBeGreaterThan(600);
      expect(insns.some((ins) => ins.code === 0x05 && ins.k > 255)).toBe(true);
      const ref = reference(profile, arch, [], [6, 8]);
      names.forEach((n, i) => {
        for (const x of [BigInt(i) * HI + BigInt(i), BigInt(i) * HI + BigInt(i) + 1n, BigInt(i + 1) * HI]) {
          const args = [0n, 0n, 0n, 0n, 0n, 0n];
          args[i % 6] = x;
          const d = call(arch, n, args);
          expect([n, x, hex(runFilter(prog, d))]).toEqual([n, x, hex(ref(d))]);
        }
      });
    }
  });
});

// ---- bad input ----

function einval(f: () => unknown, ...fragments: string[]): void {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(HutchError.is(err), `expected a HutchError, got ${String(err)}`).toBe(true);
  expect((err as HutchError).code).toBe('EINVAL');
  for (const frag of fragments) expect((err as HutchError).message).toContain(frag);
}

describe('bad profiles are EINVAL naming the field', () => {
  const compile = (p: unknown): unknown => compileSeccomp(p as SeccompProfile, { arch: 'x86_64', capabilities: [] });
  const rule = (r: Record<string, unknown>): unknown => ({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW' }, r] });

  it('rejects bad shapes and values', () => {
    einval(() => compile(42), 'seccomp');
    einval(() => compile({ syscalls: [] }), 'seccomp.defaultAction');
    einval(() => compile({ defaultAction: 'SCMP_ACT_DENY' }), 'seccomp.defaultAction', 'SCMP_ACT_ERRNO');
    einval(() => compile({ defaultAction: 'SCMP_ACT_ALLOW', defaultErrnoRet: 1 }), 'seccomp.defaultErrnoRet');
    einval(() => compile({ defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: 5000 }), 'seccomp.defaultErrnoRet', '0..4095');
    einval(() => compile({ defaultAction: 'SCMP_ACT_ERRNO', defautlErrnoRet: 1 }), 'seccomp.defautlErrnoRet', 'unknown field');
    einval(() => compile({ defaultAction: 'SCMP_ACT_ERRNO', flags: ['SECCOMP_FILTER_FLAG_NEW_LISTENER'] }), 'seccomp.flags[0]');
    einval(() => compile({ defaultAction: 'SCMP_ACT_ERRNO', listenerPath: '/run/agent.sock' }), 'seccomp.listenerPath');
    einval(() => compile({ defaultAction: 'SCMP_ACT_ERRNO', architectures: ['SCMP_ARCH_X86_64'], archMap: [] }), 'archMap');
    einval(() => compile({ defaultAction: 'SCMP_ACT_ERRNO', architectures: ['x86_64'] }), 'seccomp.architectures[0]');
  });

  it('rejects bad rules, naming the rule index', () => {
    einval(() => compile(rule({ names: ['reed'], action: 'SCMP_ACT_ALLOW' })), 'seccomp.syscalls[1].names[0]', '"reed"');
    einval(() => compile(rule({ names: [], action: 'SCMP_ACT_ALLOW' })), 'seccomp.syscalls[1].names');
    einval(() => compile(rule({ name: 'read', names: ['read'], action: 'SCMP_ACT_ALLOW' })), 'seccomp.syscalls[1]', 'not both');
    einval(() => compile(rule({ names: ['read'], action: 'SCMP_ACT_NOTIFY' })), 'seccomp.syscalls[1].action', 'SCMP_ACT_NOTIFY');
    einval(() => compile(rule({ names: ['read'], action: 'SCMP_ACT_ALLOW', errnoRet: 1 })), 'seccomp.syscalls[1].errnoRet');
    einval(() => compile(rule({ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 6, value: 0, op: 'SCMP_CMP_EQ' }] })), 'seccomp.syscalls[1].args[0].index', '0..5');
    einval(() => compile(rule({ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 0, op: 'SCMP_CMP_EQUAL' }] })), 'seccomp.syscalls[1].args[0].op');
    einval(() => compile(rule({ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: -1, op: 'SCMP_CMP_EQ' }] })), 'seccomp.syscalls[1].args[0].value');
    einval(() => compile(rule({ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 2 ** 60, op: 'SCMP_CMP_EQ' }] })), 'args[0].value', 'bigint');
    einval(() => compile(rule({ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 1n << 64n, op: 'SCMP_CMP_EQ' }] })), 'args[0].value');
    einval(() => compile(rule({ names: ['read'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: 1, valueTwo: 1, op: 'SCMP_CMP_EQ' }] })), 'args[0].valueTwo');
    einval(() => compile(rule({ names: ['read'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['x86_64'] } })), 'seccomp.syscalls[1].includes.arches[0]', 'amd64');
    einval(() => compile(rule({ names: ['read'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SYS_WIZARD'] } })), 'seccomp.syscalls[1].includes.caps[0]');
    einval(() => compile(rule({ names: ['read'], action: 'SCMP_ACT_ALLOW', excludes: { minKernel: '4' } })), 'seccomp.syscalls[1].excludes.minKernel');
  });

  it('rejects a profile that compiles past BPF_MAXINSNS', () => {
    const args = Array.from({ length: 1000 }, (_, i) => ({ names: ['ioctl'], action: 'SCMP_ACT_ALLOW' as const, args: [{ index: 1, op: 'SCMP_CMP_EQ' as const, value: i }] }));
    einval(() => compile({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: args }), 'seccomp', '4096');
  });

  it('rejects bad options', () => {
    einval(() => compileSeccomp('default', { arch: 'riscv64' as SeccompArch, capabilities: [] }), 'arch');
    einval(() => compileSeccomp('default', { arch: 'x86_64', capabilities: ['WIZARD'] }), 'capabilities[0]');
  });
});

describe('validateSeccompOption and flags', () => {
  it('accepts the keywords and valid profiles, and rejects the rest', () => {
    expect(validateSeccompOption('seccomp', 'default')).toBe('default');
    expect(validateSeccompOption('seccomp', 'unconfined')).toBe('unconfined');
    const p = { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['ptrace'], action: 'SCMP_ACT_ERRNO' }] };
    expect(validateSeccompOption('seccomp', p)).toBe(p);
    einval(() => validateSeccompOption('seccomp', 'strict'), 'seccomp');
    einval(() => validateSeccompOption('pool.seccomp', { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['ptrace'], action: 'nope' }] }), 'pool.seccomp.syscalls[0].action');
  });

  it('reports SECCOMP_FILTER_FLAG_* bits for init', () => {
    expect(seccompFilterFlags('default')).toBe(0);
    expect(seccompFilterFlags({ defaultAction: 'SCMP_ACT_ALLOW', flags: ['SECCOMP_FILTER_FLAG_LOG', 'SECCOMP_FILTER_FLAG_SPEC_ALLOW'] })).toBe(6);
  });
});

// Property tests over every parser and option resolver: any input ends in a value or a typed
// HutchError (never another exception, never a hang). Pure: nothing on the host is touched.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HutchError } from '../lib/errors.js';
import { parseByteSize, parseDurationMs, parseRate } from '../lib/units.js';
import { parseCidr } from '../lib/network/cidr.js';
import { resolveNetwork } from '../lib/network/options.js';
import { resolveLimits, mergeExecLimits, parseCpuList } from '../lib/limits.js';
import { compileSeccomp, validateSeccompOption } from '../lib/seccomp/index.js';
import { parseUser } from '../lib/identity.js';
import { parseDockerfile } from '../lib/image/dockerfile.js';
import { resolveCommand, resolveExecOptions, resolveSandboxOptions } from '../lib/options.js';
import { resolveCapabilities } from '../lib/capabilities.js';

export const RUNS = Number(process.env.HUTCH_FUZZ_RUNS ?? 1000);

/** Calls f; a value or a HutchError passes, anything else thrown fails the property. */
export function typed<T>(f: () => T): T | HutchError {
  try {
    return f();
  } catch (e) {
    if (HutchError.is(e)) {
      expect(typeof e.code).toBe('string');
      expect(e.message.length).toBeGreaterThan(0);
      return e;
    }
    throw new Error(`not a HutchError: ${String(e)}`, { cause: e });
  }
}

/** Values that break careless formatting: `${v}` of a Symbol or of an object without a prototype, huge bigints. */
const hostile = fc.constantFrom<unknown>(
  Symbol('s'),
  Object.create(null),
  Object.assign(Object.create(null), { a: Symbol('v') }),
  [Symbol('in-array')],
  10n ** 30n,
);
const junk = fc.oneof({ weight: 1, arbitrary: hostile }, { weight: 6, arbitrary: fc.anything({ maxDepth: 2, withBigInt: true, withNullPrototype: true, withObjectString: true, withTypedArray: true, withDate: true, withMap: true, withSet: true, withSparseArray: true }) });
const unit = fc.constantFrom('', 'k', 'K', 'KiB', 'M', 'MiB', 'G', 'GiB', 'T', 'TiB', 'kB', 'MB', 'GB', 'b', 'B', 'bit', 'kbit', 'mbit', 'gbit', 'MBps', 'KBps', 'x', ' ', 'e3');
const num = fc.oneof(fc.integer({ min: -5, max: 2 ** 45 }), fc.double(), fc.constantFrom(0, -0, NaN, Infinity, -Infinity, 2 ** 64, 1.5, 0.1));
export const sizeLike = fc.oneof(
  num,
  fc.tuple(fc.oneof(fc.nat(), fc.double({ min: 0, max: 1e6, noNaN: true }), fc.constantFrom('-1', '1e3', '0x10', '.5', '1.', ' 5')), unit).map(([n, u]) => `${n}${u}`),
  fc.string({ maxLength: 12 }),
  junk,
);
const octet = fc.oneof(fc.integer({ min: 0, max: 255 }), fc.integer({ min: -1, max: 999 }));
export const cidrLike = fc.oneof(
  fc.tuple(octet, octet, octet, octet, fc.oneof(fc.integer({ min: -1, max: 40 }), fc.constant(undefined))).map(([a, b, c, d, p]) => `${a}.${b}.${c}.${d}${p === undefined ? '' : `/${p}`}`),
  fc.constantFrom('::1', '10.0.0.0/8', '0.0.0.0/0', '1.2.3.4/16', '10.0.0.01', '1.2.3', '1.2.3.4/', '/8', '010.1.1.1'),
  fc.string({ maxLength: 20 }),
);
const portLike = fc.oneof(fc.integer({ min: 40000, max: 40100 }), fc.constantFrom(0, -1, 65536, 1.5, NaN), fc.string({ maxLength: 5 }), junk);
export const networkLike = fc.oneof(
  fc.constantFrom('none', 'bridge', undefined, null, {}),
  fc.record(
    {
      mode: fc.oneof(fc.constantFrom('none', 'bridge'), junk),
      egress: sizeLike,
      ingress: sizeLike,
      outbound: fc.oneof(fc.constantFrom('none', 'nat'), junk),
      allow: fc.oneof(fc.array(cidrLike, { maxLength: 4 }), junk),
      ports: fc.oneof(fc.array(fc.record({ host: portLike, sandbox: portLike, protocol: fc.oneof(fc.constantFrom('tcp', 'udp'), junk) }, { requiredKeys: [] }), { maxLength: 3 }), junk),
      range: fc.oneof(cidrLike, junk),
      egres: junk,
    },
    { requiredKeys: [] },
  ),
  junk,
);
const SYSCALLS = ['read', 'write', 'mkdir', 'mkdirat', 'clone', 'unshare', 'ptrace', 'nope', '', 'personality', 'socket'];
const ACTIONS = ['SCMP_ACT_ALLOW', 'SCMP_ACT_ERRNO', 'SCMP_ACT_KILL', 'SCMP_ACT_KILL_PROCESS', 'SCMP_ACT_TRAP', 'SCMP_ACT_LOG', 'SCMP_ACT_TRACE', 'SCMP_ACT_NOTIFY', 'SCMP_ACT_MAYBE'];
const OPS = ['SCMP_CMP_EQ', 'SCMP_CMP_NE', 'SCMP_CMP_LT', 'SCMP_CMP_LE', 'SCMP_CMP_GT', 'SCMP_CMP_GE', 'SCMP_CMP_MASKED_EQ', 'SCMP_CMP_BOGUS'];
const argLike = fc.record({ index: fc.oneof(fc.integer({ min: -1, max: 7 }), junk), value: fc.oneof(fc.bigInt({ min: -1n, max: 2n ** 65n }), fc.integer(), fc.string({ maxLength: 8 })), valueTwo: fc.oneof(fc.integer(), junk), op: fc.oneof(fc.constantFrom(...OPS), junk) }, { requiredKeys: [] });
export const profileLike = fc.oneof(
  fc.constantFrom('default', 'unconfined', 'Default', ''),
  fc.record(
    {
      defaultAction: fc.oneof(fc.constantFrom(...ACTIONS), junk),
      defaultErrnoRet: fc.oneof(fc.integer({ min: -1, max: 5000 }), junk),
      architectures: fc.oneof(fc.array(fc.constantFrom('SCMP_ARCH_X86_64', 'SCMP_ARCH_AARCH64', 'SCMP_ARCH_X86', 'bogus')), junk),
      flags: fc.oneof(fc.array(fc.constantFrom('SECCOMP_FILTER_FLAG_LOG', 'SECCOMP_FILTER_FLAG_SPEC_ALLOW', 'bogus')), junk),
      syscalls: fc.oneof(
        fc.array(
          fc.record(
            {
              names: fc.oneof(fc.array(fc.constantFrom(...SYSCALLS), { maxLength: 4 }), junk),
              name: fc.constantFrom(...SYSCALLS),
              action: fc.oneof(fc.constantFrom(...ACTIONS), junk),
              errnoRet: fc.oneof(fc.integer({ min: -1, max: 5000 }), junk),
              args: fc.oneof(fc.array(argLike, { maxLength: 3 }), junk),
              includes: fc.oneof(fc.record({ caps: fc.array(fc.constantFrom('CAP_SYS_ADMIN', 'SYS_ADMIN', 'bogus')), minKernel: fc.constantFrom('4.8', '6.1', 'x', '99.0') }, { requiredKeys: [] }), junk),
              excludes: fc.oneof(fc.record({ arches: fc.array(fc.constantFrom('amd64', 'arm64', 'bogus')) }, { requiredKeys: [] }), junk),
            },
            { requiredKeys: [] },
          ),
          { maxLength: 5 },
        ),
        junk,
      ),
    },
    { requiredKeys: [] },
  ),
  junk,
);
export const limitsLike = fc.oneof(
  fc.record(
    {
      memory: sizeLike, memorySwap: sizeLike, cpus: fc.oneof(fc.double({ min: -1, max: 8 }), junk),
      cpuset: fc.oneof(fc.constantFrom('0', '0-1', '1', '0,1', '0-', '7', '1-0', ''), fc.string({ maxLength: 6 })),
      pids: fc.oneof(fc.integer({ min: -1, max: 10000 }), junk), disk: sizeLike,
      io: fc.oneof(fc.record({ readBps: sizeLike, writeBps: sizeLike, readIops: fc.oneof(fc.integer(), junk), writeIops: fc.oneof(fc.integer(), junk) }, { requiredKeys: [] }), junk),
      nofile: fc.oneof(fc.integer({ min: -1, max: 2 ** 21 }), junk), nproc: fc.oneof(fc.integer(), junk), fileSize: sizeLike, stack: sizeLike,
      cpuTimeMs: fc.oneof(fc.integer(), junk), timeoutMs: fc.oneof(fc.integer({ min: -1, max: 2 ** 32 }), junk), output: sizeLike, memroy: junk,
    },
    { requiredKeys: [] },
  ),
  junk,
);
export const userLike = fc.oneof(fc.integer({ min: -1, max: 2 ** 32 }), fc.tuple(fc.integer({ min: -1, max: 70000 }), fc.integer({ min: -1, max: 70000 })).map(([u, g]) => `${u}:${g}`), fc.constantFrom('root', '0', '1000:1000', ':', '1:', ':1', 'nobody'), fc.string({ maxLength: 10 }), junk);
export const pathLike = fc.oneof(fc.constantFrom('/', '/tmp', '/data', '../x', 'rel', '/proc/x', '/a/../../b', '', '/dev/null', '/etc/hosts', '\0'), fc.string({ maxLength: 16 }), junk);
export const envLike = fc.oneof(fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.string({ maxLength: 8 }), junk), { maxKeys: 4 }), junk);

describe('parsers end in a value or a HutchError', () => {
  it('ByteSize', () => {
    fc.assert(fc.property(sizeLike, (v) => {
      const r = typed(() => parseByteSize('memory', v));
      if (!HutchError.is(r)) expect(Number.isSafeInteger(r) && r >= 0).toBe(true);
    }), { numRuns: RUNS });
  });

  it('Rate', () => {
    fc.assert(fc.property(sizeLike, (v) => {
      const r = typed(() => parseRate('egress', v));
      if (!HutchError.is(r)) expect(Number.isFinite(r) && r >= 0).toBe(true);
    }), { numRuns: RUNS });
  });

  it('durations', () => {
    fc.assert(fc.property(fc.oneof(num, junk), (v) => void typed(() => parseDurationMs('timeoutMs', v))), { numRuns: RUNS });
  });

  it('CIDRs', () => {
    fc.assert(fc.property(cidrLike, (v) => {
      const r = parseCidr(v);
      if (r.ok) expect(r.cidr.prefix >= 0 && r.cidr.prefix <= 32).toBe(true);
    }), { numRuns: RUNS });
  });

  it('cpu lists', () => {
    fc.assert(fc.property(fc.string({ maxLength: 12 }), (v) => void parseCpuList(v)), { numRuns: RUNS });
  });

  it('network options (modes, rates, CIDRs, ports, ranges)', () => {
    fc.assert(fc.property(networkLike, (v) => void typed(() => resolveNetwork(v as never, 'network', { HUTCH_NET_DIR: '/nonexistent-hutch-fuzz' }))), { numRuns: RUNS });
  });

  it('limits, and their merge with exec limits', () => {
    fc.assert(fc.property(limitsLike, fc.oneof(fc.integer({ min: -1, max: 1e6 }), junk), sizeLike, (l, t, o) => {
      const r = typed(() => resolveLimits(l as never));
      if (!HutchError.is(r)) typed(() => mergeExecLimits(r, { timeoutMs: t as never, output: o as never } as never));
    }), { numRuns: RUNS });
  });

  it('seccomp profiles: validated, then compiled to BPF', () => {
    fc.assert(fc.property(profileLike, fc.oneof(fc.array(fc.constantFrom('CHOWN', 'SYS_ADMIN', 'CAP_KILL', 'bogus'), { maxLength: 3 }), junk), (p, caps) => {
      const v = typed(() => validateSeccompOption('seccomp', p));
      if (HutchError.is(v)) return;
      const prog = typed(() => compileSeccomp(v, { capabilities: caps as string[] }));
      if (Buffer.isBuffer(prog)) expect(prog.length % 8).toBe(0);
    }), { numRuns: Math.max(50, RUNS >> 1) });
  });

  it('users and capabilities', () => {
    fc.assert(fc.property(userLike, (u) => void typed(() => parseUser('user', u as never))), { numRuns: RUNS });
    fc.assert(fc.property(fc.oneof(fc.array(fc.oneof(fc.constantFrom('CHOWN', 'CAP_NET_ADMIN', 'ALL', 'sys_admin'), fc.string({ maxLength: 8 }))), junk), (c) => void typed(() => resolveCapabilities('capabilities', c))), { numRuns: RUNS });
  });

  it('commands', () => {
    fc.assert(fc.property(fc.oneof(fc.string({ maxLength: 16 }), fc.array(fc.string({ maxLength: 6 }), { maxLength: 4 }), junk), (c) => void typed(() => resolveCommand('command', c))), { numRuns: RUNS });
  });

  it('Dockerfiles', () => {
    const word = fc.constantFrom('FROM', 'RUN', 'COPY', 'ADD', 'ENV', 'ARG', 'WORKDIR', 'USER', 'CMD', 'ENTRYPOINT', 'LABEL', 'EXPOSE', 'VOLUME', 'SHELL', 'HEALTHCHECK', 'ONBUILD', 'STOPSIGNAL', 'MAINTAINER', 'from', 'BOGUS', '#', '# syntax=x', '# escape=`', '\\', '`');
    const arg = fc.oneof(fc.constantFrom('busybox', 'a AS b', '["a", "b"]', '["a"', '$X', '${X:-y}', '${X:+y}', '${', 'a=b c=d', '--from=0 a b', '--chown=1:1 a b', '<<EOF', '\\', '"', "'", '--mount=type=cache', ''), fc.string({ maxLength: 12 }));
    const line = fc.tuple(word, arg).map(([w, a]) => `${w} ${a}`);
    fc.assert(fc.property(fc.array(fc.oneof(line, fc.string({ maxLength: 20 })), { maxLength: 8 }), fc.constantFrom('\n', '\r\n', '\\\n'), (ls, nl) => void typed(() => parseDockerfile(ls.join(nl)))), { numRuns: RUNS });
  });

  it('sandbox and exec options as a whole', () => {
    const opts = fc.oneof(
      fc.record(
        {
          image: fc.oneof(fc.constantFrom('busybox', 'host', 'sha256:', 'nope:1'), junk), limits: limitsLike, network: networkLike,
          mounts: fc.oneof(fc.array(fc.record({ source: pathLike, target: pathLike, readonly: fc.oneof(fc.boolean(), junk) }, { requiredKeys: [] }), { maxLength: 2 }), junk),
          env: envLike, cwd: pathLike, user: userLike, hostname: fc.oneof(fc.string({ maxLength: 70 }), junk), readonlyRootfs: fc.oneof(fc.boolean(), junk),
          persistent: fc.oneof(fc.boolean(), junk), seccomp: profileLike, capabilities: fc.oneof(fc.array(fc.constantFrom('CHOWN', 'bogus')), junk),
          signal: fc.oneof(fc.constant(AbortSignal.abort()), junk), imgae: junk,
        },
        { requiredKeys: [] },
      ),
      junk,
    );
    fc.assert(fc.property(opts, (o) => void typed(() => resolveSandboxOptions(o))), { numRuns: RUNS });
    const exec = fc.oneof(
      fc.record(
        { stdin: fc.oneof(fc.string(), fc.uint8Array({ maxLength: 8 }), junk), env: envLike, cwd: pathLike, user: userLike, timeoutMs: fc.oneof(fc.integer(), junk), output: sizeLike, encoding: fc.oneof(fc.constantFrom('utf8', 'hex', 'base64', 'latin1', 'bogus'), junk), signal: junk, tty: junk },
        { requiredKeys: [] },
      ),
      junk,
    );
    for (const kind of ['exec', 'spawn', 'run'] as const) fc.assert(fc.property(exec, (o) => void typed(() => resolveExecOptions(o, kind))), { numRuns: RUNS });
  });
});

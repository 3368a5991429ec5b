// fast-check arbitraries for hutch's options: mostly-valid values mixed with junk.
import fc from 'fast-check';

/** Values that break careless formatting: `${v}` of a Symbol or of an object without a prototype, huge bigints. */
export const hostile = fc.constantFrom<unknown>(
  Symbol('s'),
  Object.create(null),
  Object.assign(Object.create(null), { a: Symbol('v') }),
  [Symbol('in-array')],
  10n ** 30n,
);
export const junk = fc.oneof({ weight: 1, arbitrary: hostile }, { weight: 6, arbitrary: fc.anything({ maxDepth: 2, withBigInt: true, withNullPrototype: true, withObjectString: true, withTypedArray: true, withDate: true, withMap: true, withSet: true, withSparseArray: true }) });
export const unit = fc.constantFrom('', 'k', 'K', 'KiB', 'M', 'MiB', 'G', 'GiB', 'T', 'TiB', 'kB', 'MB', 'GB', 'b', 'B', 'bit', 'kbit', 'mbit', 'gbit', 'MBps', 'KBps', 'x', ' ', 'e3');
export const num = fc.oneof(fc.integer({ min: -5, max: 2 ** 45 }), fc.double(), fc.constantFrom(0, -0, NaN, Infinity, -Infinity, 2 ** 64, 1.5, 0.1));
export const sizeLike = fc.oneof(
  num,
  fc.tuple(fc.oneof(fc.nat(), fc.double({ min: 0, max: 1e6, noNaN: true }), fc.constantFrom('-1', '1e3', '0x10', '.5', '1.', ' 5')), unit).map(([n, u]) => `${n}${u}`),
  fc.string({ maxLength: 12 }),
  junk,
);
export const octet = fc.oneof(fc.integer({ min: 0, max: 255 }), fc.integer({ min: -1, max: 999 }));
export const cidrLike = fc.oneof(
  fc.tuple(octet, octet, octet, octet, fc.oneof(fc.integer({ min: -1, max: 40 }), fc.constant(undefined))).map(([a, b, c, d, p]) => `${a}.${b}.${c}.${d}${p === undefined ? '' : `/${p}`}`),
  fc.constantFrom('::1', '10.0.0.0/8', '0.0.0.0/0', '1.2.3.4/16', '10.0.0.01', '1.2.3', '1.2.3.4/', '/8', '010.1.1.1'),
  fc.string({ maxLength: 20 }),
);
export const portLike = fc.oneof(fc.integer({ min: 40000, max: 40100 }), fc.constantFrom(0, -1, 65536, 1.5, NaN), fc.string({ maxLength: 5 }), junk);
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


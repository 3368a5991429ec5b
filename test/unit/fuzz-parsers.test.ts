// Property tests over every parser and option resolver: any input ends in a value or a typed
// HutchError (never another exception, never a hang). Pure: nothing on the host is touched.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HutchError } from '../../lib/errors.js';
import { parseByteSize, parseDurationMs, parseRate } from '../../lib/units.js';
import { parseCidr } from '../../lib/network/cidr.js';
import { resolveNetwork } from '../../lib/network/options.js';
import { resolveLimits, mergeExecLimits, parseCpuList } from '../../lib/limits.js';
import { compileSeccomp, validateSeccompOption } from '../../lib/seccomp/index.js';
import { parseUser } from '../../lib/identity.js';
import { parseDockerfile } from '../../lib/image/dockerfile.js';
import { resolveCommand, resolveExecOptions, resolveSandboxOptions } from '../../lib/options.js';
import { resolveCapabilities } from '../../lib/capabilities.js';
import { cidrLike, envLike, junk, limitsLike, networkLike, num, pathLike, profileLike, sizeLike, userLike } from '../helpers/arbitraries.js';

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

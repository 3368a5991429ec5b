/**
 * Seccomp refusals reported as violations (docs/seccomp.md, "Violations"), on the real kernel:
 * the refused call fails inside with the profile's errno, and exactly that call comes back as a
 * `Violation` (name, arch, pid inside) on the exec's result and as the sandbox's event. Init
 * holds each exec's listener and answers; these tests also attack what could hang or leak:
 * floods, forks, kills and destroys while refused calls wait, a task that tries to become a
 * supervisor of its own, profiles that refuse the calls init's exec child needs.
 * refuse.c drives the calls (built static on the host: the busybox image has no compiler).
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { promisify } from 'node:util';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, type SeccompProfile, type Violation } from '../../lib/index.js';
import { compileSeccomp, hostSeccompArch, setSeccompReporting } from '../../lib/seccomp/index.js';
import { UNREPORTED_SYSCALLS } from '../../lib/seccomp/bpf.js';
import { SYSCALLS_AARCH64, SYSCALLS_X86_64 } from '../../lib/seccomp/syscalls.generated.js';
import { decode, runFilter } from '../helpers/bpf-interp.js';
import { ARCHES, AUDIT_ARCH, DEFAULT_CAPS, TABLE } from '../helpers/seccomp-reference.js';
import { staticBinary } from '../helpers/static-c.js';
import { isRoot, needs } from '../helpers/require.js';

const here = dirname(fileURLToPath(import.meta.url));
const arch = hostSeccompArch();
const NR = arch === 'x86_64' ? SYSCALLS_X86_64 : SYSCALLS_AARCH64;
const EPERM = 1, EACCES = 13, EBUSY = 16, ENOSYS = 38;

const refuseBinary = (): Buffer => staticBinary(join(here, 'refuse.c'));

async function withRefuse(seccomp: 'default' | SeccompProfile = 'default'): Promise<Sandbox> {
  const sb = await Sandbox.create({ image: 'busybox', seccomp });
  await sb.writeFile('/refuse', refuseBinary(), { mode: 0o755 });
  return sb;
}

/** Host pids of processes whose command line has `marker` (a count no other test uses). */
function processesWith(marker: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0').includes(marker)) out.push(Number(d));
    } catch {}
  }
  return out;
}

/** Waits (up to 10 s) until `cond` holds: for a process to show up, not a timing. */
async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (cond()) return;
    await new Promise((res) => setTimeout(res, 10));
  }
  throw new Error(`gave up waiting: ${what}`);
}

const syscallViolation = (name: string, pid?: number): Partial<Violation> => ({
  kind: 'syscall',
  syscall: name,
  arch,
  reason: 'seccomp',
  ...(pid === undefined ? {} : { pid }),
});

describe('the reporting program (no kernel)', () => {
  for (const a of ARCHES) {
    it(`${a}: same instructions as the plain one but for refusals, which notify with their errno; ENOSYS and the exec child's calls stay plain`, () => {
      const plain = compileSeccomp('default', { arch: a, capabilities: DEFAULT_CAPS, kernelRelease: '6.18.0' })!;
      const report = compileSeccomp('default', { arch: a, capabilities: DEFAULT_CAPS, kernelRelease: '6.18.0', report: true })!;
      // The allowed path is the same: one instruction for another, only return values differ.
      expect(report.length).toBe(plain.length);
      const p = decode(plain), r = decode(report);
      let changed = 0;
      for (let i = 0; i < p.length; i++) {
        expect({ code: r[i]!.code, jt: r[i]!.jt, jf: r[i]!.jf }).toEqual({ code: p[i]!.code, jt: p[i]!.jt, jf: p[i]!.jf });
        if (r[i]!.k !== p[i]!.k) {
          changed++;
          expect(p[i]!.code).toBe(0x06);
          expect(p[i]!.k >>> 16).toBe(0x0005); // ERRNO
          expect(r[i]!.k >>> 0).toBe((0x7fc00000 | (p[i]!.k & 0xffff)) >>> 0);
          expect(p[i]!.k & 0xffff).not.toBe(ENOSYS);
        }
      }
      expect(changed).toBeGreaterThan(0);
      const run = (prog: Buffer, name: string, args: bigint[] = []): number => runFilter(prog, { nr: TABLE[a][name]!, arch: AUDIT_ARCH[a], args }) >>> 0;
      expect(run(report, 'add_key')).toBe((0x7fc00000 | EPERM) >>> 0);
      expect(run(report, 'clone3')).toBe((0x00050000 | ENOSYS) >>> 0);
      expect(run(report, 'getppid')).toBe(0x7fff0000);
    });
  }

  it("keeps the exec child's calls plain where a profile refuses them, so init's exec child never waits for an answer", () => {
    for (const a of ARCHES) {
      // The newest call named too: numbers past it would answer ENOSYS, never reported anyway.
      const newest = Object.entries(TABLE[a]).sort((x, y) => y[1] - x[1])[0]![0];
      const profile: SeccompProfile = { defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['read', newest], action: 'SCMP_ACT_ALLOW' }] };
      const report = compileSeccomp(profile, { arch: a, capabilities: [], kernelRelease: '6.18.0', report: true })!;
      for (const name of UNREPORTED_SYSCALLS) {
        expect(runFilter(report, { nr: TABLE[a][name]!, arch: AUDIT_ARCH[a] }) >>> 0).toBe((0x00050000 | EPERM) >>> 0);
      }
      expect(runFilter(report, { nr: TABLE[a]['getppid']!, arch: AUDIT_ARCH[a] }) >>> 0).toBe((0x7fc00000 | EPERM) >>> 0);
    }
  });

  it('is not made for a kernel before 5.10 (no POLLHUP on an unused listener)', () => {
    const old = compileSeccomp('default', { arch, capabilities: DEFAULT_CAPS, kernelRelease: '5.4.0' })!;
    const asked = compileSeccomp('default', { arch, capabilities: DEFAULT_CAPS, kernelRelease: '5.4.0', report: true })!;
    expect(asked.equals(old)).toBe(true);
  });
});

describe('refused calls, reported', () => {
  let sb: Sandbox;
  const events: Violation[] = [];
  beforeAll(async () => {
    sb = await withRefuse();
    sb.on('violation', (v: Violation) => events.push(v));
  });
  afterAll(async () => {
    await sb?.destroy();
  });

  it('add_key fails with EPERM inside and is exactly one violation, with its pid inside, on the result and as an event', async () => {
    events.length = 0;
    const p = sb.spawn(['/refuse', 'add_key', '1']);
    const chunks: Buffer[] = [];
    p.stdout.on('data', (c: Buffer) => chunks.push(c));
    const r = await p.result;
    expect(Buffer.concat(chunks).toString().trim()).toBe(`errno ${EPERM} failed 1`);
    expect(r.violations).toEqual([expect.objectContaining(syscallViolation('add_key', p.pid))]);
    expect(r.violationsDropped).toBe(0);
    expect(typeof r.violations[0]!.time).toBe('number');
    expect(events).toEqual(r.violations);
  });

  it('unshare(CLONE_NEWUSER) fails with EPERM and is reported as unshare', async () => {
    const r = await sb.exec(['/refuse', 'unshare_user'], { encoding: 'utf8' });
    expect(String(r.stdout).trim()).toBe(`errno ${EPERM}`);
    expect(r.violations).toEqual([expect.objectContaining(syscallViolation('unshare'))]);
  });

  it('an ENOSYS answer (clone3, so that libc falls back) is not a violation', async () => {
    const r = await sb.exec(['/refuse', 'call', String(NR.clone3)], { encoding: 'utf8' });
    expect(String(r.stdout).trim()).toBe(`errno ${ENOSYS} failed 1`);
    expect(r.violations).toEqual([]);
  });

  it('allowed calls are no violations', async () => {
    const r = await sb.exec(['/refuse', 'allowed', '1000'], { encoding: 'utf8' });
    expect(String(r.stdout).trim()).toBe('ok');
    expect(r.violations).toEqual([]);
  });

  it("each exec's result has its own refusals only, also when they run at the same time", async () => {
    const slow = (what: string): string[] => ['sh', '-c', `sleep 0.3; /refuse ${what}`];
    const [a, b] = await Promise.all([sb.exec(slow('add_key 2'), { encoding: 'utf8' }), sb.exec(slow('unshare_user'), { encoding: 'utf8' })]);
    expect(a.violations.map((v) => v.syscall)).toEqual(['add_key', 'add_key']);
    expect(b.violations.map((v) => v.syscall)).toEqual(['unshare']);
  });

  it("the exec's forks share its filter: each child's refusal is answered and reported with the child's pid", async () => {
    const p = sb.spawn(['/refuse', 'fork', '3', String(NR.add_key)]);
    const chunks: Buffer[] = [];
    p.stdout.on('data', (c: Buffer) => chunks.push(c));
    const r = await p.result;
    expect(Buffer.concat(chunks).toString().trim().split('\n')).toEqual(Array(3).fill(`child errno ${EPERM}`));
    expect(r.violations).toHaveLength(3);
    const pids = new Set(r.violations.map((v) => v.pid));
    expect(pids.size).toBe(3);
    expect(pids.has(p.pid)).toBe(false);
    for (const v of r.violations) expect(v).toMatchObject(syscallViolation('add_key'));
  });

  it("init closes each exec's listener once no process uses its filter (no fd left behind per exec)", async () => {
    const sleeper = sb.spawn(['sleep', '987653']);
    await until(() => processesWith('987653').length > 0, 'sleep to start');
    const ppid = Number(/^PPid:\s+(\d+)/m.exec(readFileSync(`/proc/${processesWith('987653')[0]!}/status`, 'utf8'))![1]);
    expect(readFileSync(`/proc/${ppid}/comm`, 'utf8')).toMatch(/hutch-ini/);
    const fds = (): number => readdirSync(`/proc/${ppid}/fd`).length;
    // Init's count once it holds still: the listener of an exec an earlier test made may still be
    // open for a turn (a full run once counted 11 here, then 7 after).
    let before = fds();
    for (let i = 0; i < 50; i++) {
      await new Promise((res) => setTimeout(res, 40));
      const n = fds();
      if (n === before) break;
      before = n;
    }
    for (let i = 0; i < 5; i++) expect((await sb.exec(['/refuse', 'add_key', '1'])).violations).toHaveLength(1);
    // The last listener is closed on init's next turn after the exit it reported.
    let after = fds();
    for (let i = 0; i < 100 && after !== before; i++) {
      await new Promise((res) => setTimeout(res, 20));
      after = fds();
    }
    expect(after).toBe(before);
    sleeper.kill('SIGKILL');
    await sleeper.result;
  });

  it("a task cannot become the supervisor of its own refused calls: a second listener on the filter stack is EBUSY", async () => {
    // A filter of its own with a listener would get the notifications (the newest filter's
    // USER_NOTIF wins) and could answer CONTINUE, running a call hutch refused.
    const r = await sb.exec(['/refuse', 'listener'], { encoding: 'utf8' });
    expect(String(r.stdout).trim()).toBe(`errno ${EBUSY}`);
  });
});

describe('profiles', () => {
  it('a custom profile refusing getppid with errno 13: EACCES inside, one getppid violation', async () => {
    const profile: SeccompProfile = { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['getppid'], action: 'SCMP_ACT_ERRNO', errnoRet: EACCES }] };
    const sb = await withRefuse(profile);
    try {
      const r = await sb.exec(['/refuse', 'call', String(NR.getppid)], { encoding: 'utf8' });
      expect(String(r.stdout).trim()).toBe(`errno ${EACCES} failed 1`);
      expect(r.violations).toEqual([expect.objectContaining(syscallViolation('getppid'))]);
    } finally {
      await sb.destroy();
    }
  });

  it('Sandbox.run: the result has its own task\'s violation', async () => {
    const r = await Sandbox.run({ image: 'busybox', command: ['sh', '-c', 'unshare -U true; exit 0'] });
    expect(r.exitCode).toBe(0);
    expect(r.violations).toEqual([expect.objectContaining(syscallViolation('unshare'))]);
  });

  it('a profile refusing execve: the exec fails with EPERM at once (the exec child never waits for an answer)', async () => {
    const profile: SeccompProfile = { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['execve', 'getppid'], action: 'SCMP_ACT_ERRNO' }] };
    const sb = await Sandbox.create({ image: 'busybox', seccomp: profile });
    try {
      await expect(sb.exec(['true'])).rejects.toMatchObject({ step: 'exec', errno: 'EPERM' });
      // and init still serves the sandbox
      await expect(sb.exec(['true'])).rejects.toMatchObject({ step: 'exec' });
    } finally {
      await sb.destroy();
    }
  });

  it('SCMP_ACT_KILL_PROCESS stays a kill, no violation', async () => {
    const profile: SeccompProfile = { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['getppid'], action: 'SCMP_ACT_KILL_PROCESS' }] };
    const sb = await withRefuse(profile);
    try {
      const r = await sb.exec(['/refuse', 'call', String(NR.getppid)]);
      expect(r.signal).toBe('SIGSYS');
      expect(r.violations).toEqual([]);
    } finally {
      await sb.destroy();
    }
  });

  it('with reporting off, the call is still refused, and nothing is reported', async () => {
    setSeccompReporting(false);
    let sb: Sandbox | undefined;
    try {
      sb = await withRefuse();
      const r = await sb.exec(['/refuse', 'add_key', '1'], { encoding: 'utf8' });
      expect(String(r.stdout).trim()).toBe(`errno ${EPERM} failed 1`);
      expect(r.violations).toEqual([]);
    } finally {
      setSeccompReporting(true);
      await sb?.destroy();
    }
  });
});

describe('under a supervisor of the host', () => {
  it.skipIf(needs(isRoot, 'runs node under a seccomp listener of its own, which needs root (no no_new_privs)'))(
    'hutch under a filter that already has a listener: refusals stay plain EPERM, unreported, and execs work',
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'hutch-supervise-'));
      try {
        const sup = join(dir, 'supervise');
        writeFileSync(sup, staticBinary(join(here, 'supervise.c')), { mode: 0o755 });
        const script = join(dir, 'run.mjs');
        writeFileSync(
          script,
          `import { Sandbox } from ${JSON.stringify(join(here, '../../dist/lib/index.js'))};\n` +
            `const r = await Sandbox.run({ image: 'busybox', command: ['sh', '-c', 'unshare -U true; echo rc=$?'], encoding: 'utf8' });\n` +
            `console.log(JSON.stringify({ stdout: r.stdout, stderr: r.stderr, violations: r.violations }));\n`,
        );
        const { stdout } = await promisify(execFile)(sup, [process.execPath, script], { env: process.env });
        const r = JSON.parse(stdout.trim().split('\n').at(-1)!) as { stdout: string; stderr: string; violations: Violation[] };
        expect(r.stdout.trim()).toBe('rc=1');
        expect(r.stderr).toMatch(/Operation not permitted/);
        expect(r.violations).toEqual([]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});

describe('floods', () => {
  let sb: Sandbox;
  beforeAll(async () => {
    sb = await withRefuse();
  });
  afterAll(async () => {
    await sb?.destroy();
  });

  it('a million add_key calls: each refused, reported at a bounded rate, the rest counted; the event loop stays responsive', { timeout: 600_000 }, async () => {
    const N = 1_000_000;
    let events = 0;
    const onViolation = (): void => void events++;
    sb.on('violation', onViolation);
    let maxLag = 0;
    let last = performance.now();
    const tick = setInterval(() => {
      const now = performance.now();
      maxLag = Math.max(maxLag, now - last - 50);
      last = now;
    }, 50);
    const t0 = Date.now();
    let r;
    try {
      r = await sb.exec(['/refuse', 'add_key', String(N)], { encoding: 'utf8' });
    } finally {
      clearInterval(tick);
      sb.off('violation', onViolation);
    }
    const seconds = (Date.now() - t0) / 1000;
    expect(String(r.stdout).trim()).toBe(`errno ${EPERM} failed ${N}`);
    // Every refusal is either on the result (at most 100) or counted.
    expect(r.violations).toHaveLength(100);
    expect(r.violations.length + r.violationsDropped).toBe(N);
    for (const v of r.violations) expect(v).toMatchObject(syscallViolation('add_key'));
    // The host saw a bounded number: its bucket's 100 at once and 50 a second after.
    expect(events).toBeLessThanOrEqual(100 + 50 * (seconds + 1));
    expect(maxLag).toBeLessThan(1000);
  });

  it("while one exec floods from four processes, another exec's refusal is answered and counted, and a neighbour sandbox reports its own", async () => {
    const flood = sb.spawn(['sh', '-c', 'for i in 1 2 3 4; do /refuse add_key 900000003 & done; wait']);
    const neighbour = await withRefuse();
    try {
      await new Promise((res) => setTimeout(res, 300));
      const other = await sb.exec(['/refuse', 'add_key', '1'], { encoding: 'utf8' });
      expect(String(other.stdout).trim()).toBe(`errno ${EPERM} failed 1`);
      // Listed, or counted when the flood has taken the sandbox's reporting budget: never lost.
      expect(other.violations.length + other.violationsDropped).toBe(1);
      for (const v of other.violations) expect(v).toMatchObject(syscallViolation('add_key'));
      const n = await neighbour.exec(['/refuse', 'unshare_user'], { encoding: 'utf8' });
      expect(String(n.stdout).trim()).toBe(`errno ${EPERM}`);
      expect(n.violations).toEqual([expect.objectContaining(syscallViolation('unshare'))]);
    } finally {
      flood.kill('SIGKILL');
      await neighbour.destroy();
    }
    expect((await flood.result).reason).toBe('killed');
    expect(processesWith('900000003')).toEqual([]);
  });

  it('a flood killed while its refused calls wait ends, and the sandbox serves the next exec', async () => {
    const p = sb.spawn(['/refuse', 'add_key', '900000001']);
    await until(() => processesWith('900000001').length > 0, 'the flood to start');
    await new Promise((res) => setTimeout(res, 200)); // well into its refused calls
    p.kill('SIGKILL');
    const r = await p.result;
    expect(r.reason).toBe('killed');
    const next = await sb.exec(['/refuse', 'add_key', '1'], { encoding: 'utf8' });
    expect(String(next.stdout).trim()).toBe(`errno ${EPERM} failed 1`);
    // Listed, or counted while the floods before have the sandbox's reporting budget spent.
    expect(next.violations.length + next.violationsDropped).toBe(1);
    expect(processesWith('900000001')).toEqual([]);
  });

  it('destroy while floods run (with forks) leaves no process behind', async () => {
    const own = await withRefuse();
    const a = own.spawn(['/refuse', 'add_key', '900000002']);
    const b = own.spawn(['sh', '-c', '/refuse add_key 900000002 & /refuse add_key 900000002 & wait']);
    await until(() => processesWith('900000002').length === 3, 'the three floods to start');
    await own.destroy();
    const [ra, rb] = await Promise.all([a.result, b.result]);
    expect(ra.reason).toBe('killed');
    expect(rb.reason).toBe('killed');
    expect(processesWith('900000002')).toEqual([]);
  });
});

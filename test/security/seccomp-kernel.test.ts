/**
 * Seccomp decisions seen from inside a sandbox on the real kernel, where hutch used to differ
 * from Docker: the default refuses socket(AF_ALG) and socket(AF_VSOCK) (also with garbage in
 * the high word), numbers 0x80000000..0xbfffffff answer ENOSYS instead of killing, and
 * SCMP_CMP_MASKED_EQ ignores datum bits outside the mask (a mask of 0 always matches).
 * rawsys.c makes one raw syscall per exec and prints what came back.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, type SeccompProfile } from '../../lib/index.js';
import { hostSeccompArch } from '../../lib/seccomp/index.js';
import { SYSCALLS_AARCH64, SYSCALLS_X86_64 } from '../../lib/seccomp/syscalls.generated.js';

const here = dirname(fileURLToPath(import.meta.url));
const arch = hostSeccompArch();
const NR = arch === 'x86_64' ? SYSCALLS_X86_64 : SYSCALLS_AARCH64;
const nr = (name: string): string => String(NR[name]);

function buildRawsys(): Buffer {
  const dir = mkdtempSync(join(tmpdir(), 'hutch-rawsys-'));
  try {
    const out = join(dir, 'rawsys');
    execFileSync('gcc', ['-static', '-O2', '-Wall', '-o', out, join(here, 'rawsys.c')], { stdio: ['ignore', 'ignore', 'pipe'] });
    return readFileSync(out);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function sandboxWithRawsys(seccomp: 'default' | SeccompProfile): Promise<Sandbox> {
  const sb = await Sandbox.create({ image: 'busybox', seccomp });
  await sb.writeFile('/rawsys', buildRawsys(), { mode: 0o755 });
  return sb;
}

/** One raw syscall inside; "ok", "errno NAME", or how the process ended. */
async function sys(sb: Sandbox, ...args: (string | number)[]): Promise<string> {
  const r = await sb.exec(['/rawsys', ...args.map(String)], { encoding: 'utf8' });
  if (r.reason !== 'exit' || r.exitCode !== 0) return `${r.reason} ${r.exitCode ?? r.signal} ${String(r.stderr).trim()}`.trim();
  return String(r.stdout).trim();
}

const AF_INET = 2, AF_ALG = 38, AF_VSOCK = 40, SOCK_STREAM = 1, SOCK_SEQPACKET = 5;

describe('the default profile, from inside', () => {
  let sb: Sandbox;
  beforeAll(async () => {
    sb = await sandboxWithRawsys('default');
  });
  afterAll(async () => {
    await sb?.destroy();
  });

  it('refuses socket(AF_ALG) and socket(AF_VSOCK) with EPERM, also with garbage in the high word; AF_INET works', async () => {
    expect(await sys(sb, nr('socket'), AF_ALG, SOCK_SEQPACKET, 0)).toBe('errno EPERM');
    expect(await sys(sb, nr('socket'), AF_VSOCK, SOCK_STREAM, 0)).toBe('errno EPERM');
    expect(await sys(sb, nr('socket'), `0x1${AF_ALG.toString(16).padStart(8, '0')}`, SOCK_SEQPACKET, 0)).toBe('errno EPERM');
    expect(await sys(sb, nr('socket'), `0xdead${AF_VSOCK.toString(16).padStart(8, '0')}`, SOCK_STREAM, 0)).toBe('errno EPERM');
    expect(await sys(sb, nr('socket'), AF_INET, SOCK_STREAM, 0)).toBe('ok');
    // A family the kernel does not have passes the filter and gets the kernel's answer.
    expect(await sys(sb, nr('socket'), 70, SOCK_STREAM, 0)).toBe('errno EAFNOSUPPORT');
  });

  it('answers ENOSYS for 0x80000000..0xbfffffff (no syscall of any ABI), as the kernel and runc do, and for numbers past the newest syscall', async () => {
    for (const n of ['0x80000000', '0x80000027', '0xbfffffff', '2000']) expect([n, await sys(sb, n)]).toEqual([n, 'errno ENOSYS']);
    if (arch === 'x86_64') expect(await sys(sb, '0x40000027')).toMatch(/^signal SIGSYS/);
  });
});

describe('a custom profile with SCMP_CMP_MASKED_EQ, from inside', () => {
  const profile: SeccompProfile = {
    defaultAction: 'SCMP_ACT_ALLOW',
    syscalls: [
      // mask 0: holds for every argument, whatever valueTwo says (libseccomp ignores its bits)
      { names: ['getppid'], action: 'SCMP_ACT_ERRNO', errnoRet: 13, args: [{ index: 0, op: 'SCMP_CMP_MASKED_EQ', value: 0, valueTwo: 5 }] },
      // a real mask whose datum has bits outside it: only (who & 0xff) == 0x34 counts
      { names: ['getpriority'], action: 'SCMP_ACT_ERRNO', errnoRet: 99, args: [{ index: 1, op: 'SCMP_CMP_MASKED_EQ', value: 0xff, valueTwo: 0x1234 }] },
    ],
  };
  let sb: Sandbox;
  beforeAll(async () => {
    sb = await sandboxWithRawsys(profile);
  });
  afterAll(async () => {
    await sb?.destroy();
  });

  it('mask 0 matches every call', async () => {
    expect(await sys(sb, nr('getppid'))).toBe('errno EACCES');
    expect(await sys(sb, nr('getppid'), 5)).toBe('errno EACCES');
    expect(await sys(sb, nr('getppid'), '0xffffffffffffffff')).toBe('errno EACCES');
  });

  it('a real mask compares only the bits it keeps, of the argument and of the datum', async () => {
    expect(await sys(sb, nr('getpriority'), 0, '0x34')).toBe('errno EADDRNOTAVAIL');
    expect(await sys(sb, nr('getpriority'), 0, '0x7734')).toBe('errno EADDRNOTAVAIL');
    expect(await sys(sb, nr('getpriority'), 0, 0)).toBe('ok'); // the kernel's answer: this process
    expect(await sys(sb, nr('getpriority'), 0, '0x35')).not.toBe('errno EADDRNOTAVAIL');
  });

  it('0x80000000 under an allowing default gets the kernel\'s own ENOSYS (hutch used to kill it)', async () => {
    expect(await sys(sb, '0x80000000')).toBe('errno ENOSYS');
  });
});

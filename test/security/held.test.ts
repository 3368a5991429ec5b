/**
 * Attacks that were already refused before the Security II round, kept as regression tests
 * (the "already held" list): a 32-bit syscall through `int $0x80` from a 64-bit
 * process, `listmount` of the host's mount namespace, and a setuid-root file in an image run
 * by an ordinary user inside. Each performs the attack for real and asserts the kernel's answer.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { arch, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageStore, Sandbox } from '../../lib/index.js';
import { installProbe, PROBE, probeBinary } from './probe.js';

const hostDir = mkdtempSync(join(tmpdir(), 'hutch-held-'));
afterAll(() => rmSync(hostDir, { recursive: true, force: true }));

/** The probe built for the host (the same binary the sandboxes get), in a temp file. */
function hostProbe(): string {
  const p = join(hostDir, 'probe');
  writeFileSync(p, probeBinary(), { mode: 0o755 });
  return p;
}

/** The host's mount namespace id (ioctl NS_GET_MNTNS_ID on /proc/self/ns/mnt, Linux 6.9+). */
function hostMountNsId(): string {
  return execFileSync('python3', ['-c',
    'import fcntl,os,struct\nfd=os.open("/proc/self/ns/mnt",os.O_RDONLY)\nprint(struct.unpack("Q",fcntl.ioctl(fd,0x8008b705,bytes(8)))[0])',
  ], { encoding: 'utf8' }).trim();
}

describe('already held', () => {
  let sb: Sandbox;
  let open: Sandbox;
  beforeAll(async () => {
    sb = await Sandbox.create({ image: 'busybox' });
    open = await Sandbox.create({ image: 'busybox', seccomp: 'unconfined' });
    await installProbe(sb);
    await installProbe(open);
  });
  afterAll(async () => {
    await sb?.destroy();
    await open?.destroy();
  });

  it.runIf(arch() === 'x64')('an i386 syscall through int $0x80 never runs: the process is killed', async () => {
    // The default filter kills every non-native ABI (SIGSYS); a kernel built without IA32
    // emulation (this CI machine's) refuses `int $0x80` itself with a general protection
    // fault (SIGSEGV) before seccomp sees it. Either way nothing prints "ok".
    for (const nr of ['20' /* getpid */, '310' /* unshare */, '21' /* mount */]) {
      const r = await sb.exec([PROBE, 'int80', nr], { encoding: 'utf8' });
      expect([nr, r.reason, r.signal], String(r.stdout)).toEqual([nr, 'signal', expect.stringMatching(/^SIG(SYS|SEGV)$/)]);
      expect(String(r.stdout)).not.toMatch(/^ok/);
    }
  });

  // The kernel does not show another namespace to a caller without CAP_SYS_ADMIN over it (ENOENT);
  // a filter that refuses listmount would answer EPERM first.
  it("listmount of the host's mount namespace is refused, with and without the filter", async () => {
    const id = hostMountNsId();
    expect(execFileSync(hostProbe(), ['listmount', id], { encoding: 'utf8' })).toMatch(/^ok \d+/); // the attack works from the host
    const r1 = await sb.exec([PROBE, 'listmount', id], { encoding: 'utf8' });
    expect(String(r1.stdout).trim()).toMatch(/^refused (EPERM|ENOENT)$/);
    const r2 = await open.exec([PROBE, 'listmount', id], { encoding: 'utf8' });
    expect(String(r2.stdout).trim()).toMatch(/^refused (EPERM|ENOENT)$/);
  });

  it('a setuid-root file in an image gives an ordinary user inside nothing', async () => {
    const store = ImageStore.default();
    const maker = await Sandbox.create({ image: 'busybox', persistent: true });
    let imageId: string | undefined;
    try {
      await installProbe(maker);
      const r = await maker.exec(['sh', '-c', `cp ${PROBE} /suid && chown 0:0 /suid && chmod 4755 /suid && stat -c %a /suid`], { encoding: 'utf8' });
      expect(String(r.stdout).trim()).toBe('4755');
      imageId = (await maker.commit()).id;
    } finally {
      await maker.destroy();
    }
    try {
      const run = await Sandbox.run({ image: imageId, command: ['sh', '-c', 'stat -c %a /suid; /suid ids'], user: '1000:1000', encoding: 'utf8' });
      expect(String(run.stdout).trim().split('\n')).toEqual(['4755', 'uid 1000 euid 1000 gid 1000 egid 1000']);
    } finally {
      await store.remove(imageId);
    }
  });
});

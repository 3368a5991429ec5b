/**
 * The escape suite: from inside a default sandbox (busybox image, default seccomp and
 * capabilities, root inside), each probe tries one way out and must be refused, with the
 * kernel's exact answer. A second sandbox runs the kernel-enforced subset with seccomp
 * 'unconfined': namespaces, capabilities and init's own hardening must hold without the filter.
 */
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CAPABILITIES } from '../../lib/capabilities.js';
import { HutchError, Sandbox } from '../../lib/index.js';
import { installProbe, probe, PROBE } from './probe.js';
import { hostRoot, outerSeccomp } from '../helpers/require.js';

/** Docker's default set minus AUDIT_WRITE, MKNOD and NET_RAW, by number (linux/capability.h). */
const DEFAULT_CAP_BITS = [0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 31]; // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE SYS_CHROOT SETFCAP
const capHex = (bits: number[]): string => bits.reduce((m, b) => m | (1n << BigInt(b)), 0n).toString(16).padStart(16, '0');

/** A /proc file the host kernel may not have (CONFIG_PROC_KCORE, CONFIG_MAGIC_SYSRQ, ...). */
const onHost = (p: string): boolean => existsSync(p);

type Expect = string | RegExp;

/** Attempts refused by the seccomp filter or the kernel under the default profile. */
const REFUSED: [string, string[], Expect][] = [
  ['mount(2) a tmpfs', ['mount'], 'refused EPERM'],
  ['fsopen(2), the new mount API', ['fsopen'], 'refused EPERM'],
  ['umount a masked path (/proc/kcore)', ['umount', '/proc/kcore'], 'refused EPERM'],
  ['umount the read-only /proc/sys', ['umount', '/proc/sys'], 'refused EPERM'],
  ['unshare(CLONE_NEWUSER)', ['unshare', 'user'], 'refused EPERM'],
  ['unshare(CLONE_NEWNS)', ['unshare', 'mnt'], 'refused EPERM'],
  ['unshare(CLONE_NEWNET)', ['unshare', 'net'], 'refused EPERM'],
  ...['mnt', 'user', 'pid', 'net', 'uts', 'ipc', 'cgroup'].map((ns): [string, string[], Expect] =>
    [`setns into init's ${ns} namespace`, ['setns', ns, '1'], 'refused EACCES']),
  ['setns (the call itself, on an fd of our own)', ['setns', 'mnt', 'self'], 'refused EPERM'],
  ['keyctl(2)', ['keyctl'], 'refused EPERM'],
  ['add_key(2)', ['add_key'], 'refused EPERM'],
  ['request_key(2)', ['request_key'], 'refused EPERM'],
  ['io_uring_setup(2)', ['io_uring'], 'refused EPERM'],
  ['userfaultfd(2)', ['userfaultfd'], 'refused EPERM'],
  ['bpf(2)', ['bpf'], 'refused EPERM'],
  ['perf_event_open(2)', ['perf_event_open'], 'refused EPERM'],
  ['ptrace(PTRACE_ATTACH, 1)', ['ptrace', '1'], 'refused EPERM'],
  ['process_vm_readv of init', ['process_vm_readv', '1'], 'refused EPERM'],
  ['kexec_load(2)', ['kexec_load'], 'refused EPERM'],
  ['open_by_handle_at(2) (the "shocker" attack)', ['open_by_handle_at'], 'refused EPERM'],
  ['TIOCSTI on fd 0', ['tiocsti', '0'], 'refused EPERM'],
  ['TIOCSTI on fd 1', ['tiocsti', '1'], 'refused EPERM'],
  ['TIOCSTI on fd 2', ['tiocsti', '2'], 'refused EPERM'],
  ['TIOCSTI on /dev/tty (no controlling terminal: setsid)', ['tiocsti', '/dev/tty'], 'refused ENXIO'],
  ['clone(CLONE_NEWUSER)', ['clone_newuser'], 'refused EPERM'],
  ['clone3 (ENOSYS, so libc falls back to clone)', ['clone3'], 'refused ENOSYS'],
  ['clone3(CLONE_NEWUSER)', ['clone3', 'user'], 'refused ENOSYS'],
  ['mknod a character device (/dev/mem)', ['mknod', 'char'], 'refused EPERM'],
  ['mknod a block device', ['mknod', 'block'], 'refused EPERM'],
  ['socket(AF_PACKET)', ['socket', 'packet'], 'refused EPERM'],
  ['socket(AF_INET, SOCK_RAW)', ['socket', 'raw'], 'refused EPERM'],
  ['socket(AF_VSOCK)', ['socket', 'vsock'], 'refused EPERM'],
  ['socket(AF_VSOCK) with garbage in the upper 32 bits', ['socket', 'vsock-high'], 'refused EPERM'],
  ['socket(AF_ALG)', ['socket', 'alg'], 'refused EPERM'],
  ['personality(READ_IMPLIES_EXEC)', ['personality', '0x0400000'], 'refused EPERM'],
  ['personality(ADDR_NO_RANDOMIZE)', ['personality', '0x0040000'], 'refused EPERM'],
  ['write /proc/sys/kernel/hostname', ['write', '/proc/sys/kernel/hostname', 'x'], /^refused (EACCES|EROFS)$/],
  ['write /proc/sys/vm/drop_caches', ['write', '/proc/sys/vm/drop_caches', '3'], /^refused (EACCES|EROFS)$/],
  ['write /proc/sysrq-trigger', ['write', '/proc/sysrq-trigger', 'h'], onHost('/proc/sysrq-trigger') ? /^refused (EACCES|EROFS)$/ : 'refused ENOENT'],
  ['read /proc/kcore (masked)', ['read', '/proc/kcore'], onHost('/proc/kcore') ? 'read 0' : 'refused ENOENT'],
  ['read /proc/keys (masked)', ['read', '/proc/keys'], onHost('/proc/keys') ? 'read 0' : 'refused ENOENT'],
  ['read /proc/timer_list (masked)', ['read', '/proc/timer_list'], onHost('/proc/timer_list') ? 'read 0' : 'refused ENOENT'],
  ['read /proc/sched_debug (masked)', ['read', '/proc/sched_debug'], onHost('/proc/sched_debug') ? 'read 0' : 'refused ENOENT'],
  ['list /proc/acpi (masked)', ['list', '/proc/acpi'], onHost('/proc/acpi') ? 'entries 0' : 'refused ENOENT'],
  ['list /proc/scsi (masked)', ['list', '/proc/scsi'], onHost('/proc/scsi') ? 'entries 0' : 'refused ENOENT'],
  ["read init's /proc/1/environ", ['read', '/proc/1/environ'], 'refused EACCES'],
  ["read init's /proc/1/mem", ['read', '/proc/1/mem'], 'refused EACCES'],
  ['open /proc/1/exe for writing (CVE-2019-5736)', ['open_write', '/proc/1/exe'], 'refused EACCES'],
  ['read /proc/1/exe', ['read', '/proc/1/exe'], 'refused EACCES'],
];

/** What the kernel refuses by itself: the same attempts with no seccomp filter at all. */
const REFUSED_UNCONFINED: [string, string[], Expect][] = [
  ['mount(2) a tmpfs (no CAP_SYS_ADMIN)', ['mount'], 'refused EPERM'],
  ['fsopen(2)', ['fsopen'], 'refused EPERM'],
  ['umount /proc/sys', ['umount', '/proc/sys'], 'refused EPERM'],
  ['unshare(CLONE_NEWNS)', ['unshare', 'mnt'], 'refused EPERM'],
  ...['mnt', 'user', 'pid', 'net'].map((ns): [string, string[], Expect] => [`setns into init's ${ns} namespace`, ['setns', ns, '1'], 'refused EACCES']),
  ['ptrace(PTRACE_ATTACH, 1) (init is not dumpable)', ['ptrace', '1'], 'refused EPERM'],
  ['process_vm_readv of init', ['process_vm_readv', '1'], 'refused EPERM'],
  ['kexec_load(2)', ['kexec_load'], /^refused (EPERM|ENOSYS)$/],
  // Under a pod's own filter (deploy/seccomp/hutch.json leaves it out) it is refused there first.
  ['open_by_handle_at(2)', ['open_by_handle_at'], outerSeccomp ? /^refused (EPERM|ENOSYS)$/ : 'refused EPERM'],
  ['TIOCSTI on /dev/tty', ['tiocsti', '/dev/tty'], 'refused ENXIO'],
  ['mknod a character device', ['mknod', 'char'], 'refused EPERM'],
  ['socket(AF_PACKET)', ['socket', 'packet'], 'refused EPERM'],
  ['write /proc/sys/kernel/hostname', ['write', '/proc/sys/kernel/hostname', 'x'], /^refused (EACCES|EROFS)$/],
  ["read init's /proc/1/environ", ['read', '/proc/1/environ'], 'refused EACCES'],
  ["read init's /proc/1/mem", ['read', '/proc/1/mem'], 'refused EACCES'],
  ['open /proc/1/exe for writing', ['open_write', '/proc/1/exe'], 'refused EACCES'],
];

// Under a pod's own seccomp filter, a call that filter refuses fails with its errno (ENOSYS in
// deploy/seccomp/hutch.json) before hutch's filter is asked: among filters the kernel takes the
// strictest action, and an errno is stricter than the user notification hutch's filter uses
// to report a refusal. Still refused; the pod's errno instead of hutch's.
const OUTER_REFUSAL = /^refused ENOSYS$/;

function check(line: string, want: Expect): void {
  if (outerSeccomp && want === 'refused EPERM' && OUTER_REFUSAL.test(line)) return;
  if (typeof want === 'string') expect(line).toBe(want);
  else expect(line).toMatch(want);
}

describe('escape probes under the default sandbox', () => {
  let sb: Sandbox;
  const marker = `/marker-${process.pid}`;

  beforeAll(async () => {
    process.env.HUTCH_SECURITY_TEST_SECRET = 'do-not-leak';
    try {
      sb = await Sandbox.create({ image: 'busybox' });
    } finally {
      delete process.env.HUTCH_SECURITY_TEST_SECRET;
    }
    await installProbe(sb);
    await sb.writeFile(marker, 'inside');
  });
  afterAll(async () => {
    await sb?.destroy();
  });

  for (const [what, args, want] of REFUSED) {
    it(`refuses ${what}`, async () => {
      check(await probe(sb, args), want);
    });
  }

  it('runs as root of its own user namespace, with the default capabilities, no_new_privs and the filter', async () => {
    const caps = capHex(DEFAULT_CAP_BITS);
    expect(caps).toBe('00000000800405fb');
    expect(await probe(sb, ['status'])).toBe(
      `Uid=0,0,0,0 Gid=0,0,0,0 Groups= CapInh=${'0'.repeat(16)} CapPrm=${caps} CapEff=${caps} CapBnd=${caps} CapAmb=${'0'.repeat(16)} NoNewPrivs=1 Seccomp=2`,
    );
  });

  // Host root's mapping; outside root mode the map is the caller's own range (test/rootless.test.ts).
  it.skipIf(!hostRoot)('maps root to an unprivileged host range, seen from inside and from the host', async () => {
    for (const f of ['uid_map', 'gid_map']) {
      const r = await sb.exec(['cat', `/proc/self/${f}`], { encoding: 'utf8' });
      const rows = String(r.stdout).trim().split('\n').map((l) => l.trim().split(/\s+/).map(Number));
      expect(rows).toHaveLength(1);
      const [inside, host, count] = rows[0]!;
      expect(inside).toBe(0);
      expect(count).toBe(65536);
      // Not root, and not any id a normal host user or system account has.
      expect(host).toBeGreaterThanOrEqual(65536);
    }
    // init (sandbox root) is that host uid, not 0.
    const status = readFileSync(`/proc/${sb.pid}/status`, 'utf8');
    const uid = /^Uid:\s+(\d+)/m.exec(status)![1];
    expect(Number(uid)).toBeGreaterThanOrEqual(65536);
  });

  it("sees nothing of the host: environment, devices, network, sysfs, host paths in mountinfo", async () => {
    const env = await sb.exec(['env'], { encoding: 'utf8' });
    expect(env.stdout).not.toContain('do-not-leak');
    const dev = await sb.exec(['ls', '-A', '/dev'], { encoding: 'utf8' });
    expect(String(dev.stdout).trim().split(/\s+/).sort()).toEqual(
      ['fd', 'full', 'null', 'ptmx', 'pts', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'tty', 'urandom', 'zero'],
    );
    const net = await sb.exec(['cat', '/proc/net/dev'], { encoding: 'utf8' });
    const ifaces = String(net.stdout).split('\n').slice(2).filter(Boolean).map((l) => l.trim().split(':')[0]);
    expect(ifaces).toEqual(['lo']);
    expect(await probe(sb, ['list', '/sys'])).toMatch(/^(refused ENOENT|entries 0)$/);
    const mi = await sb.exec(['cat', '/proc/self/mountinfo'], { encoding: 'utf8' });
    expect(String(mi.stdout)).not.toContain(sb.image.layersDir);
    expect(String(mi.stdout)).not.toMatch(/\/var\/lib\/hutch|\/work\//);
  });

  it('passes no fd but 0-2 to a process, up to the nofile limit', async () => {
    expect(await probe(sb, ['fds'])).toMatch(/^closed 3\.\.\d+$/);
  });

  it('starts in a cwd inside the root, and no /proc/{self,1}/fd/N, cwd or root leads out', async () => {
    expect(await probe(sb, ['cwd'])).toBe('inside /');
  });

  it('refuses a cwd of /proc/self/fd/N or /proc/1/fd/N (CVE-2024-21626: init\'s fd 4 is its scratch tmpfs)', async () => {
    for (const cwd of ['/proc/self/fd/3', '/proc/self/fd/4', '/proc/self/fd/5', '/proc/1/fd/4', '/proc/1/cwd', '/proc/1/root']) {
      const err = await sb.exec([PROBE, 'cwd'], { cwd, encoding: 'utf8' }).then(
        (r) => new Error(`cwd ${cwd} was entered: ${String(r.stdout)}`),
        (e: unknown) => e,
      );
      expect(HutchError.is(err), String(err)).toBe(true);
      expect((err as HutchError).step).toBe('cwd');
    }
  });

  it("refuses to exec a program through init's fds (/proc/self/fd/4/..., /proc/1/fd/4/...)", async () => {
    for (const path of [`/proc/self/fd/4/upper${PROBE}`, `/proc/1/fd/4/upper${PROBE}`]) {
      const err = await sb.exec([path, 'cwd'], { encoding: 'utf8' }).then(
        (r) => new Error(`${path} ran: ${String(r.stdout)}`),
        (e: unknown) => e,
      );
      expect(HutchError.is(err), String(err)).toBe(true);
      expect((err as HutchError).step).toBe('exec');
    }
  });

  it('keeps a chroot(2) escape inside the sandbox (CAP_SYS_CHROOT is in the default set)', async () => {
    expect(await probe(sb, ['chroot', marker])).toBe('inside');
  });

  it("runs init from a sealed memfd: the host can't be made to write it (CVE-2019-5736)", () => {
    let wrote = false;
    try {
      const fd = openSync(`/proc/${sb.pid}/exe`, 'r+');
      try {
        writeSync(fd, Buffer.from('x'), 0, 1, 0);
        wrote = true;
      } catch {
        // F_SEAL_WRITE
      } finally {
        closeSync(fd);
      }
    } catch {
      // ETXTBSY
    }
    expect(wrote).toBe(false);
  });

  it('survives signals to PID 1 from inside, and kill(-1)', async () => {
    for (const sig of ['9', '15', '19', '2', '1', '11']) expect(await probe(sb, ['kill', sig, '1'])).toBe('ok');
    // kill(-1) reaches every process of the sandbox but the caller and init.
    const sleeper = sb.spawn(['sleep', '60']);
    await new Promise((r) => setTimeout(r, 50));
    expect(await probe(sb, ['kill', '9', '-1'])).toBe('ok');
    expect((await sleeper.result).signal).toBe('SIGKILL');
    const r = await sb.exec(['echo', 'alive'], { encoding: 'utf8' });
    expect(r.stdout).toBe('alive\n');
    expect(sb.state).toBe('running');
    expect(() => process.kill(sb.pid, 0)).not.toThrow();
  });
});

describe('escape probes with seccomp unconfined: the kernel refuses by itself', () => {
  let sb: Sandbox;
  const marker = `/marker-${process.pid}`;

  beforeAll(async () => {
    sb = await Sandbox.create({ image: 'busybox', seccomp: 'unconfined' });
    await installProbe(sb);
    await sb.writeFile(marker, 'inside');
  });
  afterAll(async () => {
    await sb?.destroy();
  });

  for (const [what, args, want] of REFUSED_UNCONFINED) {
    it(`refuses ${what}`, async () => {
      check(await probe(sb, args), want);
    });
  }

  it('has no filter of hutch\'s, and the same capabilities', async () => {
    const caps = capHex(DEFAULT_CAP_BITS);
    // Only the filter this process itself runs under (a container's), which no child can shed.
    expect(await probe(sb, ['status'])).toMatch(new RegExp(`CapEff=${caps} CapBnd=${caps} CapAmb=0{16} NoNewPrivs=1 Seccomp=${outerSeccomp ? 2 : 0}$`));
  });

  it('keeps fds, cwd and chroot inside', async () => {
    expect(await probe(sb, ['fds'])).toMatch(/^closed 3\.\.\d+$/);
    expect(await probe(sb, ['cwd'])).toBe('inside /');
    expect(await probe(sb, ['chroot', marker])).toBe('inside');
  });

  it('a nested user namespace (allowed without the filter) gains nothing outside', async () => {
    // unshare(CLONE_NEWUSER) succeeds without seccomp: a child namespace of the sandbox's,
    // whose capabilities reach only what that namespace owns. mount still fails from it.
    expect(await probe(sb, ['unshare', 'user'])).toBe('ok');
    const r = await sb.exec(['sh', '-c', 'unshare -U -r sh -c "mount -t tmpfs none /tmp" 2>&1; echo rc=$?'], { encoding: 'utf8' });
    expect(String(r.stdout)).toMatch(/rc=[1-9]/);
  });
});

/**
 * Issue 13, hole 3: mounts holding host data (the host image's /usr, a read-only volume) are
 * locked against everything inside, and init is out of reach, whatever capabilities were
 * granted. Each attack is real: the probe calls the kernel from inside, and the host file is
 * checked from outside.
 */
const LOCK_VARIANTS: { name: string; capabilities: string[]; seccomp?: 'unconfined' }[] = [
  { name: "capabilities ['SYS_ADMIN', 'SYS_PTRACE']", capabilities: ['SYS_ADMIN', 'SYS_PTRACE'] },
  { name: "every capability and seccomp 'unconfined'", capabilities: [...CAPABILITIES], seccomp: 'unconfined' },
];

for (const v of LOCK_VARIANTS) {
  describe(`host data and init hold against ${v.name}`, () => {
    let sb: Sandbox;
    let dir: string;
    const HOST_TEXT = 'host data\n';

    beforeAll(async () => {
      // A host dir the test owns, as a read-only volume: root-owned files, one writable by
      // anyone (so only the read-only mount stands between it and a write).
      dir = mkdtempSync('/var/tmp/hutch-locked-');
      chmodSync(dir, 0o755);
      writeFileSync(join(dir, 'open'), HOST_TEXT, { mode: 0o666 });
      chmodSync(join(dir, 'open'), 0o666);
      writeFileSync(join(dir, 'root-only'), HOST_TEXT, { mode: 0o644 });
      sb = await Sandbox.create({
        image: 'host',
        capabilities: v.capabilities,
        ...(v.seccomp ? { seccomp: v.seccomp } : {}),
        mounts: [{ source: dir, target: '/vol', readonly: true }],
      });
      await installProbe(sb);
    });
    afterAll(async () => {
      await sb?.destroy();
      rmSync(dir, { recursive: true, force: true });
    });

    it('holds the capabilities it was given', async () => {
      const caps = (await probe(sb, ['status'])).match(/CapEff=([0-9a-f]+)/)![1]!;
      expect(BigInt(`0x${caps}`) & (1n << 21n)).not.toBe(0n); // CAP_SYS_ADMIN
      expect(BigInt(`0x${caps}`) & (1n << 19n)).not.toBe(0n); // CAP_SYS_PTRACE
    });

    for (const path of ['/usr', '/vol']) {
      it(`cannot make ${path} writable: mount_setattr, remount, a writable clone, umount`, async () => {
        expect(await probe(sb, ['mount_setattr', path])).toBe('refused EPERM');
        expect(await probe(sb, ['remount_rw', path])).toBe('refused EPERM');
        expect(await probe(sb, ['clone_rw', path])).toBe('refused EPERM');
        expect(await probe(sb, ['umount', path])).toBe('refused EINVAL');
        const mi = await sb.exec(['cat', '/proc/self/mountinfo'], { encoding: 'utf8' });
        const line = String(mi.stdout).split('\n').find((l) => l.split(' ')[4] === path);
        expect(line, `${path} in mountinfo`).toBeDefined();
        expect(line!.split(' ')[5]!.split(',')).toContain('ro');
      });
    }

    it('cannot append to a host file in the read-only volume; the host file is unchanged', async () => {
      expect(await probe(sb, ['append', '/vol/open'])).toBe('refused EROFS');
      expect(await probe(sb, ['append', '/vol/root-only'])).toMatch(/^refused (EROFS|EACCES)$/);
      expect(await probe(sb, ['clone_rw', '/vol', 'open'])).toBe('refused EPERM');
      expect(readFileSync(join(dir, 'open'), 'utf8')).toBe(HOST_TEXT);
      expect(readFileSync(join(dir, 'root-only'), 'utf8')).toBe(HOST_TEXT);
    });

    it('cannot ptrace init, read its memory or take its fds (init is not dumpable, for the host)', async () => {
      expect(await probe(sb, ['ptrace', '1'])).toBe('refused EPERM');
      expect(await probe(sb, ['ptrace', '1', 'seize'])).toBe('refused EPERM');
      expect(await probe(sb, ['process_vm_readv', '1'])).toBe('refused EPERM');
      expect(await probe(sb, ['read', '/proc/1/mem'])).toBe('refused EACCES');
      expect(await probe(sb, ['pidfd_getfd', '1'])).toBe('refused EPERM');
      expect(await probe(sb, ['setns', 'mnt', '1'])).toBe('refused EACCES');
      // The sandbox still works: init answers.
      expect((await sb.exec(['true'])).exitCode).toBe(0);
    });

    it('keeps SYS_PTRACE and SYS_ADMIN meaning what they meant inside', async () => {
      // A process of the sandbox's own can be traced...
      const r = await sb.exec(['sh', '-c', `sleep 30 & ${PROBE} ptrace $! seize; kill $!`], { encoding: 'utf8' });
      expect(String(r.stdout).trim()).toBe('ok');
      // ...and a tmpfs mounted, remounted read-only and back (mounts it made itself are not locked).
      const m = await sb.exec(['sh', '-c', 'mkdir -p /tmp/own && mount -t tmpfs none /tmp/own && mount -o remount,bind,ro /tmp/own && mount -o remount,bind,rw /tmp/own && touch /tmp/own/x && umount /tmp/own && echo done'], { encoding: 'utf8' });
      expect(String(m.stdout).trim(), String(m.stderr)).toBe('done');
      // ...and the hostname set (the UTS namespace is still the sandbox user namespace's).
      const h = await sb.exec(['sh', '-c', 'hostname locked-test && hostname'], { encoding: 'utf8' });
      expect(String(h.stdout).trim(), String(h.stderr)).toBe('locked-test');
      // ...and, with NET_ADMIN, its network configured (the network namespace too).
      if (v.capabilities.includes('NET_ADMIN')) {
        const n = await sb.exec(['sh', '-c', 'ip addr add 10.251.0.1/32 dev lo && ip -4 addr show dev lo | grep -c 10.251.0.1'], { encoding: 'utf8' });
        expect(String(n.stdout).trim(), String(n.stderr)).toBe('1');
      }
    });
  });
}

describe("init holds against capabilities ['SYS_PTRACE'] alone (the default filter then allows ptrace, process_vm_readv, pidfd_getfd)", () => {
  let sb: Sandbox;
  beforeAll(async () => {
    sb = await Sandbox.create({ image: 'busybox', capabilities: ['SYS_PTRACE'] });
    await installProbe(sb);
  });
  afterAll(async () => {
    await sb?.destroy();
  });

  it('cannot ptrace init, read its memory or take its control socket', async () => {
    expect(await probe(sb, ['ptrace', '1'])).toBe('refused EPERM');
    expect(await probe(sb, ['ptrace', '1', 'seize'])).toBe('refused EPERM');
    expect(await probe(sb, ['process_vm_readv', '1'])).toBe('refused EPERM');
    expect(await probe(sb, ['read', '/proc/1/mem'])).toBe('refused EACCES');
    expect(await probe(sb, ['pidfd_getfd', '1'])).toBe('refused EPERM');
    // ...while a process of its own is traced.
    const r = await sb.exec(['sh', '-c', `sleep 30 & ${PROBE} ptrace $!; kill -9 $!`], { encoding: 'utf8' });
    expect(String(r.stdout).trim()).toBe('ok');
    expect((await sb.exec(['true'])).exitCode).toBe(0);
  });
});

/**
 * Issue 13, hole 4: the host image shows host files as an unprivileged host user sees them.
 * A root-only file and directory made by the test inside the host's real /usr/local (bound
 * into every host-image sandbox with /usr) stay closed to the sandbox's root, whatever its
 * capabilities: host root is not mapped inside, so no capability applies to its files.
 */
// Needs host root to plant root-owned files in /usr/local; outside root mode the host image's
// files are not the caller's to plant.
describe.skipIf(!hostRoot)("the host image does not give the sandbox host root's ownership", () => {
  const dir = `/usr/local/hutch-test-secret-${process.pid}`;
  beforeAll(() => {
    mkdirSync(`${dir}/private`, { recursive: true, mode: 0o755 });
    chmodSync(dir, 0o755);
    writeFileSync(`${dir}/secret`, 'host secret\n', { mode: 0o600 });
    chmodSync(`${dir}/secret`, 0o600);
    writeFileSync(`${dir}/private/file`, 'in a private dir\n', { mode: 0o644 });
    chmodSync(`${dir}/private`, 0o700);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  for (const v of [
    { name: 'a default sandbox', capabilities: undefined, seccomp: undefined },
    { name: "every capability and seccomp 'unconfined'", capabilities: [...CAPABILITIES], seccomp: 'unconfined' as const },
  ]) {
    it(`${v.name} cannot read a 0600 root file nor list a 0700 root dir under /usr`, async () => {
      const sb = await Sandbox.create({ image: 'host', ...(v.capabilities ? { capabilities: v.capabilities } : {}), ...(v.seccomp ? { seccomp: v.seccomp } : {}) });
      try {
        await installProbe(sb);
        expect(await probe(sb, ['read', `${dir}/secret`])).toBe('refused EACCES');
        expect(await probe(sb, ['list', `${dir}/private`])).toBe('refused EACCES');
        expect(await probe(sb, ['read', `${dir}/private/file`])).toBe('refused EACCES');
        // Host root's files show as owned by an unmapped id (the overflow uid, nobody).
        const st = await sb.exec(['stat', '-c', '%u:%g', `${dir}/secret`, '/usr/bin/env'], { encoding: 'utf8' });
        expect(String(st.stdout).trim().split('\n')).toEqual(['65534:65534', '65534:65534']);
        // What others may read stays readable and runnable.
        expect((await sb.exec(['/usr/bin/env', 'true'])).exitCode).toBe(0);
      } finally {
        await sb.destroy();
      }
    });
  }
});

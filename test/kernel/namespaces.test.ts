import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../lib/index.js';
import { hostRoot } from '../helpers/require.js';

// Namespaces, seen from inside: what the kernel says in /proc.
describe('namespaces', () => {
  let sb: Sandbox;
  const sh = async (cmd: string) => {
    const r = await sb.exec(cmd, { encoding: 'utf8' });
    expect(r.exitCode, `${cmd}: ${r.stderr as string}`).toBe(0);
    return (r.stdout as string).trim();
  };
  beforeAll(async () => {
    sb = await Sandbox.create({ image: 'busybox', hostname: 'box-under-test' });
  });
  afterAll(() => sb.destroy());

  it('runs the command as a child of PID 1, and /proc shows only the sandbox', async () => {
    const stat = await sb.exec(['cat', '/proc/self/stat'], { encoding: 'utf8' });
    expect((stat.stdout as string).split(' ')[3]).toBe('1');
    const pids = (await sh('ls /proc | grep -E "^[0-9]+$"')).split('\n').map(Number);
    // init, the shell, ls and grep: nothing of the host
    expect(pids.length).toBeLessThanOrEqual(5);
    expect(pids).toContain(1);
    expect(await sh('cat /proc/1/cmdline | tr "\\0" " "')).toBe('hutch-init');
  });

  it('has no zombie: the setup\'s helper that ended before init began is reaped at once', async () => {
    // A fresh sandbox, looked at by its first exec and again 0.2 s later. The helper releases
    // its vfork parent before its exit is complete, so on a loaded machine the first look may
    // find it finishing its exit (state R) or just ended, with init (R) about to reap it (Z):
    // by the second look it must be gone, reaped, with no zombie left.
    const look = 'for s in /proc/[0-9]*/status; do sed -n "s/^Name:\\s*//p;s/^State:\\s*//p" $s | tr "\\n" " "; echo; done';
    const r = await Sandbox.run({ image: 'busybox', command: `${look}; echo ---; sleep 0.2; ${look}`, encoding: 'utf8' });
    const [first, second] = String(r.stdout).split('---\n').map((part) => part.trim().split('\n'));
    expect(first!.length, first!.join('; ')).toBeGreaterThan(0);
    expect(second!.filter((p) => / Z /.test(p + ' ')), second!.join('; ')).toEqual([]);
    expect(second!.some((p) => p.startsWith('node')), second!.join('; ')).toBe(false);
  });

  it('has its own hostname', async () => {
    expect(await sh('hostname')).toBe('box-under-test');
  });

  // Host root's ranges; the other modes' maps: test/runtime/rootless.test.ts.
  it.skipIf(!hostRoot)('maps root to a non-zero host uid', async () => {
    const map = (await sh('cat /proc/self/uid_map')).split(/\s+/).map(Number);
    expect(map[0]).toBe(0);
    expect(map[1]).toBeGreaterThan(0);
    expect(map[2]).toBe(65536);
    const gid = (await sh('cat /proc/self/gid_map')).split(/\s+/).map(Number);
    expect(gid[1]).toBeGreaterThan(0);
    expect(await sh('id -u')).toBe('0');
  });

  it.skipIf(!hostRoot)('gives each sandbox its own host id range, with layers showing root-owned files and the host image host root\'s as nobody', async () => {
    const { release } = await import('node:os');
    const [maj, min] = release().split('.').map(Number);
    await using other = await Sandbox.create({ image: 'host' });
    const mine = (await sh('cat /proc/self/uid_map')).split(/\s+/).map(Number);
    const theirs = ((await other.exec(['cat', '/proc/self/uid_map'], { encoding: 'utf8' })).stdout as string).trim().split(/\s+/).map(Number);
    expect(await sh('stat -c %u:%g /bin/busybox /etc/passwd')).toBe('0:0\n0:0');
    if (maj! > 6 || (maj === 6 && min! >= 8)) {
      // Per-sandbox ranges: idmapped overlay layers added one by one (6.8+).
      expect(mine[1]).not.toBe(theirs[1]);
      expect(Math.abs(mine[1]! - theirs[1]!)).toBeGreaterThanOrEqual(65536);
      // The host image's binds are not idmapped (issue 13, hole 4): host root is not mapped.
      expect(((await other.exec(['stat', '-c', '%u:%g', '/usr/bin/env'], { encoding: 'utf8' })).stdout as string).trim()).toBe('65534:65534');
    } else {
      // Older kernels: the documented fallback, one shared unprivileged range.
      expect(mine[1]).toBe(theirs[1]);
    }
  });

  it('has only lo, and it is up', async () => {
    const links = (await sh('tail -n +3 /proc/net/dev | cut -d: -f1')).split(/\s+/).filter(Boolean);
    expect(links).toEqual(['lo']);
    // lo up: a local TCP listener is reachable
    const r = await sb.exec('nc -l -p 7000 -e true & sleep 0.3; echo | nc 127.0.0.1 7000 && echo reached', { encoding: 'utf8' });
    expect(r.stdout).toContain('reached');
  });

  it('is in a new namespace of every kind (IPC objects private, etc.)', async () => {
    const { readlinkSync } = await import('node:fs');
    for (const ns of ['user', 'pid', 'mnt', 'net', 'uts', 'ipc', 'cgroup']) {
      const inside = await sh(`readlink /proc/self/ns/${ns}`);
      expect(inside, ns).toMatch(new RegExp(`^${ns}:\\[\\d+\\]$`));
      expect(inside, ns).not.toBe(readlinkSync(`/proc/self/ns/${ns}`));
    }
    // IPC: SysV objects of the host are invisible.
    expect(await sh('cat /proc/sysvipc/shm | tail -n +2 | wc -l')).toBe('0');
  });

  it('has its own cgroup namespace root', async () => {
    const lines = (await sh('cat /proc/self/cgroup')).split('\n');
    for (const l of lines) expect(l.split(':')[2]).toBe('/');
  });
});

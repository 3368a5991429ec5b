import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../lib/index.js';

describe('volumes (mounts)', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync('/tmp/hutch-vol-');
    // Host permissions apply: the sandbox's root is an unprivileged host uid, "other" here.
    chmodSync(dir, 0o777);
    writeFileSync(`${dir}/in.txt`, 'from the host', { mode: 0o644 });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('binds read-only by default', async () => {
    const r = await Sandbox.run({ image: 'busybox', mounts: [{ source: dir, target: '/data' }], command: 'cat /data/in.txt; echo x > /data/new 2>&1', encoding: 'utf8' });
    expect(r.stdout).toContain('from the host');
    expect(r.stdout + (r.stderr as string)).toMatch(/Read-only file system/);
  });

  it('keeps what a read-write volume got after the sandbox is gone, creating a missing target', async () => {
    const r = await Sandbox.run({ image: 'busybox', mounts: [{ source: dir, target: '/deep/new/dir', readonly: false }], command: 'echo kept > /deep/new/dir/out.txt', encoding: 'utf8' });
    expect(r.exitCode).toBe(0);
    expect(readFileSync(`${dir}/out.txt`, 'utf8')).toBe('kept\n');
  });

  it('binds a single file', async () => {
    const r = await Sandbox.run({ image: 'busybox', mounts: [{ source: `${dir}/in.txt`, target: '/etc/motd' }], command: 'cat /etc/motd', encoding: 'utf8' });
    expect(r.stdout).toBe('from the host');
  });

  it('mounts nosuid and nodev', async () => {
    const r = await Sandbox.run({ image: 'busybox', mounts: [{ source: dir, target: '/data' }], command: 'grep " /data " /proc/self/mountinfo', encoding: 'utf8' });
    expect(r.stdout).toMatch(/ro,nosuid,nodev/);
  });
});

describe('/dev/shm', () => {
  it('is a 64 MiB tmpfs by default (API.md: /dev/shm 64MiB), whatever the host has', async () => {
    // stat -f: the kernel's statfs of the mount, in blocks of its block size.
    const r = await Sandbox.run({ image: 'busybox', command: 'stat -f -c "%T %S %b" /dev/shm; grep " /dev/shm " /proc/self/mountinfo', encoding: 'utf8' });
    const [line, mi] = String(r.stdout).split('\n');
    const [type, bsize, blocks] = line!.split(' ');
    expect(type).toBe('tmpfs');
    expect(Number(bsize) * Number(blocks)).toBe(64 * 1024 * 1024);
    expect(mi).toMatch(/size=65536k/);
  });
});

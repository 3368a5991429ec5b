import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../lib/index.js';

describe('root filesystem', () => {
  let sb: Sandbox;
  beforeAll(async () => {
    sb = await Sandbox.create({ image: 'busybox' });
  });
  afterAll(() => sb.destroy());

  it('hides host paths such as this checkout', async () => {
    const r = await sb.exec(['ls', process.cwd()], { encoding: 'utf8' });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/No such file/);
  });

  it('leaves no trace of the old root or of host paths in mountinfo', async () => {
    const r = await sb.exec(['cat', '/proc/self/mountinfo'], { encoding: 'utf8' });
    const text = r.stdout as string;
    expect(text).toMatch(/ \/ rw,nosuid,nodev[^ ]* - overlay /);
    expect(text).not.toContain(process.env.HUTCH_ROOT!);
    expect(text).not.toContain('/var/lib');
    expect(text).not.toContain('/work');
    // Every mount point lies inside the sandbox's tree, which starts at "/".
    const points = text.trim().split('\n').map((l) => l.split(' ')[4]);
    expect(points[0]).toBe('/');
    expect(points).not.toContain('/mnt');
  });

  it('shares files between execs of one sandbox', async () => {
    await sb.exec('echo one > /tmp/shared');
    await sb.exec('echo two >> /tmp/shared');
    const r = await sb.exec(['cat', '/tmp/shared'], { encoding: 'utf8' });
    expect(r.stdout).toBe('one\ntwo\n');
  });

  it('does not carry a write over to the next sandbox', async () => {
    await sb.exec('echo secret > /root/left-behind');
    const r = await Sandbox.run({ image: 'busybox', command: 'cat /root/left-behind', encoding: 'utf8' });
    expect(r.exitCode).not.toBe(0);
    expect(r.stdout).toBe('');
  });

  it('has a minimal /dev with working nodes and a private devpts', async () => {
    const r = await sb.exec('ls /dev; head -c 4 /dev/zero | wc -c; echo x > /dev/null && echo null-ok; cat /proc/self/mountinfo | grep devpts', { encoding: 'utf8' });
    const out = r.stdout as string;
    for (const n of ['null', 'zero', 'full', 'random', 'urandom', 'tty', 'pts', 'shm', 'ptmx']) expect(out).toContain(n);
    expect(out).toContain('4\n');
    expect(out).toContain('null-ok');
    expect(out).toMatch(/devpts .*ptmxmode=666/);
  });

  it('fills the disk quota with ENOSPC', async () => {
    const small = await Sandbox.create({ image: 'busybox', limits: { disk: '4MiB' } });
    try {
      const r = await small.exec('dd if=/dev/zero of=/big bs=1M count=16', { encoding: 'utf8' });
      expect(r.exitCode).not.toBe(0);
      expect(r.stderr).toMatch(/No space left on device/);
      const df = await small.exec('ls -l /big', { encoding: 'utf8' });
      const size = Number((df.stdout as string).trim().split(/\s+/)[4]);
      expect(size).toBeLessThanOrEqual(4 * 1024 * 1024);
    } finally {
      await small.destroy();
    }
  });

  it('runs node from the host image', async () => {
    const r = await Sandbox.run({ command: ['node', '-e', 'console.log(1 + 1)'], encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('2\n');
  });

  it('keeps the host image read-only and without secrets', async () => {
    const r = await Sandbox.run({
      command: 'touch /usr/bin/x 2>&1; ls /etc/shadow /root /home 2>&1; cat /etc/hostname 2>&1; ls /proc/1/root/ | head -3',
      encoding: 'utf8',
    });
    const out = r.stdout as string;
    expect(out).toMatch(/Read-only file system/);
    expect(out).toMatch(/shadow.*No such file/);
  });

  it('honours readonlyRootfs', async () => {
    const r = await Sandbox.run({ image: 'busybox', readonlyRootfs: true, command: 'touch /x 2>&1; echo ok > /dev/shm/y && cat /dev/shm/y', encoding: 'utf8' });
    expect(r.stdout).toMatch(/Read-only file system/);
    expect(r.stdout).toMatch(/ok/);
  });

  it('writeFile and readFile work inside and create files owned by root inside', async () => {
    await sb.writeFile('/tmp/from-host', 'hello', { mode: 0o600 });
    const r = await sb.exec('ls -ln /tmp/from-host; cat /tmp/from-host', { encoding: 'utf8' });
    expect(r.stdout).toMatch(/^-rw------- +1 0 +0 .*\n?hello$/m);
    await sb.exec('echo -n back > /tmp/to-host');
    expect((await sb.readFile('/tmp/to-host')).toString()).toBe('back');
  });

  it('resolves writeFile/readFile symlinks inside the sandbox, never on the host', async () => {
    const { mkdtempSync, writeFileSync, readFileSync, rmSync } = await import('node:fs');
    const dir = mkdtempSync('/tmp/hutch-canary-');
    writeFileSync(`${dir}/canary`, 'host');
    try {
      await sb.exec(`ln -sf ${dir}/canary /tmp/link; ln -sf ../../../../../..${dir}/canary /tmp/rel`);
      // The target's directory does not exist inside: the write fails there, on the sandbox's side.
      await expect(sb.writeFile('/tmp/link', 'pwned')).rejects.toMatchObject({ code: 'ENOENT', errno: 'ENOENT' });
      expect(readFileSync(`${dir}/canary`, 'utf8')).toBe('host');
      await sb.exec(`mkdir -p ${dir}`);
      await sb.writeFile('/tmp/link', 'pwned');
      await sb.writeFile('/tmp/rel', 'pwned');
      expect(readFileSync(`${dir}/canary`, 'utf8')).toBe('host');
      // The link resolved inside: the file now exists at that path in the sandbox.
      const r = await sb.exec(['cat', `${dir}/canary`], { encoding: 'utf8' });
      expect(r.stdout).toBe('pwned');
      await expect(sb.readFile('/proc/sysrq-trigger')).rejects.toMatchObject({ code: 'ENOENT' }); // masked: not there inside
      // proc is never opened with the host's credentials, even where a file is readable.
      await expect(sb.readFile('/proc/version')).rejects.toMatchObject({ code: 'ESETUP', errno: 'EPERM' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

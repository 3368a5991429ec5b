import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { HutchError, Sandbox } from '../../lib/index.js';

// Issue 14 §4: ESETUP means setup; a missing file and a failed cleanup say what happened.
describe('error codes that say what happened', () => {
  it('readFile of a missing file is ENOENT, writeFile into a missing directory too', async () => {
    await using sb = await Sandbox.create();
    await expect(sb.readFile('/no/such/file')).rejects.toMatchObject({ code: 'ENOENT', errno: 'ENOENT', step: 'open', path: '/no/such/file' });
    await expect(sb.writeFile('/no/such/dir/f', 'x')).rejects.toMatchObject({ code: 'ENOENT', path: '/no/such/dir/f' });
    // Other kernel refusals stay ESETUP with their errno.
    await expect(sb.readFile('/')).rejects.toMatchObject({ code: 'ESETUP', step: 'open', errno: 'EISDIR' });
  });

  it('a cleanup that fails at destroy is ECLEANUP at step destroy, not ESETUP', async () => {
    const sb = await Sandbox.create();
    const dirs = (sb as unknown as { cgroup: { dirs: readonly string[] } | null }).cgroup?.dirs;
    if (!dirs?.length) throw new Error('this test needs a sandbox cgroup');
    // A mount on the sandbox's cgroup directory makes its rmdir fail with EBUSY, for real.
    const dir = dirs[0]!;
    const sub = `${dir}/hutch-test-busy`;
    mkdirSync(sub);
    execFileSync('mount', ['-t', 'tmpfs', 'busy', sub]);
    try {
      const e = await sb.destroy().then(() => undefined, (x: unknown) => x);
      expect(HutchError.is(e)).toBe(true);
      expect(e).toMatchObject({ code: 'ECLEANUP', step: 'destroy' });
      expect((e as Error).message).toMatch(/cleanup failed/);
      expect(sb.state).toBe('destroyed');
    } finally {
      execFileSync('umount', [sub]);
      try { rmdirSync(sub); } catch { /* removed with its parent below */ }
      try { rmdirSync(dir); } catch { /* already gone */ }
    }
    await Sandbox.settle();
  });

  it('an init that ends before it says ready is ESETUP at exec_init with its exit status', () => {
    // A child process whose addon runs a static busybox as init: it starts (exec succeeds)
    // and exits 127 at once ("applet not found"), without the ready record. Before issue 14
    // the pipe's EOF read as success and the sandbox was "created" with a dead init.
    const ROOT = join(import.meta.dirname, '..', '..');
    const script = `
      import { createRequire } from 'node:module';
      const addon = createRequire(import.meta.url)(${JSON.stringify(join(ROOT, 'build', 'Release', 'hutch.node'))});
      addon.setInit('/bin/busybox');
      const { Sandbox } = await import(${JSON.stringify(join(ROOT, 'dist', 'lib', 'index.js'))});
      try {
        const sb = await Sandbox.create();
        await sb.destroy();
        console.log(JSON.stringify({ created: true }));
      } catch (e) {
        console.log(JSON.stringify({ code: e.code, step: e.step, errno: e.errno, message: e.message }));
      }
      await Sandbox.settle();
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env: process.env, encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(out).toMatchObject({ code: 'ESETUP', step: 'exec_init', errno: 'ESRCH' });
    expect(out.message).toMatch(/hutch-init ended before it was ready \(exit status 127\)/);
  });
});

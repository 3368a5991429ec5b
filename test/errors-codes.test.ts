import { execFileSync } from 'node:child_process';
import { mkdirSync, rmdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { HutchError, Sandbox } from '../lib/index.js';

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
});

import { mkdtempSync, rmSync, renameSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HutchError, ImageStore, Sandbox } from '../../lib/index.js';
import { native } from '../../lib/native.js';
import { SETUP_STEPS } from '../../lib/setup-errors.js';

describe('errors', () => {
  it('HutchError has a stable shape and brand', () => {
    const e = new HutchError('EINVAL', 'x', { step: 'mount_ns', errno: 'ENOENT', path: '/p' });
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe('HutchError');
    expect(HutchError.is(e)).toBe(true);
    expect(HutchError.is(new Error('x'))).toBe(false);
    expect(e).toMatchObject({ code: 'EINVAL', step: 'mount_ns', errno: 'ENOENT', path: '/p' });
  });

  it("the addon's step list is the one lib/ knows", () => {
    expect(native().steps).toEqual([...SETUP_STEPS]);
  });

  it('rejects unknown and misspelled options naming them', async () => {
    await expect(Sandbox.create({ imgae: 'busybox' } as never)).rejects.toThrow(/unknown key 'imgae' \(did you mean 'image'\?\)/);
    await expect(Sandbox.create({ limits: { memroy: '1G' } } as never)).rejects.toThrow(/memroy.*did you mean 'memory'/);
    await expect(Sandbox.run({ image: 'busybox', command: ['true'], timeout: 5 } as never)).rejects.toThrow(/timeout.*timeoutMs/);
    await expect(Sandbox.create({ limits: { memory: 'lots' } })).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/limits\.memory/) });
    await expect(Sandbox.create({ mounts: [{ source: 'rel', target: '/x' }] })).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/mounts\[0\]\.source/) });
    await expect(Sandbox.create({ capabilities: ['CAP_SYS_ADMN'] })).rejects.toThrow(/capabilities\[0\].*SYS_ADMIN/);
    await expect(Sandbox.create({ hostname: 'bad host' })).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(Sandbox.create({ image: 'no-such-image:1' })).rejects.toMatchObject({ code: 'ENOIMAGE' });
  });

  it('rejects bad commands and exec options', async () => {
    await using sb = await Sandbox.create({ image: 'busybox' });
    await expect(sb.exec([])).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(sb.exec('')).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(sb.exec(['true'], { cwd: 'relative' })).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(sb.exec(['true'], { timeoutMs: -1 })).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(sb.exec(['true'], { stdn: 'x' } as never)).rejects.toThrow(/did you mean 'stdin'/);
  });

  it('an unknown command is ESETUP at step exec with ENOENT', async () => {
    await using sb = await Sandbox.create({ image: 'busybox' });
    const e = await sb.exec(['no-such-command']).catch((x) => x);
    expect(e).toMatchObject({ code: 'ESETUP', step: 'exec', errno: 'ENOENT', path: 'no-such-command' });
    expect(e.message).toMatch(/command not found/);
  });

  it('a bad cwd is ESETUP at step cwd', async () => {
    await using sb = await Sandbox.create({ image: 'busybox' });
    await expect(sb.exec(['true'], { cwd: '/no/such/dir' })).rejects.toMatchObject({ code: 'ESETUP', step: 'cwd', errno: 'ENOENT' });
    await expect(sb.exec(['true'], { cwd: '/bin/busybox' })).rejects.toMatchObject({ code: 'ESETUP', step: 'cwd', errno: 'ENOTDIR' });
  });

  it('a missing mount source is ESETUP at step bind naming the path', async () => {
    await expect(Sandbox.create({ image: 'busybox', mounts: [{ source: '/no/such/source', target: '/data' }] }))
      .rejects.toMatchObject({ code: 'ESETUP', step: 'bind', errno: 'ENOENT', path: '/no/such/source' });
  });

  it('refuses a mount source that reaches elsewhere through a symlink', async () => {
    const { mkdtempSync, symlinkSync, rmSync } = await import('node:fs');
    const dir = mkdtempSync('/tmp/hutch-link-');
    symlinkSync('/etc', `${dir}/etc-link`);
    try {
      await expect(Sandbox.create({ image: 'busybox', mounts: [{ source: `${dir}/etc-link`, target: '/data' }] }))
        .rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/resolves through a symlink to \/etc/) });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a step that fails inside the child reports its step, errno and path', async () => {
    // A directory cannot be mounted over a file: the child's bind step fails with ENOTDIR.
    const e = await Sandbox.create({ image: 'busybox', mounts: [{ source: '/tmp', target: '/bin/busybox' }] }).catch((x) => x);
    expect(e).toMatchObject({ code: 'ESETUP', step: 'bind', errno: 'EINVAL', path: 'bin/busybox' });
    expect(e.message).toMatch(/sandbox setup failed at bind: bin\/busybox: EINVAL/);
  });

  describe('a layer directory of the store made unusable', () => {
    let root: string;
    let store: ImageStore;
    beforeAll(() => {
      root = mkdtempSync('/tmp/hutch-errstore-');
      store = new ImageStore({ root });
    });
    afterAll(() => rmSync(root, { recursive: true, force: true }));

    it('missing: ENOIMAGE before anything is created, naming the layer', async () => {
      const r = await store.resolve('busybox');
      const dir = `${r.layersDir}/${r.lowerdirs[0]}`;
      renameSync(dir, `${dir}.gone`);
      try {
        // The first create with this store: no resolution of the image is cached (lib/plan.ts).
        await expect(Sandbox.create({ image: 'busybox', store })).rejects.toMatchObject({
          code: 'ENOIMAGE',
          message: expect.stringContaining(`lacks its layer ${r.lowerdirs[0]}`),
        });
      } finally {
        renameSync(`${dir}.gone`, dir);
      }
    });

    it('a file where the layer directory was: ESETUP at overlay with the kernel\'s errno and the layers', async () => {
      const r = await store.resolve('busybox');
      const dir = `${r.layersDir}/${r.lowerdirs[0]}`;
      renameSync(dir, `${dir}.moved`);
      writeFileSync(dir, 'not a directory\n');
      try {
        // It exists, so the store hands it on; the overlay in the setup child refuses it.
        const e = await Sandbox.create({ image: 'busybox', store }).catch((x: unknown) => x);
        // The kernel answers EINVAL ("not a directory"), on both overlay paths: lib/ picks the
        // path from the kernel version and the child never falls back (issue 14), so a real
        // EINVAL is not turned into a misleading ENOENT by a retry through mount(2).
        const errno = 'EINVAL';
        expect(e).toMatchObject({ code: 'ESETUP', step: 'overlay', errno, path: r.lowerdirs.join(':') });
        expect((e as Error).message).toMatch(new RegExp(`^sandbox setup failed at overlay: ${r.lowerdirs[0]}: ${errno}`));
      } finally {
        rmSync(dir);
        renameSync(`${dir}.moved`, dir);
      }
      // ... and the layer back in place, the same store works again.
      expect((await Sandbox.run({ image: 'busybox', store, command: 'echo ok', encoding: 'utf8' })).stdout).toBe('ok\n');
    });
  });

  it('leaves nothing behind after a failed create (fds, child processes)', async () => {
    const { readdirSync, readFileSync } = await import('node:fs');
    const children = () =>
      readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
        try {
          return readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1]!.split(' ')[1] === String(process.pid);
        } catch {
          return false;
        }
      });
    await Promise.all(Array.from({ length: 6 }, () => Sandbox.create({ image: 'busybox', mounts: [{ source: '/tmp', target: '/bin/busybox' }] }).catch(() => undefined)));
    const fds = readdirSync('/proc/self/fd').length;
    const kids = children().length;
    for (let i = 0; i < 5; i++) {
      await Sandbox.create({ image: 'busybox', mounts: [{ source: '/no/such', target: '/x' }] }).catch(() => undefined);
      await Sandbox.create({ image: 'busybox', mounts: [{ source: '/tmp', target: '/bin/busybox' }] }).catch(() => undefined);
    }
    expect(readdirSync('/proc/self/fd').length).toBe(fds);
    expect(children().length).toBe(kids);
  });
});

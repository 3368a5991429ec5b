import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageStore, Sandbox } from '../../lib/index.js';
import { diskMethod } from '../../lib/disk.js';
import { fillsAt } from '../helpers/disk.js';

describe('persistent writable layers', () => {
  let root: string;
  beforeAll(() => {
    root = mkdtempSync('/tmp/hutch-persist-');
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('uses a loop image on a store without project quotas, with ENOSPC at the quota', async () => {
    const store = new ImageStore({ root });
    expect(diskMethod(root)).toBe('loop');
    await fillsAt(store, 16);
    // nothing left: no mount, no image file
    expect(execFileSync('cat', ['/proc/self/mountinfo'], { encoding: 'utf8' })).not.toContain(root);
  });

  it('applies io limits to the device under a persistent layer, and refuses them on a tmpfs', async () => {
    const store = new ImageStore({ root });
    await expect(Sandbox.create({ image: 'busybox', store, limits: { io: { writeBps: '1MiB' } } })).rejects.toMatchObject({ code: 'EUNSUPPORTED' });
    await using sb = await Sandbox.create({ image: 'busybox', store, persistent: true, limits: { disk: '64MiB', io: { writeBps: '2MiB' } } });
    const t0 = Date.now();
    const r = await sb.exec('dd if=/dev/zero of=/f bs=1M count=4 oflag=direct 2>&1', { encoding: 'utf8' });
    expect(r.exitCode).toBe(0);
    // 4 MiB at 2 MiB/s: about 2 s (the throttle is the kernel's; bounds are loose)
    expect(Date.now() - t0).toBeGreaterThan(1200);
  }, 30_000);
});

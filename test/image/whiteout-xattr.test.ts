// A store on overlayfs (a container's own root, where a pod's store lands without an emptyDir):
// overlay refuses to make a 0:0 character device, the usual whiteout, since it would read as
// its own. hutch then writes overlay's other whiteout (an empty file marked
// user.overlay.whiteout, its directory marked user.overlay.opaque=x; Linux 6.8+), which the
// sandboxes' overlay and hutch's own image view both honour. Proven with a real overlay mount
// under the store and an image whose upper layer deletes a file of the one below.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageStore, Sandbox } from '../../lib/index.js';
import { kernelFeatures } from '../../lib/host/features.js';
import { needs, hostRoot } from '../helpers/require.js';
import { removeStore } from '../helpers/store.js';
import { xattr } from '../helpers/xattr.js';

const skip = needs(hostRoot && kernelFeatures().overlayLowerdirPlus, 'xattr whiteouts need host root (to mount the overlay under the store) and Linux 6.8+');
const work = mkdtempSync('/var/tmp/hutch-test-xwh-');
const merged = join(work, 'm');
let store: ImageStore;

// Per-sandbox id ranges need idmapped mounts of the layers, which overlayfs has not: the
// sandboxes here share one range (the error without it says to set this).
const sharedRange = process.env.HUTCH_SHARED_RANGE;
beforeAll(() => {
  if (skip) return;
  process.env.HUTCH_SHARED_RANGE = '1';
  for (const d of ['l', 'u', 'w', 'm']) mkdirSync(join(work, d));
  execFileSync('mount', ['-t', 'overlay', 'xwh', '-o', `lowerdir=${join(work, 'l')},upperdir=${join(work, 'u')},workdir=${join(work, 'w')}`, merged]);
  store = new ImageStore({ root: join(merged, 'store') });
});

afterAll(async () => {
  await Sandbox.settle();
  if (sharedRange === undefined) delete process.env.HUTCH_SHARED_RANGE;
  else process.env.HUTCH_SHARED_RANGE = sharedRange;
  if (!skip) {
    try {
      removeStore(join(merged, 'store'));
    } finally {
      execFileSync('umount', [merged]);
    }
  }
  rmSync(work, { recursive: true, force: true });
});

describe('whiteouts on a store that overlay holds', () => {
  it('a deleted file stays deleted: in the sandbox, in the layer, and for the image view', async (ctx) => {
    if (skip) return ctx.skip(skip);
    const base = await store.build({ dockerfile: 'FROM busybox\nRUN mkdir /data && echo a > /data/kept && echo b > /data/gone\n' });
    const img = await store.build({ dockerfile: `FROM ${base.id}\nRUN rm /data/gone\n` });
    // The top layer holds the xattr form, not a device: overlay under the store refused that.
    const top = store.path('layers', img.layers[img.layers.length - 1]!.slice(7));
    const st = statSync(join(top, 'data/gone'));
    expect(st.isFile() && st.size === 0).toBe(true);
    expect(xattr(join(top, 'data/gone'), 'user.overlay.whiteout')).toBe('y');
    expect(xattr(join(top, 'data'), 'user.overlay.opaque')).toBe('x');
    // The sandbox sees the lower layer's other file, and not the deleted one.
    const r = await Sandbox.run({ image: img.id, store, command: ['sh', '-c', 'ls /data; cat /data/gone 2>&1 || true'], encoding: 'utf8' });
    expect(r.stdout).toBe('kept\ncat: can\'t open \'/data/gone\': No such file or directory\n');
    // hutch's image view too: WORKDIR over the deleted name makes a directory there (over a
    // file it would be refused).
    const next = await store.build({ dockerfile: `FROM ${img.id}\nWORKDIR /data/gone\nRUN pwd > /data/gone/here\n` });
    const r2 = await Sandbox.run({ image: next.id, store, command: ['cat', '/data/gone/here'], encoding: 'utf8' });
    expect(r2.stdout).toBe('/data/gone\n');
  }, 60_000);
});

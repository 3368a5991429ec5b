// A full store disk: import, commit and build into a store on a small tmpfs (mounted by this
// test) that the operation cannot fit in. Each must fail with HutchError ESTORE (errno ENOSPC,
// a path under the store), leave no half-made image, layer, blob or temp file, give every byte
// back (statfs), and keep no fd open in the store (a deleted file's fd would pin its space).
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readlinkSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HutchError, ImageStore, Sandbox } from '../../lib/index.js';
import { tarBuffer } from '../../lib/image/tarwriter.js';
import { startRegistry } from '../helpers/registry.js';
import { isRoot, needs } from '../helpers/require.js';
import { has } from '../helpers/tools.js';

const skip = needs(isRoot, 'mounting a tmpfs and running sandboxes need root');
const MiB = 1024 * 1024;
/** Bigger than the store's whole tmpfs. */
const BIG = 40 * MiB;

let mnt = '';
let work = '';
let store: ImageStore;

beforeAll(async () => {
  if (skip) return;
  mnt = mkdtempSync('/tmp/hutch-test-storefull-');
  work = mkdtempSync('/tmp/hutch-test-storefull-work-');
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=24m,mode=0755', 'hutch-test-storefull', mnt]);
  store = new ImageStore({ root: join(mnt, 'store') });
  await store.list(); // the builtins, made before any measurement
});

afterAll(async () => {
  if (skip) return;
  await Sandbox.settle();
  execFileSync('umount', [mnt]);
  rmSync(mnt, { recursive: true, force: true });
  rmSync(work, { recursive: true, force: true });
});

function used(): number {
  const s = statfsSync(mnt);
  return (s.blocks - s.bfree) * s.bsize;
}

/** Fds of this process on the tmpfs, the store's lock file aside (a lock held only while locked). */
function fdsInStore(): string[] {
  const out: string[] = [];
  for (const n of readdirSync('/proc/self/fd')) {
    let t: string;
    try {
      t = readlinkSync(`/proc/self/fd/${n}`);
    } catch {
      continue;
    }
    if (t.startsWith(mnt + '/')) out.push(t);
  }
  return out;
}

interface Snapshot {
  images: string[];
  tags: string[];
  dirs: Record<string, string[]>;
  used: number;
}

async function snapshot(): Promise<Snapshot> {
  const images = await store.list();
  const dirs: Record<string, string[]> = {};
  for (const d of ['layers', 'layerinfo', 'blobs/sha256', 'images', 'tmp', 'sandboxes']) dirs[d] = readdirSync(store.path(d)).sort();
  return { images: images.map((i) => i.id), tags: images.flatMap((i) => i.tags).sort(), dirs, used: used() };
}

async function expectStoreFull(p: Promise<unknown>, before: Snapshot): Promise<HutchError> {
  const e = await p.then(
    () => expect.fail('the operation should have failed: the store cannot hold it'),
    (err: unknown) => err,
  );
  if (!HutchError.is(e)) throw new Error(`expected a HutchError, got ${String(e)}`, { cause: e });
  expect({ code: e.code, errno: e.errno }, e.message).toEqual({ code: 'ESTORE', errno: 'ENOSPC' });
  expect(e.path === store.root || e.path!.startsWith(store.root + '/'), `path ${e.path}`).toBe(true);
  expect(fdsInStore()).toEqual([]);
  expect(await snapshot()).toEqual(before);
  return e;
}

describe.skipIf(skip)('a full store disk', () => {
  it('import of a tarball bigger than the free space: ESTORE ENOSPC, nothing kept, space back', async () => {
    const raw = tarBuffer([{ path: 'big', type: 'file', data: Buffer.alloc(BIG, 7) }]);
    const file = join(work, 'big.tar');
    writeFileSync(file, raw);
    const before = await snapshot();
    // The raw copy (the blob) does not fit.
    await expectStoreFull(store.import(file, { tag: 'big:raw' }), before);
    // Compressed it fits as a blob; the extracted layer does not.
    writeFileSync(file, gzipSync(raw, { level: 1 }));
    await expectStoreFull(store.import(file, { tag: 'big:gz' }), before);
    rmSync(file);
    // A bad archive is still the archive's fault.
    writeFileSync(file, Buffer.alloc(4096, 0x41));
    await expect(store.import(file)).rejects.toMatchObject({ code: 'EBADIMAGE' });
    rmSync(file);
  });

  it('commit of a sandbox holding more than fits: ESTORE ENOSPC, the sandbox works, a smaller commit then succeeds', async () => {
    await using sb = await Sandbox.create({ image: 'busybox', store });
    const w = await sb.exec(`dd if=/dev/urandom of=/big bs=1M count=${BIG / MiB} 2>&1 && echo small > /small`, { encoding: 'utf8' });
    expect(w.exitCode, w.stdout as string).toBe(0);
    const before = await snapshot();
    await expectStoreFull(sb.commit({ tag: 'toobig' }), before);
    const r = await sb.exec('cat /small && ls -l /big', { encoding: 'utf8' });
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toContain('small');
    // Smaller: the layer tar and its gzipped blob fit, the extracted layer does not. The
    // extraction stops while the tar is being read: its fd must close, or the deleted tar keeps its space.
    const free = statfsSync(mnt).bavail * statfsSync(mnt).bsize;
    const mid = Math.floor((free * 0.4) / MiB);
    const m = await sb.exec(`rm /big && dd if=/dev/urandom of=/mid bs=1M count=${mid} 2>&1`, { encoding: 'utf8' });
    expect(m.exitCode, m.stdout as string).toBe(0);
    const e = await expectStoreFull(sb.commit({ tag: 'toobig' }), before);
    // Past the tar, while it is read: the blob (b-N) or the tree (l-N) hit the limit.
    expect(e.path).toMatch(/\/tmp\/op-[^/]+\/(b-\d+$|l-\d+\/mid$)/);
    await sb.exec('rm /mid');
    const img = await sb.commit({ tag: 'fits' });
    expect((await store.get('fits')).id).toBe(img.id);
    await store.remove('fits');
  });

  it('build whose COPY brings more than fits: ESTORE ENOSPC, nothing kept, space back', async () => {
    const ctx = join(work, 'ctx');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'big'), Buffer.alloc(BIG, 3));
    const before = await snapshot();
    const buildcache = readdirSync(store.path('buildcache')).sort();
    await expectStoreFull(store.build({ dockerfile: 'FROM busybox\nCOPY big /big\n', context: ctx, tag: 'built' }), before);
    expect(readdirSync(store.path('buildcache')).sort()).toEqual(buildcache);
    rmSync(ctx, { recursive: true });
  });

  it('build whose RUN writes more than fits: ESTORE ENOSPC when the step is committed, nothing kept, space back', async () => {
    const before = await snapshot();
    const buildcache = readdirSync(store.path('buildcache')).sort();
    await expectStoreFull(store.build({ dockerfile: `FROM busybox\nRUN dd if=/dev/urandom of=/big bs=1M count=${BIG / MiB}\n`, tag: 'built-run' }), before);
    expect(readdirSync(store.path('buildcache')).sort()).toEqual(buildcache);
    // The store still builds what fits.
    const img = await store.build({ dockerfile: 'FROM busybox\nRUN echo ok > /ok\n', tag: 'built-small' });
    expect((await store.get('built-small')).id).toBe(img.id);
    await store.remove('built-small');
  });

  it('a read-only store: ESTORE EROFS for import, commit and build', async () => {
    const file = join(work, 'small.tar');
    writeFileSync(file, tarBuffer([{ path: 'x', type: 'file', data: 'x' }]));
    await using sb = await Sandbox.create({ image: 'busybox', store });
    await sb.exec('echo x > /x');
    execFileSync('mount', ['-o', 'remount,ro', mnt]);
    try {
      for (const op of [() => store.import(file), () => sb.commit(), () => store.build({ dockerfile: 'FROM busybox\nENV A=1\n' })]) {
        const e = await op().then(() => undefined, (err: unknown) => err);
        expect(HutchError.is(e) && { code: e.code, errno: e.errno }, String(e)).toEqual({ code: 'ESTORE', errno: 'EROFS' });
      }
    } finally {
      execFileSync('mount', ['-o', 'remount,rw', mnt]);
    }
    expect(fdsInStore()).toEqual([]);
    rmSync(file);
  });

  it.skipIf(needs(has('docker-registry'), 'docker-registry is needed (apt-get install docker-registry)'))(
    'pull of an image whose layer does not fit (the real docker-registry on loopback): ESTORE ENOSPC, nothing kept, space back',
    async () => {
      const reg = join(work, 'registry');
      mkdirSync(reg);
      const registry = await startRegistry(reg);
      try {
        // The image is made in a store on the ordinary disk and pushed by hutch.
        const big = new ImageStore({ root: join(work, 'big-store') });
        const file = join(work, 'big.tar.gz');
        writeFileSync(file, gzipSync(tarBuffer([{ path: 'big', type: 'file', data: Buffer.alloc(BIG, 5) }]), { level: 1 }));
        const img = await big.import(file);
        const ref = `${registry.host}/test/big:1`;
        await big.push(img, ref, { insecure: true });
        const before = await snapshot();
        await expectStoreFull(store.pull(ref, { insecure: true }), before);
      } finally {
        await registry.stop();
      }
    },
    30_000,
  );
});

// Security issue, hole 6: a commit writes what the sandbox holds, not what its files claim.
// A 4 GiB sparse file in a sandbox with a 64 MiB disk limit becomes a PAX sparse entry (format
// 1.0) carrying only its data, checked with GNU tar as the reference reader; real data past
// the store's layer cap is refused (ESTORE, EFBIG) and the commit leaves nothing behind.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, openSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { ImageStore, Sandbox } from '../../lib/index.js';
import { isRoot, needs } from '../helpers/require.js';

const root = mkdtempSync('/var/tmp/hutch-test-commit-sparse-');
const store = new ImageStore({ root });
const capRoot = mkdtempSync('/var/tmp/hutch-test-commit-cap-');
const capStore = new ImageStore({ root: capRoot, maxLayerBytes: 8 * 1024 * 1024 });
const out = mkdtempSync('/var/tmp/hutch-test-commit-sparse-out-');
afterAll(async () => {
  await Sandbox.settle();
  for (const d of [root, capRoot, out]) rmSync(d, { recursive: true, force: true });
});

const skip = needs(isRoot, 'sandboxes need root');
const G = 1024 ** 3;
const MAKE_SPARSE = `truncate -s 4G /sparse && printf hello-at-1G | dd of=/sparse bs=1 seek=${G} conv=notrunc 2>/dev/null && printf tail | dd of=/sparse bs=1 seek=${4 * G - 4} conv=notrunc 2>/dev/null`;

/** The layer blob of the image's top layer, unpacked. */
async function topLayerTar(s: ImageStore, imageId: string): Promise<Buffer> {
  const rec = (await s.readRecord(imageId.slice(7)))!;
  const blob = rec.layerBlobs.at(-1)!;
  return gunzipSync(readFileSync(s.path('blobs', 'sha256', blob.digest.slice(7))));
}

function duBytes(path: string): number {
  return Number(execFileSync('du', ['-s', '-B1', path], { encoding: 'utf8' }).split('\t')[0]);
}

function readAt(path: string, offset: number, length: number): string {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(length);
    const n = readSync(fd, b, 0, length, offset);
    return b.subarray(0, n).toString();
  } finally {
    closeSync(fd);
  }
}

const fds = () => readdirSync('/proc/self/fd').length;

describe.skipIf(skip)('commit keeps holes and caps what it writes (hole 6)', () => {
  let sparseImage: string | undefined;

  it('a 4 GiB sparse file in a sandbox with disk 64MiB: a small PAX sparse 1.0 entry GNU tar reads back exactly', { timeout: 120_000 }, async () => {
    const sb = await Sandbox.create({ image: 'busybox', store, limits: { disk: '64MiB' } });
    let rssMax = 0;
    const rss0 = process.memoryUsage().rss;
    const sampler = setInterval(() => (rssMax = Math.max(rssMax, process.memoryUsage().rss)), 2);
    try {
      const r = await sb.exec(MAKE_SPARSE);
      expect(r.exitCode).toBe(0);
      const img = await sb.commit();
      sparseImage = img.id;
      clearInterval(sampler);
      const tar = await topLayerTar(store, img.id);
      expect(tar.length).toBeLessThan(1024 * 1024);
      // The pax records of format 1.0, and the map at the start of the data.
      const text = tar.toString('latin1');
      expect(text).toContain('GNU.sparse.major=1\n');
      expect(text).toContain('GNU.sparse.minor=0\n');
      expect(text).toContain('GNU.sparse.name=sparse\n');
      expect(text).toContain(`GNU.sparse.realsize=${4 * G}\n`);
      // GNU tar, the reference reader: the real name and size, the data where it was, holes kept.
      const list = spawnSync('tar', ['-tvf', '-'], { input: tar, encoding: 'utf8' });
      expect(list.status).toBe(0);
      expect(list.stdout).toMatch(new RegExp(`${4 * G} .* sparse\\n`));
      const x = spawnSync('tar', ['-xf', '-', '-C', out, 'sparse'], { input: tar });
      expect(x.status).toBe(0);
      expect(statSync(join(out, 'sparse')).size).toBe(4 * G);
      expect(readAt(join(out, 'sparse'), G, 11)).toBe('hello-at-1G');
      expect(readAt(join(out, 'sparse'), 4 * G - 4, 4)).toBe('tail');
      expect(readAt(join(out, 'sparse'), G - 8, 8)).toBe('\0'.repeat(8));
      expect(duBytes(join(out, 'sparse'))).toBeLessThan(1024 * 1024);
      // The layer directory in the store is small too, and nothing went through Node's memory.
      expect(duBytes(store.path('layers', img.layers.at(-1)!.slice(7)))).toBeLessThan(1024 * 1024);
      expect(rssMax - rss0).toBeLessThan(64 * 1024 * 1024);
    } finally {
      clearInterval(sampler);
      await sb.destroy();
    }
  });

  // Needs the extractor's reading of PAX sparse entries (helper `extract`'s tar.ts).
  it('the committed image shows the sparse file as it was, holes and all', { timeout: 60_000 }, async () => {
    expect(sparseImage).toBeDefined();
    const r = await Sandbox.run({ image: sparseImage!, store, command: `stat -c '%s %b' /sparse; dd if=/sparse bs=1 skip=${G} count=11 2>/dev/null` });
    const [size, blocks] = String(r.stdout).split('\n')[0]!.split(' ').map(Number);
    expect(size).toBe(4 * G);
    expect(blocks! * 512).toBeLessThan(1024 * 1024);
    expect(String(r.stdout)).toContain('hello-at-1G');
  });

  it('real data past the store\'s layer cap: ESTORE (EFBIG), and nothing left (no temp file, no fd, no image)', { timeout: 60_000 }, async () => {
    const sb = await Sandbox.create({ image: 'busybox', store: capStore });
    try {
      expect((await sb.exec('head -c 16777216 /dev/urandom > /data')).exitCode).toBe(0);
      const images = (await capStore.list()).length;
      const blobs = readdirSync(capStore.path('blobs', 'sha256')).length;
      const fdsBefore = fds();
      const err = await sb.commit().catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ESTORE', errno: 'EFBIG', message: expect.stringContaining('maxLayerBytes') });
      expect(fds()).toBe(fdsBefore);
      expect(readdirSync(capStore.path('tmp'))).toEqual([]);
      expect((await capStore.list()).length).toBe(images);
      expect(readdirSync(capStore.path('blobs', 'sha256')).length).toBe(blobs);
      // The sandbox runs on (thawed): a smaller layer commits.
      expect((await sb.exec('head -c 1048576 /data > /small && rm /data')).exitCode).toBe(0);
      await expect(sb.commit()).resolves.toMatchObject({ id: expect.stringMatching(/^sha256:/) });
    } finally {
      await sb.destroy();
    }
  });
});

/**
 * Images made for the cost curves: an OCI image layout directory with a busybox base layer and
 * any number of extra layers, imported into a temporary store with ImageStore.import (the same
 * path a user's image takes). Layers are plain tars written by lib/image/tarwriter.ts,
 * streamed to disk so that large images never sit in memory.
 */
import { createHash } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { ImageStore, type Image } from '../../lib/index.js';
import { hostArch } from '../../lib/image/oci.js';
import { tarChunks, type TarEntry } from '../../lib/image/tarwriter.js';

const MEDIA_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const MEDIA_CONFIG = 'application/vnd.oci.image.config.v1+json';
const MEDIA_LAYER = 'application/vnd.oci.image.layer.v1.tar';

interface Blob {
  digest: string;
  size: number;
}

function writeBlob(layout: string, chunks: Iterable<Buffer>): Blob {
  const tmp = join(layout, 'blobs', 'sha256', `.tmp-${process.pid}`);
  const hash = createHash('sha256');
  const fd = openSync(tmp, 'w');
  let size = 0;
  try {
    for (const c of chunks) {
      hash.update(c);
      let off = 0;
      while (off < c.length) off += writeSync(fd, c, off);
      size += c.length;
    }
  } finally {
    closeSync(fd);
  }
  const hex = hash.digest('hex');
  renameSync(tmp, join(layout, 'blobs', 'sha256', hex));
  return { digest: `sha256:${hex}`, size };
}

function jsonBlob(layout: string, value: unknown): Blob {
  return writeBlob(layout, [Buffer.from(JSON.stringify(value))]);
}

/** The base: busybox with the applets the benchmark runs, and the usual mount points. */
function* baseEntries(): Generator<TarEntry> {
  for (const d of ['bin', 'dev', 'etc', 'proc', 'sys', 'tmp', 'root']) yield { path: d, type: 'dir', mode: d === 'tmp' ? 0o1777 : 0o755 };
  yield { path: 'bin/busybox', type: 'file', mode: 0o755, data: readFileSync('/bin/busybox') };
  for (const applet of ['true', 'sh', 'sleep', 'cat']) yield { path: `bin/${applet}`, type: 'symlink', linkpath: 'busybox' };
}

/** Writes an OCI layout with the base layer and the given extra layers; returns its directory. */
export function writeLayout(dir: string, extra: (() => Iterable<TarEntry>)[]): string {
  mkdirSync(join(dir, 'blobs', 'sha256'), { recursive: true });
  writeFileSync(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const layers = [writeBlob(dir, tarChunks(baseEntries())), ...extra.map((e) => writeBlob(dir, tarChunks(e())))];
  const config = jsonBlob(dir, {
    architecture: hostArch(),
    os: 'linux',
    config: { Env: ['PATH=/bin'] },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
  });
  const manifest = jsonBlob(dir, {
    schemaVersion: 2,
    mediaType: MEDIA_MANIFEST,
    config: { mediaType: MEDIA_CONFIG, ...config },
    layers: layers.map((l) => ({ mediaType: MEDIA_LAYER, ...l })),
  });
  writeFileSync(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: MEDIA_MANIFEST, ...manifest }] }));
  return dir;
}

/** An image of 1 + (n - 1) layers: the base and n - 1 layers of one tiny distinct file each. */
export async function layeredImage(store: ImageStore, work: string, n: number): Promise<Image> {
  const extra = Array.from({ length: n - 1 }, (_, i) => () => [
    { path: 'layers', type: 'dir', mode: 0o755 } as TarEntry,
    { path: `layers/${i + 1}`, type: 'file', mode: 0o644, data: `layer ${i + 1}\n` } as TarEntry,
  ]);
  const dir = writeLayout(join(work, `layout-layers-${n}`), extra);
  return store.import(dir, { tag: `bench-layers:${n}` });
}

/** An image with the base layer and a second layer of `mib` one-MiB files (distinct bytes each). */
export async function sizedImage(store: ImageStore, work: string, mib: number): Promise<Image> {
  const files = function* (): Generator<TarEntry> {
    yield { path: 'data', type: 'dir', mode: 0o755 };
    const buf = Buffer.alloc(1048576);
    for (let i = 0; i < mib; i++) {
      buf.writeUInt32LE(i, 0);
      buf.fill(i & 0xff, 4);
      yield { path: `data/f${i}`, type: 'file', mode: 0o644, data: buf };
    }
  };
  const dir = writeLayout(join(work, `layout-size-${mib}`), mib > 0 ? [files] : []);
  return store.import(dir, { tag: `bench-size:${mib}` });
}

import { createHash } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { join, posix } from 'node:path';
import { Readable } from 'node:stream';
import { HutchError, invalid } from '../errors.js';
import { digestHex, fileChunks, openBlob, sha256hex, writeFully, type BlobReading, type Compression } from './blob.js';
import {
  CONFIG_TYPES,
  DEFAULT_PATH,
  INDEX_TYPES,
  MANIFEST_TYPES,
  diffIds,
  layerCompression,
  pickManifest,
  synthConfig,
  toImageConfig,
  descriptor,
  type Descriptor,
} from './oci.js';
import { LayerExtractor, bad, readTar, type LayerStats } from './tar.js';
import { MEDIA, type BlobRef, type ImageConfig, type Progress } from './types.js';
import { tagProblem } from './records.js';
import type { Op, PendingImage, PendingLayer, StoreContext } from './context.js';

/** Defined in context.ts, which every part of the store shares. */
export type { PendingImage, PendingLayer } from './context.js';

type OnProgress = ((p: Progress) => void) | undefined;

const MAX_JSON = 4 * 1024 * 1024;
let seq = 0;

/**
 * Verifies one layer blob, then extracts it into the op dir. When the caller expects a digest,
 * size or diff id (every blob of an image archive or a pull), two passes: the first copies the
 * blob into the op dir (a 0600 file of hutch's own) while hashing it, and the checks run — a
 * blob that fails is refused before any of it is extracted; the second extracts from that
 * verified copy, never from the source again. With a blob digest the first pass hashes the
 * raw bytes only (the digest authenticates the blob; its diff id is checked as the second pass
 * extracts it, in the op dir); without one (docker save) it also decompresses to check the diff
 * id first. A layer the store already has (same diff id) is only verified and kept. With
 * nothing to check against (hutch's own layers: commit, builtins) one pass extracts.
 */
export async function extractLayer(
  store: StoreContext,
  op: Op,
  chunks: AsyncIterable<Buffer> | (() => AsyncIterable<Buffer>),
  o: { compression?: Compression; mediaType?: string; expectDigest?: string; expectSize?: number; expectDiffId?: string; label: string; onProgress?: OnProgress },
): Promise<PendingLayer> {
  const n = seq++;
  const blobFile = join(op.dir, `b-${n}`);
  const tree = join(op.dir, `l-${n}`);
  const source = typeof chunks === 'function' ? chunks() : chunks;
  const expectDiffHex = o.expectDiffId === undefined ? undefined : digestHex(o.expectDiffId, `${o.label} diff id`);
  const verifyFirst = o.expectDigest !== undefined || o.expectSize !== undefined || expectDiffHex !== undefined;
  const rawOnly = o.expectDigest !== undefined;
  const total = o.expectSize !== undefined ? { total: o.expectSize } : {};
  const blobReading = (from: AsyncIterable<Buffer>, compression: Compression | undefined, onRaw: (c: Buffer) => void, hashRaw = true) =>
    openBlob(from, { compression, maxBytes: store.limits.maxBytes, label: o.label, onRaw, hashRaw });
  const extract = async (plain: AsyncIterable<Buffer>): Promise<LayerStats> => {
    const ex = new LayerExtractor(tree, { shift: store.shift(), limits: store.limits, label: o.label });
    try {
      await readTar(plain, (e) => ex.entry(e), o.label);
      return await ex.finish();
    } finally {
      ex.close();
    }
  };
  const diffMismatch = (hex: string) => new HutchError('EBADIMAGE', `${o.label}: diff id mismatch: the layer hashes to sha256:${hex}, the config says ${o.expectDiffId}`);

  // Pass 1: the copy, the hashes and (with nothing to verify) the extraction.
  const raw = { hash: createHash('sha256'), bytes: 0 };
  let reading: BlobReading | undefined;
  let stats: LayerStats | null = null;
  const fd = openSync(blobFile, 'wx', 0o600);
  const keep = (c: Buffer) => {
    raw.bytes += c.length;
    if (o.expectSize !== undefined && raw.bytes > o.expectSize) {
      // A source that sends more than the descriptor says is cut off here, not read to its end.
      throw new HutchError('EBADIMAGE', `${o.label}: size mismatch: the blob has more than the ${o.expectSize} bytes the manifest says`);
    }
    raw.hash.update(c);
    writeFully(fd, c, blobFile);
    o.onProgress?.({ phase: verifyFirst ? 'verify' : 'extract', current: raw.bytes, ...total });
  };
  try {
    if (rawOnly) for await (const c of source) keep(c);
    else {
      reading = await blobReading(source, o.compression, keep);
      if (verifyFirst) for await (const _ of reading.plain) void _;
      else stats = await extract(reading.plain);
    }
  } finally {
    closeSync(fd);
  }
  const digest = `sha256:${raw.hash.digest('hex')}`;
  let diffHex = reading?.diff.hash.digest('hex');
  if (o.expectSize !== undefined && raw.bytes !== o.expectSize) {
    throw new HutchError('EBADIMAGE', `${o.label}: size mismatch: the blob has ${raw.bytes} bytes, the manifest says ${o.expectSize}`);
  }
  if (o.expectDigest !== undefined && digest !== o.expectDigest) {
    throw new HutchError('EBADIMAGE', `${o.label}: digest mismatch: the blob hashes to ${digest}, the manifest says ${o.expectDigest}`);
  }
  if (expectDiffHex !== undefined && diffHex !== undefined && diffHex !== expectDiffHex) throw diffMismatch(diffHex);
  const blob = (c: Compression) => ({
    digest,
    size: raw.bytes,
    mediaType: o.mediaType ?? (c === 'gzip' ? MEDIA.ociLayerGzip : c === 'zstd' ? MEDIA.ociLayerZstd : MEDIA.ociLayer),
  });
  if (!verifyFirst) return { diffHex: diffHex!, blob: blob(reading!.compression), blobFile, tree, stats };

  // Pass 2: from the verified copy. A layer the store has is only checked against its diff id.
  const present = expectDiffHex !== undefined && store.hasLayer(expectDiffHex) && (await op.pin(expectDiffHex));
  if (present && diffHex !== undefined) return { diffHex, blob: blob(reading!.compression), blobFile, tree: null, stats: null };
  const again = await blobReading(fileChunks(blobFile), o.compression ?? reading?.compression, () =>
    o.onProgress?.({ phase: present ? 'verify' : 'extract', current: again ? again.raw.bytes : 0, ...total }),
    false,
  );
  if (present) for await (const _ of again.plain) void _;
  else stats = await extract(again.plain);
  const hex = again.diff.hash.digest('hex');
  if (expectDiffHex !== undefined && hex !== expectDiffHex) throw diffMismatch(hex);
  if (diffHex !== undefined && hex !== diffHex) throw new HutchError('EBADIMAGE', `${o.label}: the verified copy of the blob changed while it was extracted`);
  diffHex = hex;
  return { diffHex, blob: blob(again.compression), blobFile, tree: present ? null : tree, stats: present ? null : stats };
}

/** An image made of one rootfs layer, with a synthesized config. */
function rootfsImage(layer: PendingLayer, config: { Env: string[]; Cmd?: string[] }): PendingImage {
  const configBytes = synthConfig([`sha256:${layer.diffHex}`], config);
  return {
    configBytes,
    configDigest: `sha256:${sha256hex(configBytes)}`,
    configMediaType: MEDIA.ociConfig,
    config: toImageConfig({ config }, 'generated config'),
    layers: [layer],
    tags: [],
    hostBinds: [],
  };
}

export { rootfsImage };

/** Imports a path or a stream; see ImageStore.import. */
export async function importSource(store: StoreContext, op: Op, source: string | NodeJS.ReadableStream, onProgress: OnProgress): Promise<PendingImage> {
  if (typeof source === 'string') {
    let st;
    try {
      st = await fsp.stat(source);
    } catch (e) {
      throw new HutchError('ENOIMAGE', `cannot read ${source}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { path: source, cause: e });
    }
    if (st.isDirectory()) return importDir(store, op, source, false, onProgress);
    return importStream(store, op, fileChunks(source), source, onProgress, st.size);
  }
  if (source === null || typeof source !== 'object' || typeof (source as Readable).on !== 'function') {
    throw invalid('source', 'a file or directory path, or a readable stream', source);
  }
  return importStream(store, op, source as unknown as AsyncIterable<Buffer>, 'stream', onProgress, undefined);
}

/**
 * One pass over a tar (plain or gzip), extracted with the layer rules and the raw bytes kept.
 * A tree with `manifest.json`, `index.json` or `oci-layout` at its top is an image archive
 * (docker save, OCI layout) and is then read as a layout; anything else is a rootfs, its
 * one layer, with the raw bytes as the layer's blob.
 */
async function importStream(store: StoreContext, op: Op, chunks: AsyncIterable<Buffer>, label: string, onProgress: OnProgress, total: number | undefined): Promise<PendingImage> {
  const rawFile = join(op.dir, 'raw');
  const tree = join(op.dir, 'rootfs');
  const fd = openSync(rawFile, 'wx', 0o600);
  let reading: BlobReading | undefined;
  let stats: LayerStats;
  let ex: LayerExtractor | undefined;
  try {
    reading = await openBlob(chunks, {
      maxBytes: store.limits.maxBytes,
      label,
      onRaw: (c) => {
        writeFully(fd, c, rawFile);
        onProgress?.({ phase: 'extract', current: reading ? reading.raw.bytes : 0, ...(total !== undefined ? { total } : {}) });
      },
    });
    ex = new LayerExtractor(tree, { shift: store.shift(), limits: store.limits, label });
    const x = ex;
    await readTar(reading.plain, (e) => x.entry(e), label);
    stats = await x.finish();
  } finally {
    ex?.close();
    closeSync(fd);
  }
  for (const marker of ['manifest.json', 'index.json', 'oci-layout']) {
    if (await exists(join(tree, marker))) {
      await fsp.rm(rawFile, { force: true });
      return importDir(store, op, tree, true, onProgress);
    }
  }
  const layer: PendingLayer = {
    diffHex: reading.diff.hash.digest('hex'),
    blob: {
      digest: `sha256:${reading.raw.hash.digest('hex')}`,
      size: reading.raw.bytes,
      mediaType: reading.compression === 'gzip' ? MEDIA.ociLayerGzip : reading.compression === 'zstd' ? MEDIA.ociLayerZstd : MEDIA.ociLayer,
    },
    blobFile: rawFile,
    tree,
    stats,
  };
  return rootfsImage(layer, { Env: [DEFAULT_PATH] });
}

/**
 * A file inside an image directory. For an archive staged by hutch (`confined`), symlinks
 * (docker save shares layers that way) are resolved by hand and must stay inside.
 */
async function locate(dir: string, rel: string, confined: boolean, what: string): Promise<string> {
  const parts = rel.split('/').filter((p) => p !== '' && p !== '.');
  if (rel.startsWith('/') || parts.includes('..')) throw bad(what, rel, 'points outside the image');
  if (!confined) {
    const p = join(dir, ...parts);
    const st = await fsp.stat(p).catch(() => undefined);
    if (!st) throw new HutchError('EBADIMAGE', `${what}: ${JSON.stringify(rel)} is missing`, { path: rel });
    // A FIFO or device would hold a reader (a pool thread) for as long as its writer likes.
    if (!st.isFile()) throw bad(what, rel, 'is not a regular file');
    return p;
  }
  let cur = parts.join('/');
  for (let hops = 0; hops < 16; hops++) {
    const p = join(dir, cur);
    let st;
    try {
      st = await fsp.lstat(p);
    } catch {
      throw new HutchError('EBADIMAGE', `${what}: ${JSON.stringify(rel)} is missing from the archive`, { path: rel });
    }
    if (st.isFile()) return p;
    if (!st.isSymbolicLink()) throw bad(what, rel, 'is not a regular file');
    const target = await fsp.readlink(p);
    const next = posix.normalize(posix.join(posix.dirname(cur), target));
    if (target.startsWith('/') || next === '..' || next.startsWith('../')) throw bad(what, rel, `is a symlink to ${JSON.stringify(target)}, outside the archive`);
    cur = next;
  }
  throw bad(what, rel, 'is a symlink loop');
}

async function readSmall(path: string, what: string, rel: string): Promise<Buffer> {
  let h;
  try {
    h = await fsp.open(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new HutchError('EBADIMAGE', `${what}: ${JSON.stringify(rel)} is ${code === 'ENOENT' ? 'missing' : `unreadable (${code})`}`, { path: rel, cause: e });
  }
  try {
    const st = await h.stat();
    if (st.size > MAX_JSON) throw new HutchError('EBADIMAGE', `${what}: ${JSON.stringify(rel)} is ${st.size} bytes, too large for a manifest or config`);
    return await h.readFile();
  } finally {
    await h.close();
  }
}

function parseJson(buf: Buffer, what: string): unknown {
  try {
    return JSON.parse(buf.toString('utf8'));
  } catch (e) {
    throw new HutchError('EBADIMAGE', `${what}: not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

function blobPath(desc: Descriptor, what: string): string {
  return `blobs/sha256/${digestHex(desc.digest, what)}`;
}

/** Reads a small blob and checks its digest and size against the descriptor. */
async function readBlob(dir: string, confined: boolean, desc: Descriptor, what: string): Promise<Buffer> {
  const rel = blobPath(desc, what);
  const buf = await readSmall(await locate(dir, rel, confined, what), what, rel);
  if (`sha256:${sha256hex(buf)}` !== desc.digest) throw new HutchError('EBADIMAGE', `${what}: digest mismatch for ${rel}`, { path: rel });
  if (buf.length !== desc.size) throw new HutchError('EBADIMAGE', `${what}: ${rel} has ${buf.length} bytes, the descriptor says ${desc.size}`, { path: rel });
  return buf;
}

async function exists(p: string): Promise<boolean> {
  return fsp.lstat(p).then(() => true, () => false);
}

/** An OCI image layout or a `docker save` tree on disk. */
export async function importDir(store: StoreContext, op: Op, dir: string, confined: boolean, onProgress: OnProgress): Promise<PendingImage> {
  const what = confined ? 'image archive' : dir;
  if (await exists(join(dir, 'index.json'))) {
    // A docker save archive in OCI form: its RepoTags name the image (checked before any layer is read).
    const entry = (await exists(join(dir, 'manifest.json'))) ? await dockerManifest(dir, confined, what).catch(() => undefined) : undefined;
    const tags = entry ? dockerTags(entry, what) : [];
    const img = await importOci(store, op, dir, confined, what, onProgress);
    img.tags = tags;
    return img;
  }
  if (await exists(join(dir, 'manifest.json'))) return importDocker(store, op, dir, confined, what, onProgress);
  throw new HutchError('EBADIMAGE', `${what}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)`);
}

async function importOci(store: StoreContext, op: Op, dir: string, confined: boolean, what: string, onProgress: OnProgress): Promise<PendingImage> {
  if (await exists(join(dir, 'oci-layout'))) {
    const layout = parseJson(await readSmall(await locate(dir, 'oci-layout', confined, what), what, 'oci-layout'), `${what} oci-layout`) as { imageLayoutVersion?: unknown };
    if (typeof layout?.imageLayoutVersion !== 'string' || !layout.imageLayoutVersion.startsWith('1.')) {
      throw new HutchError('EBADIMAGE', `${what}: oci-layout version ${JSON.stringify(layout?.imageLayoutVersion)} is not 1.x`);
    }
  }
  let index = parseJson(await readSmall(await locate(dir, 'index.json', confined, what), what, 'index.json'), `${what} index.json`) as { mediaType?: unknown };
  if (index?.mediaType !== undefined && !INDEX_TYPES.has(index.mediaType as string)) {
    throw new HutchError('EBADIMAGE', `${what}: index.json has media type ${JSON.stringify(index.mediaType)}`);
  }
  let desc = pickManifest(index, `${what} index.json`);
  for (let depth = 0; INDEX_TYPES.has(desc.mediaType); depth++) {
    if (depth > 4) throw new HutchError('EBADIMAGE', `${what}: indexes nested too deep`);
    index = parseJson(await readBlob(dir, confined, desc, `${what} index ${desc.digest}`), `${what} index ${desc.digest}`) as { mediaType?: unknown };
    desc = pickManifest(index, `${what} index ${desc.digest}`);
  }
  if (desc.mediaType !== '' && !MANIFEST_TYPES.has(desc.mediaType)) {
    throw new HutchError('EBADIMAGE', `${what}: manifest ${desc.digest} has media type ${JSON.stringify(desc.mediaType)}, not an image manifest`);
  }
  const manifest = parseJson(await readBlob(dir, confined, desc, `${what} manifest ${desc.digest}`), `${what} manifest ${desc.digest}`);
  return fromManifest(store, op, manifest, `${what} manifest ${desc.digest}`, (d, w) => readBlob(dir, confined, d, w), async (d, w) => fileChunks(await locate(dir, blobPath(d, w), confined, w)), onProgress);
}

/** Shared by OCI layouts and registry pulls: manifest → config → layers. */
export async function fromManifest(
  store: StoreContext,
  op: Op,
  manifest: unknown,
  what: string,
  readJsonBlob: (d: Descriptor, what: string) => Promise<Buffer>,
  openLayer: (d: Descriptor, what: string) => Promise<AsyncIterable<Buffer>>,
  onProgress: OnProgress,
): Promise<PendingImage> {
  const m = manifest as { mediaType?: unknown; config?: unknown; layers?: unknown; schemaVersion?: unknown };
  if (typeof m !== 'object' || m === null || m.schemaVersion !== 2) throw new HutchError('EBADIMAGE', `${what}: not a schema 2 image manifest`);
  if (m.mediaType !== undefined && !MANIFEST_TYPES.has(m.mediaType as string)) {
    throw new HutchError('EBADIMAGE', `${what}: media type ${JSON.stringify(m.mediaType)} is not an image manifest`);
  }
  const cdesc = descriptor(m.config, `${what} config`);
  if (!CONFIG_TYPES.has(cdesc.mediaType)) throw new HutchError('EBADIMAGE', `${what}: config media type ${JSON.stringify(cdesc.mediaType)} is not an image config`);
  if (!Array.isArray(m.layers)) throw new HutchError('EBADIMAGE', `${what}: no layers list`);
  const configBytes = await readJsonBlob(cdesc, `${what} config`);
  const config = parseJson(configBytes, `${what} config`);
  const ids = diffIds(config, `${what} config`);
  const ldescs = m.layers.map((l, i) => descriptor(l, `${what} layers[${i}]`));
  if (ids.length !== ldescs.length) throw new HutchError('EBADIMAGE', `${what}: ${ldescs.length} layers but the config lists ${ids.length} diff ids`);
  const layers: PendingLayer[] = [];
  for (const [i, d] of ldescs.entries()) {
    const label = `${what} layer ${d.digest}`;
    const compression = layerCompression(d.mediaType, label);
    digestHex(d.digest, label);
    const chunks = await openLayer(d, label);
    layers.push(
      await extractLayer(store, op, chunks, {
        compression,
        mediaType: d.mediaType,
        expectDigest: d.digest,
        expectSize: d.size,
        expectDiffId: ids[i]!,
        label,
        onProgress: onProgress && ((p) => onProgress({ ...p, phase: `${p.phase} layer ${i + 1}/${ldescs.length}` })),
      }),
    );
  }
  return {
    configBytes,
    configDigest: cdesc.digest,
    configMediaType: cdesc.mediaType,
    config: toImageConfig(config, `${what} config`),
    layers,
    tags: [],
    hostBinds: [],
  };
}

interface DockerEntry {
  Config?: unknown;
  RepoTags?: unknown;
  Layers?: unknown;
}

async function dockerManifest(dir: string, confined: boolean, what: string): Promise<DockerEntry> {
  const list = parseJson(await readSmall(await locate(dir, 'manifest.json', confined, what), what, 'manifest.json'), `${what} manifest.json`);
  if (!Array.isArray(list) || list.length === 0 || typeof list[0] !== 'object' || list[0] === null) {
    throw new HutchError('EBADIMAGE', `${what}: manifest.json lists no image`);
  }
  return list[0] as DockerEntry;
}

/**
 * The RepoTags of a docker save entry, each checked as ImageStore.tag checks a tag: one that
 * reads as an image id (`sha256:<hex>`, a hex prefix) or a builtin's name would redirect
 * references to another image, so the archive is refused, naming the tag.
 */
function dockerTags(e: DockerEntry, what: string): string[] {
  if (e.RepoTags === undefined || e.RepoTags === null) return [];
  if (!Array.isArray(e.RepoTags)) throw new HutchError('EBADIMAGE', `${what}: manifest.json's RepoTags is not a list`);
  for (const t of e.RepoTags) {
    const problem = tagProblem(t);
    if (problem) {
      throw new HutchError('EBADIMAGE', `${what}: manifest.json's RepoTags holds ${JSON.stringify(t)}, refused: a tag must be ${problem}`, {
        hint: 'remove that tag from the archive (docker save of a tagged image, not of an id) and import again',
      });
    }
  }
  return e.RepoTags as string[];
}

async function importDocker(store: StoreContext, op: Op, dir: string, confined: boolean, what: string, onProgress: OnProgress): Promise<PendingImage> {
  const e = await dockerManifest(dir, confined, what);
  const tags = dockerTags(e, what);
  if (typeof e.Config !== 'string') throw new HutchError('EBADIMAGE', `${what}: manifest.json has no Config`);
  if (!Array.isArray(e.Layers) || !e.Layers.every((l) => typeof l === 'string')) throw new HutchError('EBADIMAGE', `${what}: manifest.json has no Layers list`);
  const configBytes = await readSmall(await locate(dir, e.Config, confined, what), what, e.Config);
  const idHex = sha256hex(configBytes);
  const named = /([0-9a-f]{64})(?:\.json)?$/.exec(e.Config);
  if (named && named[1] !== idHex) throw new HutchError('EBADIMAGE', `${what}: digest mismatch: ${e.Config} hashes to sha256:${idHex}`, { path: e.Config });
  const config = parseJson(configBytes, `${what} ${e.Config}`);
  const ids = diffIds(config, `${what} ${e.Config}`);
  const names = e.Layers as string[];
  if (ids.length !== names.length) throw new HutchError('EBADIMAGE', `${what}: ${names.length} layers but the config lists ${ids.length} diff ids`);
  const layers: PendingLayer[] = [];
  for (const [i, rel] of names.entries()) {
    const label = `${what} layer ${rel}`;
    const path = await locate(dir, rel, confined, label);
    // docker 25+ names layers by their digest (blobs/sha256/<hex>): that digest is checked too.
    const named = /(?:^|\/)blobs\/sha256\/([0-9a-f]{64})$/.exec(rel);
    const l = await extractLayer(store, op, fileChunks(path), {
      ...(named ? { expectDigest: `sha256:${named[1]}` } : {}),
      expectDiffId: ids[i]!,
      label,
      onProgress: onProgress && ((p) => onProgress({ ...p, phase: `${p.phase} layer ${i + 1}/${names.length}` })),
    });
    if (l.blob.mediaType === MEDIA.ociLayer) l.blob.mediaType = 'application/vnd.docker.image.rootfs.diff.tar';
    else if (l.blob.mediaType === MEDIA.ociLayerGzip) l.blob.mediaType = MEDIA.dockerLayer;
    layers.push(l);
  }
  return {
    configBytes,
    configDigest: `sha256:${idHex}`,
    configMediaType: MEDIA.dockerConfig,
    config: toImageConfig(config, `${what} ${e.Config}`),
    layers,
    tags,
    hostBinds: [],
  };
}


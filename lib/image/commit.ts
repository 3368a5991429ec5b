/**
 * New layers and images on top of existing ones: a sandbox's writable layer (overlay's upper
 * dir) back into an OCI layer tar, and the image config of a child image. Used by
 * `ImageStore.commitUpper` (Sandbox.commit) and by the Dockerfile build (build.ts).
 *
 * A layer is written as a plain tar into the op dir, then gzipped into `extractLayer` (the
 * import path), so a committed or built layer is checked, hashed, kept as a blob and
 * extracted exactly as an imported one.
 */
import { seenIds } from '../host/ids.js';
import { closeSync, constants, createReadStream, fstatSync, lstatSync, openSync, readdirSync, readlinkSync, rmSync, type Stats } from 'node:fs';
import { constants as osConstants } from 'node:os';
import * as fsp from 'node:fs/promises';
import { join } from 'node:path';
import { createGzip } from 'node:zlib';
import { HutchError, errnoName, invalid } from '../errors.js';
import { ID_LIMIT } from '../conventions.js';
import { native } from '../native.js';
import { sha256hex, writeFully } from './blob.js';
import { extractLayer, type PendingImage, type PendingLayer } from './import.js';
import { hostArch, toImageConfig } from './oci.js';
import { tarChunks, type TarEntry } from './tarwriter.js';
import { MEDIA, type BlobRef, type Image, type ImageConfig, type ImageRecord } from './types.js';
import type { Op, StoreContext } from './context.js';

// ---- a layer tar, written to a file --------------------------------------------------------

const ENXIO = osConstants.errno.ENXIO;
/** Built layers are gzipped at level 1: several times faster than the default, ~10% larger. */
const GZIP_LEVEL = 1;
let seq = 0;

/** A plain tar archive written synchronously to a file in the op dir. */
export class LayerTar {
  readonly file: string;
  private fd: number;
  private readonly dirs = new Set<string>();
  entries = 0;

  constructor(op: Op) {
    this.file = join(op.dir, `layer-${process.pid}-${seq++}.tar`);
    this.fd = openSync(this.file, 'wx', 0o600);
  }

  write(buf: Buffer): void {
    writeFully(this.fd, buf, this.file);
  }

  /** One entry with its data in memory (none for dirs, links, whiteouts). */
  add(e: TarEntry): void {
    if (e.type === 'dir') this.dirs.add(e.path.replace(/\/+$/, ''));
    this.entries++;
    const chunks = [...tarChunks([e])];
    chunks.pop(); // the end-of-archive blocks
    for (const c of chunks) this.write(c);
  }

  /** A header for a file of `size` bytes whose data the caller writes next, then `pad(size)`. */
  header(e: TarEntry, size: number): void {
    this.add({ ...e, type: 'file', data: undefined, sizeOverride: size });
  }

  pad(size: number): void {
    const n = (512 - (size % 512)) % 512;
    if (n > 0) this.write(Buffer.alloc(n));
  }

  /** True when a directory entry for `rel` was written. */
  hasDir(rel: string): boolean {
    return this.dirs.has(rel);
  }

  /** Closes and removes the archive: a commit that failed leaves nothing behind. */
  discard(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
    rmSync(this.file, { force: true });
  }

  /** Ends the archive and closes it; on a failure (a full disk) the fd is closed all the same. */
  close(): void {
    if (this.fd < 0) return;
    try {
      this.write(Buffer.alloc(1024));
    } finally {
      closeSync(this.fd);
      this.fd = -1;
    }
  }

  /**
   * Closes the archive and brings it into the op as a layer (blob gzipped, tree extracted);
   * null when it has no entries: an unchanged upper dir or a RUN that wrote nothing makes no
   * layer (history says `empty_layer`), as BuildKit does.
   */
  async toLayer(store: StoreContext, op: Op, label: string): Promise<PendingLayer | null> {
    const file = this.file;
    try {
      this.close();
    } catch (e) {
      this.discard();
      throw e;
    }
    if (this.entries === 0) {
      await fsp.rm(file, { force: true });
      return null;
    }
    try {
      return await extractLayer(store, op, () => gzipFile(file), { compression: 'gzip', mediaType: MEDIA.ociLayerGzip, label });
    } finally {
      await fsp.rm(file, { force: true });
    }
  }
}

async function* gzipFile(path: string): AsyncGenerator<Buffer> {
  const gz = createGzip({ level: GZIP_LEVEL });
  const src = createReadStream(path, { highWaterMark: 256 * 1024 });
  src.on('error', (e) => gz.destroy(e));
  src.pipe(gz);
  try {
    for await (const c of gz) yield c as Buffer;
  } finally {
    // A reader that stops early (the extraction failed: a full disk) ends this generator
    // here: the archive's fd must close now, or the deleted file keeps its space.
    src.unpipe(gz);
    gz.destroy();
    if (!src.closed) await new Promise<void>((resolve) => src.destroy().once('close', () => resolve()));
  }
}

/**
 * Copies `size` bytes of an open file from `offset` into the archive (zeros if it shrank
 * meanwhile), then the padding to the next block unless `pad` is false.
 */
export async function copyData(tar: LayerTar, fh: fsp.FileHandle, size: number, offset = 0, pad = true): Promise<void> {
  const buf = Buffer.alloc(Math.min(size, 1024 * 1024));
  let done = 0;
  while (done < size) {
    const want = Math.min(buf.length, size - done);
    const { bytesRead } = await fh.read(buf, 0, want, offset + done);
    if (bytesRead === 0) {
      tar.write(Buffer.alloc(size - done));
      break;
    }
    tar.write(buf.subarray(0, bytesRead));
    done += bytesRead;
  }
  if (pad) tar.pad(size);
}

// ---- the upper dir -------------------------------------------------------------------------

export interface UpperStats {
  entries: number;
  whiteouts: number;
  opaqueDirs: number;
  /** Sockets and device nodes other than whiteouts: a layer cannot carry them. */
  skipped: number;
  /** File data written (holes of sparse files not counted). */
  dataBytes: number;
  /** Files written as sparse entries (their holes kept). */
  sparseFiles: number;
}

export interface WriteUpperOptions {
  /** Leaves paths out (e.g. an /etc/hosts the sandbox code wrote itself). */
  skip?: (rel: string, st: Stats) => boolean;
  /** Host ids of the sandbox's root when it had a range of its own (default: read from the upper dir's owner). */
  hostIds?: { uid: number; gid: number };
  /**
   * The most file data (holes not counted) the layer may hold, and what sets it, for the
   * message: past it the walk stops with ESTORE (errno EFBIG) before writing that file.
   */
  cap?: { bytes: number; what: string };
}

function upperOwner(rootFd: number, fallback: { uid: number; gid: number } | null): { uid: number; gid: number } | null {
  if (!fallback) return null;
  const st = fstatSync(rootFd);
  // Ranges follow the base one (lib/idrange.ts): base + slot * 65536, below 2^31.
  if (st.uid >= fallback.uid && st.uid < 2 ** 31 && (st.uid - fallback.uid) % 65536 === 0 && st.gid - fallback.gid === st.uid - fallback.uid) {
    return { uid: st.uid, gid: st.gid };
  }
  return fallback;
}

/** Opens overlay's upper dir (the last component not followed) for writeUpper. */
export function openUpper(upperDir: string): number {
  try {
    return openSync(upperDir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOTDIR' || code === 'ELOOP') throw invalid('upperDir', 'a directory (overlay upper dir)', upperDir);
    throw new HutchError('EINVAL', `cannot read the upper dir ${upperDir}: ${code ?? (e as Error).message}`, { path: upperDir, cause: e });
  }
}

/**
 * The data segments of an open file, [offset, length] in order, from SEEK_DATA/SEEK_HOLE;
 * null when it has no holes below `size` (written as a plain file).
 */
function dataMap(fd: number, size: number, rel: string, moved: (rel: string) => HutchError): [number, number][] | null {
  const n = native();
  const segs: [number, number][] = [];
  let total = 0;
  for (let off = 0; off < size; ) {
    const d = n.seekData(fd, off, false);
    if (d === -ENXIO) break; // only a hole from here to the end
    if (d < 0) throw moved(rel);
    if (d >= size) break;
    let h = n.seekData(fd, d, true);
    if (h < 0) throw moved(rel);
    if (h > size) h = size;
    segs.push([d, h - d]);
    total += h - d;
    off = h;
  }
  return total === size ? null : segs;
}

/**
 * Writes overlay's upper dir as an OCI layer:
 * - a 0:0 character device (overlay's whiteout) becomes `.wh.<name>`;
 * - a directory with `user.overlay.opaque=y` gets a `.wh..wh..opq` entry;
 * - ids are shifted back from the sandbox range into 0..65535;
 * - overlay's own xattrs (and every other xattr) stay out of the layer;
 * - sockets and real device nodes are skipped (a sandbox cannot make devices anyway);
 * - a file with holes becomes a PAX sparse entry (format 1.0): only its data is written.
 *
 * The upper dir belongs to a sandbox. Callers stop it first (Sandbox.commit freezes its
 * cgroup; a build step's processes are all dead), and the walk does not rely on that alone:
 * nothing is resolved by path from the upper dir down. Each directory is opened (O_NOFOLLOW |
 * O_DIRECTORY) through its parent's open fd as `/proc/self/fd/<parent>/<name>` — the kernel
 * jumps to the open directory itself, so this is openat(2) — and every child is lstat'ed,
 * read or opened (O_NOFOLLOW) the same way; xattrs are read with fgetxattr on the open
 * directory and holes found with lseek on the open file. A swapped-in symlink is then an
 * ELOOP/ENOTDIR or a symlink entry, never followed, and every object must lie on the upper
 * dir's own filesystem. A path that changes under the walk fails the commit.
 */
export async function writeUpper(store: StoreContext, tar: LayerTar, upper: string | number, o: WriteUpperOptions = {}): Promise<UpperStats> {
  const rootFd = typeof upper === 'number' ? upper : openUpper(upper);
  const label = typeof upper === 'number' ? 'the writable layer' : upper;
  try {
    const dev = fstatSync(rootFd).dev;
    const moved = (rel: string): HutchError =>
      new HutchError('EINVAL', `${label}: ${JSON.stringify(rel)} changed or left the writable layer during the commit; stop the processes writing to it and commit again`, { path: rel });
    // The sandbox's root owns the upper dir itself: its range (a range of its own per
    // sandbox on 6.8+, else the store's) is read from there unless the caller says.
    const outer = store.shift();
    const shift = o.hostIds ?? upperOwner(rootFd, outer && seenIds(outer));
    const stats: UpperStats = { entries: 0, whiteouts: 0, opaqueDirs: 0, skipped: 0, dataBytes: 0, sparseFiles: 0 };
    const links = new Map<number, string>();
    const ids = (st: Stats, rel: string) => {
      const uid = shift ? st.uid - shift.uid : 0;
      const gid = shift ? st.gid - shift.gid : 0;
      if (uid < 0 || uid >= ID_LIMIT || gid < 0 || gid >= ID_LIMIT) {
        throw new HutchError('EINVAL', `${label}: ${JSON.stringify(rel)} is owned by host ids ${st.uid}:${st.gid}, outside the sandbox range`, { path: rel });
      }
      return { uid, gid };
    };
    const charge = (rel: string, bytes: number) => {
      stats.dataBytes += bytes;
      if (o.cap && stats.dataBytes > o.cap.bytes) {
        throw new HutchError(
          'ESTORE',
          `the writable layer holds more than ${o.cap.bytes} bytes of file data (${o.cap.what}; reached at ${JSON.stringify(rel)}): nothing was committed; remove files from the sandbox or raise the limit`,
          { errno: 'EFBIG', path: rel },
        );
      }
    };
    const xattrs = (fd: number, rel: string): Record<string, Buffer> => {
      const x = native().fdXattrs(fd);
      if (typeof x === 'number') throw new HutchError('EINVAL', `${label}: reading the xattrs of ${JSON.stringify(rel)} failed: ${errnoName(x)}`, { path: rel });
      return x;
    };

    const file = async (rel: string, st: Stats, at: string, entry: Omit<TarEntry, 'type'>) => {
      let fh: fsp.FileHandle;
      try {
        fh = await fsp.open(at, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
      } catch {
        throw moved(rel);
      }
      try {
        const now = await fh.stat();
        if (!now.isFile() || now.dev !== dev || now.ino !== st.ino) throw moved(rel);
        const size = now.size;
        const segs = dataMap(fh.fd, size, rel, moved);
        if (segs === null) {
          charge(rel, size);
          tar.header({ ...entry, type: 'file' }, size);
          await copyData(tar, fh, size);
          return;
        }
        const data = segs.reduce((a, [, len]) => a + len, 0);
        charge(rel, data);
        stats.sparseFiles++;
        // GNU tar's convention: the map ends with a zero-length segment at the real size when
        // the file ends in a hole, so every reader sees the size without GNU.sparse.realsize.
        const map = segs.length > 0 && segs[segs.length - 1]![0] + segs[segs.length - 1]![1] === size ? segs : [...segs, [size, 0] as [number, number]];
        const text = `${map.length}\n${map.map(([a, b]) => `${a}\n${b}\n`).join('')}`;
        const mapBlock = Buffer.alloc(Math.ceil(Buffer.byteLength(text) / 512) * 512);
        mapBlock.write(text, 'ascii');
        const slash = rel.lastIndexOf('/');
        const stored = `${slash < 0 ? '' : rel.slice(0, slash + 1)}GNUSparseFile.0/${rel.slice(slash + 1)}`;
        tar.header(
          { ...entry, path: stored, type: 'file', pax: { 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.name': rel, 'GNU.sparse.realsize': String(size) } },
          mapBlock.length + data,
        );
        tar.write(mapBlock);
        for (const [off, len] of segs) await copyData(tar, fh, len, off, false);
        tar.pad(data);
      } finally {
        await fh.close();
      }
    };

    /** Depth-first in name order, with the directory's fd open. */
    const walk = async (dirFd: number, rel: string): Promise<void> => {
      let names: string[];
      try {
        names = readdirSync(`/proc/self/fd/${dirFd}`).sort();
      } catch {
        throw moved(rel);
      }
      for (const n of names) {
        const r = rel === '' ? n : `${rel}/${n}`;
        const at = `/proc/self/fd/${dirFd}/${n}`;
        let st: Stats;
        try {
          st = lstatSync(at);
        } catch {
          throw moved(r);
        }
        if (st.dev !== dev) throw moved(r);
        if (o.skip?.(r, st)) continue;
        const mtime = Math.floor(st.mtimeMs / 1000);
        const mode = st.mode & 0o7777;
        const slash = r.lastIndexOf('/');
        const parent = slash < 0 ? '' : r.slice(0, slash);
        stats.entries++;
        if (st.isDirectory()) {
          let fd: number;
          try {
            fd = openSync(at, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
          } catch {
            throw moved(r);
          }
          try {
            const now = fstatSync(fd);
            if (now.ino !== st.ino || now.dev !== dev) throw moved(r);
            tar.add({ path: r, type: 'dir', mode, ...ids(st, r), mtime });
            if (xattrs(fd, r)['user.overlay.opaque']?.toString() === 'y') {
              tar.add({ path: `${r}/.wh..wh..opq`, type: 'file', mode: 0o644, mtime });
              stats.opaqueDirs++;
            }
            await walk(fd, r);
          } finally {
            closeSync(fd);
          }
        } else if (st.isCharacterDevice() && st.rdev === 0) {
          tar.add({ path: parent === '' ? `.wh.${n}` : `${parent}/.wh.${n}`, type: 'file', mode: 0o644, mtime });
          stats.whiteouts++;
        } else if (st.isSymbolicLink()) {
          let target: string;
          try {
            target = readlinkSync(at);
          } catch {
            throw moved(r);
          }
          tar.add({ path: r, type: 'symlink', linkpath: target, mode: 0o777, ...ids(st, r), mtime });
        } else if (st.isFIFO()) {
          tar.add({ path: r, type: 'fifo', mode, ...ids(st, r), mtime });
        } else if (st.isFile()) {
          const first = st.nlink > 1 ? links.get(st.ino) : undefined;
          if (first !== undefined) {
            tar.add({ path: r, type: 'link', linkpath: first, mode, ...ids(st, r), mtime });
            continue;
          }
          if (st.nlink > 1) links.set(st.ino, r);
          await file(r, st, at, { path: r, mode, ...ids(st, r), mtime });
        } else {
          stats.entries--;
          stats.skipped++;
        }
      }
    };
    await walk(rootFd, '');
    return stats;
  } finally {
    if (typeof upper !== 'number') closeSync(rootFd);
  }
}

// ---- child images --------------------------------------------------------------------------

export interface HistoryEntry {
  created?: string;
  created_by?: string;
  comment?: string;
  empty_layer?: boolean;
  author?: string;
}

/** The OCI image config as JSON (only what hutch reads or writes is typed). */
export interface OciConfig {
  created?: string;
  author?: string;
  architecture?: string;
  os?: string;
  config?: Record<string, unknown>;
  rootfs: { type: 'layers'; diff_ids: string[] };
  history?: HistoryEntry[];
  [key: string]: unknown;
}

/** An image to build on: its layers and full config; `id` null for `scratch`. */
export interface BaseImage {
  id: string | null;
  layers: string[];
  layerBlobs: BlobRef[];
  hostBinds: string[];
  config: OciConfig;
  created?: string;
}

export const HISTORY_COMMENT = 'hutch';

/** The empty base of `FROM scratch`. */
export function scratchBase(): BaseImage {
  return { id: null, layers: [], layerBlobs: [], hostBinds: [], config: { architecture: hostArch(), os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [] }, history: [] } };
}

/** An image in the store as a base: its record and its config blob. */
export async function baseOf(store: StoreContext, ref: Image | string): Promise<BaseImage> {
  const img = await store.get(typeof ref === 'string' ? ref : ref.id);
  const rec = (await store.readRecord(img.id.slice(7))) as ImageRecord;
  let config: OciConfig;
  try {
    config = JSON.parse(await fsp.readFile(store.path('blobs', 'sha256', rec.configBlob.digest.slice(7)), 'utf8')) as OciConfig;
  } catch (e) {
    throw new HutchError('EBADIMAGE', `image ${rec.id}: its config blob is missing or unreadable; import it again`, { cause: e });
  }
  return { id: rec.id, layers: [...rec.layers], layerBlobs: [...rec.layerBlobs], hostBinds: [...rec.hostBinds], config, created: rec.created };
}

/**
 * History as OCI wants it: one non-empty entry per layer. Configs that hutch synthesized or
 * that came without history get an entry per layer so that the new entries line up.
 */
function baseHistory(base: BaseImage): HistoryEntry[] {
  const h = Array.isArray(base.config.history) ? base.config.history.map((e) => ({ ...e })) : [];
  const layered = h.filter((e) => !e.empty_layer).length;
  if (layered === base.layers.length) return h;
  return base.layers.map(() => ({ ...(base.created ? { created: base.created } : {}), comment: `${HISTORY_COMMENT}: layer of ${base.id ?? 'scratch'}` }));
}

/** Applies ImageConfig fields onto an OCI `config` object. */
export function applyImageConfig(c: Record<string, unknown>, changes: Partial<ImageConfig>): void {
  if (changes.env !== undefined) c.Env = [...changes.env];
  if (changes.cmd !== undefined) c.Cmd = [...changes.cmd];
  if (changes.entrypoint !== undefined) c.Entrypoint = [...changes.entrypoint];
  if (changes.workingDir !== undefined) c.WorkingDir = changes.workingDir;
  if (changes.user !== undefined) c.User = changes.user;
  if (changes.exposedPorts !== undefined) c.ExposedPorts = Object.fromEntries(changes.exposedPorts.map((p) => [`${p}/tcp`, {}]));
}

function checkImageConfig(c: unknown): asserts c is Partial<ImageConfig> | undefined {
  if (c === undefined) return;
  if (typeof c !== 'object' || c === null) throw invalid('config', 'an object of ImageConfig fields', c);
  const v = c as Record<string, unknown>;
  const strs = (k: string) => {
    if (v[k] !== undefined && !(Array.isArray(v[k]) && (v[k] as unknown[]).every((s) => typeof s === 'string'))) throw invalid(`config.${k}`, 'a list of strings', v[k]);
  };
  strs('env');
  strs('cmd');
  strs('entrypoint');
  for (const k of ['workingDir', 'user']) if (v[k] !== undefined && typeof v[k] !== 'string') throw invalid(`config.${k}`, 'a string', v[k]);
  if (v.exposedPorts !== undefined && !(Array.isArray(v.exposedPorts) && v.exposedPorts.every((p) => Number.isInteger(p) && p > 0 && p < 65536))) {
    throw invalid('config.exposedPorts', 'a list of port numbers', v.exposedPorts);
  }
  for (const k of Object.keys(v)) {
    if (!['env', 'cmd', 'entrypoint', 'workingDir', 'user', 'exposedPorts'].includes(k)) throw invalid(`config.${k}`, 'one of env, cmd, entrypoint, workingDir, user, exposedPorts');
  }
}

/**
 * Writes a child of `base`: its layers plus `layer` (if any), its config changed by `edit`,
 * one history entry; moves everything into the store and tags it. The base's layers are
 * pinned first, so a concurrent prune cannot take them.
 */
export async function childImage(
  store: StoreContext,
  op: Op,
  base: BaseImage,
  layer: PendingLayer | null,
  edit: (c: Record<string, unknown>, full: OciConfig) => void,
  history: { createdBy: string; comment?: string },
  tags: string[],
  pinned?: Set<string>,
): Promise<Image> {
  for (const d of base.layers) {
    const hex = d.slice(7);
    if (pinned?.has(hex)) continue;
    if (!(await op.pin(hex))) throw new HutchError('ENOIMAGE', `layer ${d} of image ${base.id} is missing from the store ${store.root}`);
    pinned?.add(hex);
  }
  const created = new Date().toISOString();
  const full: OciConfig = structuredClone(base.config);
  const c: Record<string, unknown> = typeof full.config === 'object' && full.config !== null ? full.config : {};
  full.config = c;
  edit(c, full);
  full.created = created;
  full.architecture ??= hostArch();
  full.os ??= 'linux';
  const layers = layer ? [...base.layers, `sha256:${layer.diffHex}`] : [...base.layers];
  full.rootfs = { type: 'layers', diff_ids: layers };
  const entry: HistoryEntry = { created, created_by: history.createdBy, comment: history.comment ?? HISTORY_COMMENT };
  if (!layer) entry.empty_layer = true;
  full.history = [...baseHistory(base), entry];
  const configBytes = Buffer.from(JSON.stringify(full));
  const keep: PendingLayer[] = base.layers.map((d, i) => ({ diffHex: d.slice(7), blob: base.layerBlobs[i]!, blobFile: null, tree: null, stats: null }));
  const pending: PendingImage = {
    configBytes,
    configDigest: `sha256:${sha256hex(configBytes)}`,
    configMediaType: MEDIA.ociConfig,
    config: toImageConfig(full, 'new image config'),
    layers: layer ? [...keep, layer] : keep,
    tags,
    hostBinds: [...base.hostBinds],
  };
  return store.commit(op, pending);
}

export interface CommitOptions {
  /** The image the upper dir was mounted over (a sandbox's `image`). */
  base: Image | string;
  /** Overlay's upper dir, e.g. `/proc/<sandbox pid>/fd/4/upper`. */
  upperDir: string;
  tag?: string;
  /** Changes to the image's defaults (Env, Cmd, ...), applied over the base's. */
  config?: Partial<ImageConfig>;
  /** The history entry's `created_by` (default: `hutch commit`). */
  createdBy?: string;
  /** Host ids of the sandbox's root when it had a range of its own (default: the store's). */
  hostIds?: { uid: number; gid: number };
  /**
   * Stops and restarts whatever writes to the upper dir (Sandbox.commit: its cgroup's
   * freezer): `freeze` runs before the upper dir is opened, `thaw` once it is read, also
   * when reading it failed.
   */
  hold?: { freeze(): Promise<void>; thaw(): Promise<void> };
  /** A cap on the layer's file data below the store's: the sandbox's disk limit. */
  cap?: { bytes: number };
}

/**
 * What one commit or build step may write (file data, holes not counted): the store's layer
 * cap (maxLayerBytes), or the sandbox's disk limit when that is lower.
 */
export function layerCap(store: StoreContext, diskBytes: number | null): { bytes: number; what: string } {
  if (diskBytes !== null && diskBytes < store.limits.maxBytes) return { bytes: diskBytes, what: `the sandbox's disk limit, limits.disk ${diskBytes}` };
  return { bytes: store.limits.maxBytes, what: `the store's layer cap, maxLayerBytes ${store.limits.maxBytes}` };
}

/** See ImageStore.commitUpper. */
export async function commitUpper(store: StoreContext, o: CommitOptions): Promise<Image> {
  if (typeof o !== 'object' || o === null) throw invalid('options', 'an object with base and upperDir', o);
  if (typeof o.upperDir !== 'string' || o.upperDir === '') throw invalid('upperDir', 'a directory path', o.upperDir);
  if (typeof o.base !== 'string' && (typeof o.base !== 'object' || o.base === null || typeof o.base.id !== 'string')) throw invalid('base', 'an Image or an image ref', o.base);
  if (o.tag !== undefined) store.checkTag(o.tag);
  checkImageConfig(o.config);
  const base = await baseOf(store, o.base);
  const op = await store.beginOp();
  try {
    const cap = layerCap(store, o.cap?.bytes ?? null);
    const tar = new LayerTar(op);
    try {
      await o.hold?.freeze();
      try {
        await writeUpper(store, tar, o.upperDir, { ...(o.hostIds ? { hostIds: o.hostIds } : {}), cap });
      } finally {
        await o.hold?.thaw();
      }
    } catch (e) {
      tar.discard();
      throw e;
    }
    const layer = await tar.toLayer(store, op, `commit of ${o.upperDir}`);
    return await childImage(store, op, base, layer, (c) => applyImageConfig(c, o.config ?? {}), { createdBy: o.createdBy ?? 'hutch commit' }, o.tag === undefined ? [] : [o.tag]);
  } finally {
    await op.close();
  }
}

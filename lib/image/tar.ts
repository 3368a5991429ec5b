import { writeFully } from './blob.js';
import { join } from 'node:path';
import { Parser, type ReadEntry } from 'tar';
import { HutchError, STORE_ERRNOS, errnoName } from '../errors.js';
import { ID_LIMIT } from '../conventions.js';
import { isFailure, native, type NativeFailure } from '../native.js';
import { SparseReader, sparseInfo } from './sparse.js';
import { kernelFeatures } from '../host/features.js';

/**
 * Safe extraction of one image layer into an empty directory that hutch alone writes to.
 *
 * The rules (docs/images.md, "Safety"):
 * - names are relative and never contain `..`; absolute names are refused;
 * - every parent of an entry must be a directory made by this archive (or implied by it):
 *   a symlink or file from the archive is never traversed, so "a symlink, then an entry
 *   through it" is refused, and nothing can land outside the layer;
 * - hardlinks point at a file or symlink extracted earlier from the same archive;
 * - device nodes under `dev/` are skipped (a sandbox always gets its own /dev), elsewhere
 *   refused;
 * - `.wh.<name>` becomes a 0:0 character device `<name>`, `.wh..wh..opq` the xattr
 *   `user.overlay.opaque=y` on its directory (overlay mounted with `userxattr`);
 * - ids are shifted into the sandbox range; ids of 65536 and above are refused;
 * - a byte and an entry limit stop huge or endless archives;
 * - a later entry replaces an earlier one of the same name; a replaced directory goes with
 *   everything recorded under it (removed and forgotten, so nothing made for it applies to
 *   what takes its name);
 * - PAX sparse 1.0 files are written segment by segment, holes kept (sparse.ts).
 * Every write goes through addon/extract.cc: parents opened with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS) from the layer's root fd, entries made with *at calls on them, owners,
 * modes and times set on fds or with AT_SYMLINK_NOFOLLOW; no path-following tool or call
 * runs on the layer. Every refusal is `EBADIMAGE` naming the entry; the caller discards the
 * directory.
 */

/**
 * Caps on one layer while it is extracted ({@link ImageStore.limits}); an archive past either
 * is rejected with `EBADIMAGE`. Set through {@link ImageStoreOptions}.
 *
 * @example
 * ```ts
 * const store = new ImageStore({ root: '/srv/hutch', maxLayerBytes: 2 * 1024 ** 3 });
 * console.log(store.limits); // { maxBytes: 2147483648, maxEntries: 4000000 }
 * ```
 */
export interface ExtractLimits {
  /** Cap on the uncompressed bytes of the archive. */
  maxBytes: number;
  /** Cap on the number of entries. */
  maxEntries: number;
}

export const DEFAULT_LIMITS: ExtractLimits = { maxBytes: 64 * 1024 ** 3, maxEntries: 4_000_000 };

export interface ExtractOptions {
  /** Host ids that sandbox id 0 maps to; null leaves files owned by the caller (not root: no chown). */
  shift: { uid: number; gid: number; size?: number } | null;
  limits: ExtractLimits;
  /** Names the archive in messages, e.g. `layer sha256:ab12...`. */
  label: string;
}

export interface LayerStats {
  /** Bytes of regular file data. */
  sizeBytes: number;
  entries: number;
  /** Device nodes under dev/ that were left out. */
  skippedDevices: number;
  whiteouts: number;
  opaqueDirs: number;
}

type Kind = 'dir' | 'file' | 'symlink' | 'special';

interface Meta {
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
}


/** The operations of the addon's extractBatch (addon/extract.cc, enum Op). */
const OP = { mkdir: 0, file: 1, symlink: 2, link: 3, whiteout: 4, fifo: 5, remove: 6, dirMeta: 7 } as const;
/** Files up to this size are gathered whole and written by the batch; larger ones stream through an fd. */
const SMALL_FILE = 256 * 1024;
/** A batch is handed to the addon at this many operations or bytes of file data. */
const BATCH_OPS = 512;
const BATCH_BYTES = 8 * 1024 * 1024;

export function bad(label: string, entry: string, why: string): HutchError {
  return new HutchError('EBADIMAGE', `${label}: entry ${JSON.stringify(entry)} ${why}`, { path: entry });
}

/**
 * Normalises a name from an archive: strips `./` and trailing `/`, refuses absolute names,
 * `..` and NUL. Returns the components ([] for the root).
 */
export function entryParts(label: string, name: string): string[] {
  if (name.includes('\0')) throw bad(label, name, 'has a NUL byte in its name');
  if (name.startsWith('/')) throw bad(label, name, 'has an absolute name');
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw bad(label, name, 'has ".." in its name');
  return parts;
}

function parentOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
}

/**
 * Extracts one layer. This class keeps the archive's rules and its own map of what each path
 * is; every write to the layer goes through the addon (addon/extract.cc), which makes each
 * entry with *at calls on a parent opened beneath the layer's root with openat2
 * (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS): host root never resolves a path of the layer with
 * a tool or call that follows symlinks. Operations are queued and run in batches.
 */
export class LayerExtractor {
  private readonly kinds = new Map<string, Kind>([['', 'dir']]);
  /** The names recorded directly under each directory, to forget a replaced directory's tree. */
  private readonly children = new Map<string, Set<string>>([['', new Set()]]);
  private readonly dirMeta = new Map<string, Meta>();
  private readonly opaque = new Set<string>();
  private readonly stats: LayerStats = { sizeBytes: 0, entries: 0, skippedDevices: 0, whiteouts: 0, opaqueDirs: 0 };
  private readonly now = Math.floor(Date.now() / 1000);
  private root: number;
  private ops: unknown[][] = [];
  private opNames: string[] = [];
  private opBytes = 0;
  /** A large file being written: an extraction stopped mid-entry closes it in close(). */
  private openFd = -1;

  constructor(private readonly dir: string, private readonly opts: ExtractOptions) {
    const fd = native().extractRoot(dir);
    if (isFailure(fd)) throw this.hostError('.', fd);
    this.root = fd;
    this.dirMeta.set('', { mode: 0o755, uid: 0, gid: 0, mtime: this.now });
  }

  /** Closes the layer's fds. Idempotent; call it however extraction ends. */
  close(): void {
    if (this.openFd >= 0) native().close(this.openFd);
    this.openFd = -1;
    if (this.root >= 0) native().close(this.root);
    this.root = -1;
  }

  private hostError(entry: string, f: NativeFailure): HutchError {
    const code = errnoName(f.errno);
    if (STORE_ERRNOS.has(code)) return this.storeError(entry, code, f.step);
    return new HutchError('EBADIMAGE', `${this.opts.label}: extracting entry ${JSON.stringify(entry)} failed: ${code}${f.step ? ` (${f.step})` : ''}`, {
      errno: code,
      path: entry,
    });
  }

  /** The layer's filesystem refused a write (full, read-only...): the store's failure, not the archive's. */
  private storeError(entry: string, code: string, step?: string, cause?: unknown): HutchError {
    const path = entry === '.' ? this.dir : join(this.dir, entry);
    return new HutchError('ESTORE', `${this.opts.label}: writing entry ${JSON.stringify(entry)} into the store failed: ${code}${step ? ` (${step})` : ''}`, {
      errno: code,
      path,
      cause,
    });
  }

  private queue(name: string, op: unknown[], bytes = 0): void {
    this.ops.push(op);
    this.opNames.push(name);
    this.opBytes += bytes;
    if (this.ops.length >= BATCH_OPS || this.opBytes >= BATCH_BYTES) this.flush();
  }

  private flush(): void {
    if (this.ops.length === 0) return;
    const ops = this.ops;
    const names = this.opNames;
    this.ops = [];
    this.opNames = [];
    this.opBytes = 0;
    const r = native().extractBatch(this.root, ops);
    if (r !== undefined) throw this.hostError(names[r.index] ?? r.path ?? '?', r);
  }

  private meta(e: ReadEntry, name: string): Meta {
    const uid = e.uid ?? 0;
    const gid = e.gid ?? 0;
    if (!Number.isInteger(uid) || uid < 0 || uid >= ID_LIMIT || !Number.isInteger(gid) || gid < 0 || gid >= ID_LIMIT) {
      throw bad(this.opts.label, name, `is owned by ${uid}:${gid}; ids must be below ${ID_LIMIT} to map into a sandbox`);
    }
    // Outside root mode a sandbox may map fewer ids (lib/host/ids.ts): an owner it lacks is refused, not guessed.
    const size = this.opts.shift?.size ?? ID_LIMIT;
    if (uid >= size || gid >= size) {
      throw bad(this.opts.label, name, `is owned by ${uid}:${gid}, but sandboxes here map only ids 0..${size - 1} (the ids this user or user namespace owns); give it more subordinate ids`);
    }
    const mtime = e.mtime ? Math.floor(e.mtime.getTime() / 1000) : this.now;
    return { mode: (e.mode ?? 0o644) & 0o7777, uid, gid, mtime: Number.isFinite(mtime) ? mtime : this.now };
  }

  /** Host ids of an entry ([-1, -1]: no chown, when hutch does not run as root). */
  private hostIds(m: Meta): [number, number] {
    const s = this.opts.shift;
    return s ? [s.uid + m.uid, s.gid + m.gid] : [-1, -1];
  }

  private record(rel: string, kind: Kind): void {
    this.kinds.set(rel, kind);
    this.children.get(parentOf(rel))!.add(rel);
    if (kind === 'dir') this.children.set(rel, new Set());
  }

  /** Makes sure every parent of `parts` is a directory of this layer, creating implied ones. */
  private parents(name: string, parts: string[]): void {
    let rel = '';
    for (let i = 0; i < parts.length - 1; i++) {
      rel = rel === '' ? parts[i]! : `${rel}/${parts[i]}`;
      const kind = this.kinds.get(rel);
      if (kind === undefined) {
        this.queue(name, [OP.mkdir, rel]);
        this.record(rel, 'dir');
        this.dirMeta.set(rel, { mode: 0o755, uid: 0, gid: 0, mtime: this.now });
      } else if (kind !== 'dir') {
        throw bad(this.opts.label, name, `goes through ${JSON.stringify(rel)}, which this archive made a ${kind === 'symlink' ? 'symlink' : 'non-directory'}`);
      }
    }
  }

  /**
   * Clears whatever an earlier entry put at `rel` (a later entry replaces it, as in tar). A
   * directory goes with everything recorded under it: its files, links, whiteouts, FIFOs,
   * opaque mark and metadata are removed and forgotten, deepest first.
   */
  private clear(name: string, rel: string, keepDir: boolean): void {
    const kind = this.kinds.get(rel);
    if (kind === undefined || (kind === 'dir' && keepDir)) return;
    if (kind === 'dir') {
      for (const child of this.children.get(rel)!) this.clear(name, child, false);
      this.children.delete(rel);
      this.dirMeta.delete(rel);
      this.opaque.delete(rel);
    }
    this.queue(name, [OP.remove, rel, kind === 'dir']);
    this.kinds.delete(rel);
    this.children.get(parentOf(rel))?.delete(rel);
  }

  /** Handles one entry, synchronously (its data arrives through 'data' events). */
  entry(e: ReadEntry): void {
    const label = this.opts.label;
    const sparse = sparseInfo(e, label, bad);
    const name = sparse ? sparse.name : e.path;
    if (++this.stats.entries > this.opts.limits.maxEntries) {
      throw bad(label, name, `is past the limit of ${this.opts.limits.maxEntries} entries`);
    }
    const parts = entryParts(label, name);
    const base = parts[parts.length - 1] ?? '';
    if (sparse && e.type !== 'File' && e.type !== 'OldFile' && e.type !== 'ContiguousFile') throw bad(label, name, 'is a sparse entry that is not a regular file');

    if (base.startsWith('.wh.')) {
      e.resume();
      if (sparse || (e.type !== 'File' && e.type !== 'OldFile' && e.type !== 'ContiguousFile')) {
        throw bad(label, name, 'is a whiteout that is not a regular file');
      }
      this.parents(name, parts);
      const parent = parts.slice(0, -1).join('/');
      if (base === '.wh..wh..opq') {
        this.opaque.add(parent);
        this.stats.opaqueDirs++;
        return;
      }
      if (base.startsWith('.wh..wh.')) return; // other AUFS metadata: ignored, as the OCI spec allows
      const hidden = base.slice(4);
      if (hidden === '' || hidden === '.' || hidden === '..') throw bad(label, name, 'is a whiteout with no name');
      const rel = parent === '' ? hidden : `${parent}/${hidden}`;
      this.clear(name, rel, false);
      const [uid, gid] = this.hostIds({ mode: 0, uid: 0, gid: 0, mtime: this.now });
      // xattrWhiteouts: where a 0:0 device cannot be made (the store on overlayfs, a device policy), overlay's xattr form.
      this.queue(name, [OP.whiteout, rel, uid, gid, this.now, kernelFeatures().overlayLowerdirPlus]);
      this.record(rel, 'special');
      this.stats.whiteouts++;
      return;
    }

    if (parts.length === 0) {
      e.resume();
      if (e.type !== 'Directory') throw bad(label, name, 'names the layer root but is not a directory');
      this.dirMeta.set('', this.meta(e, name));
      return;
    }
    const rel = parts.join('/');

    switch (e.type) {
      case 'Directory': {
        e.resume();
        const meta = this.meta(e, name);
        this.parents(name, parts);
        if (this.kinds.get(rel) !== 'dir') {
          this.clear(name, rel, false);
          this.queue(name, [OP.mkdir, rel]);
          this.record(rel, 'dir');
        }
        this.dirMeta.set(rel, meta);
        return;
      }
      case 'File':
      case 'OldFile':
      case 'ContiguousFile': {
        const meta = this.meta(e, name);
        this.parents(name, parts);
        this.clear(name, rel, false);
        this.record(rel, 'file');
        if (sparse) this.bigFile(e, name, rel, meta, sparse);
        else if ((e.size ?? 0) <= SMALL_FILE) this.smallFile(e, name, rel, meta);
        else this.bigFile(e, name, rel, meta, undefined);
        return;
      }
      case 'SymbolicLink': {
        e.resume();
        const meta = this.meta(e, name);
        const target = e.linkpath ?? '';
        if (target === '' || target.includes('\0')) throw bad(label, name, 'is a symlink with an empty target');
        this.parents(name, parts);
        this.clear(name, rel, false);
        // The target is stored as written and never followed here: inside the sandbox it
        // resolves against the sandbox's own root.
        const [uid, gid] = this.hostIds(meta);
        this.queue(name, [OP.symlink, rel, target, uid, gid, meta.mtime]);
        this.record(rel, 'symlink');
        return;
      }
      case 'Link': {
        e.resume();
        const target = e.linkpath ?? '';
        if (target.startsWith('/')) throw bad(label, name, `is a hardlink to the absolute path ${JSON.stringify(target)}`);
        const trel = entryParts(label, target).join('/');
        const tkind = this.kinds.get(trel);
        if (tkind !== 'file' && tkind !== 'symlink') {
          throw bad(label, name, `is a hardlink to ${JSON.stringify(target)}, which is not a file extracted earlier from this archive`);
        }
        this.parents(name, parts);
        if (trel === rel) return;
        this.clear(name, rel, false);
        this.queue(name, [OP.link, rel, trel]);
        this.record(rel, tkind);
        return;
      }
      case 'CharacterDevice':
      case 'BlockDevice': {
        // Devices are never made from an archive, 0:0 included: the tar package reads device
        // numbers only from POSIX ustar headers (GNU-format ones read as 0:0), so a "0:0
        // whiteout" cannot be told from a real device. OCI whiteouts are `.wh.` files anyway.
        e.resume();
        if (parts[0] === 'dev') {
          this.stats.skippedDevices++;
          return;
        }
        throw bad(label, name, 'is a device node; images may not carry devices outside /dev (which a sandbox replaces with its own)');
      }
      case 'FIFO': {
        e.resume();
        const meta = this.meta(e, name);
        this.parents(name, parts);
        this.clear(name, rel, false);
        const [uid, gid] = this.hostIds(meta);
        this.queue(name, [OP.fifo, rel, uid, gid, meta.mode, meta.mtime]);
        this.record(rel, 'special');
        return;
      }
      default:
        e.resume();
        throw bad(label, name, `has an unsupported entry type ${e.type}`);
    }
  }

  /** A file small enough to gather: written whole, with its metadata, by the next batch. */
  private smallFile(e: ReadEntry, name: string, rel: string, meta: Meta): void {
    const chunks: Buffer[] = [];
    let size = 0;
    e.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.length;
    });
    e.on('end', () => {
      this.stats.sizeBytes += size;
      const [uid, gid] = this.hostIds(meta);
      this.queue(name, [OP.file, rel, chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size), uid, gid, meta.mode, meta.mtime], size);
    });
  }

  /** A large or sparse file: opened beneath the root by the addon, its data written through that fd as it streams. */
  private bigFile(e: ReadEntry, name: string, rel: string, meta: Meta, sparse: { realSize: number } | undefined): void {
    this.flush();
    const fd = native().extractOpen(this.root, rel);
    if (isFailure(fd)) throw this.hostError(name, fd);
    this.openFd = fd;
    const write = (chunk: Buffer, position: number | null) => {
      writeFully(fd, chunk, join(this.dir, rel), position);
      this.stats.sizeBytes += chunk.length;
    };
    const reader = sparse ? new SparseReader(bad, this.opts.label, name, { name, realSize: sparse.realSize }, e.size ?? 0, write) : undefined;
    e.on('data', (chunk: Buffer) => {
      if (this.openFd !== fd) return;
      if (reader) reader.push(chunk);
      else write(chunk, null);
    });
    e.on('end', () => {
      if (this.openFd !== fd) return;
      this.openFd = -1;
      let failure: NativeFailure | undefined;
      try {
        reader?.end();
      } catch (err) {
        native().close(fd);
        throw err;
      }
      const [uid, gid] = this.hostIds(meta);
      failure = native().extractClose(fd, uid, gid, meta.mode, meta.mtime, sparse ? sparse.realSize : -1);
      if (failure) throw this.hostError(name, failure);
    });
  }

  /** Sets directory metadata and opaque marks (deepest first, so a child never changes a set parent). */
  async finish(): Promise<LayerStats> {
    const dirs = [...this.dirMeta.entries()].sort((a, b) => b[0].split('/').length - a[0].split('/').length);
    for (const [rel, m] of dirs) {
      const [uid, gid] = this.hostIds(m);
      this.queue(rel === '' ? '.' : rel, [OP.dirMeta, rel, uid, gid, m.mode, m.mtime, this.opaque.has(rel)]);
    }
    this.flush();
    const owned = native().extractFinish(this.root);
    if (owned) throw this.hostError(owned.path ?? '.', owned);
    return this.stats;
  }
}

/**
 * Runs a tar parser over a stream of (already decompressed) archive bytes, calling
 * `onEntry` synchronously for each entry. Truncated input, bad checksums and any error
 * thrown by `onEntry` reject with EBADIMAGE (HutchErrors from `onEntry` pass unchanged).
 */
export async function readTar(chunks: AsyncIterable<Buffer>, onEntry: (e: ReadEntry) => void, label: string): Promise<void> {
  let failure: unknown;
  const parser = new Parser({ strict: true, maxMetaEntrySize: 1024 * 1024 });
  let last = '';
  parser.on('entry', (e: ReadEntry) => {
    if (failure) {
      e.resume();
      return;
    }
    last = e.path;
    try {
      onEntry(e);
    } catch (err) {
      failure ??= err;
      e.resume();
    }
  });
  parser.on('error', (err: Error) => {
    failure ??= err;
  });
  let ended = false;
  const done = new Promise<void>((resolve) => parser.on('end', () => { ended = true; resolve(); }));
  for await (const chunk of chunks) {
    if (failure) break;
    try {
      parser.write(chunk);
    } catch (err) {
      failure ??= err;
    }
    if (failure) break;
  }
  if (!failure) {
    parser.end();
    await Promise.race([done, new Promise((r) => setImmediate(r))]);
    if (!ended && !failure) await done;
  }
  if (failure) {
    if (HutchError.is(failure)) throw failure;
    const code = (failure as NodeJS.ErrnoException).code;
    if (typeof code === 'string' && STORE_ERRNOS.has(code)) {
      throw new HutchError('ESTORE', `${label}: writing entry ${JSON.stringify(last)} into the store failed: ${code}`, { errno: code, cause: failure });
    }
    if (typeof code === 'string' && code.startsWith('E') && !code.startsWith('EBAD')) {
      // A host-side failure (ENOSPC, ENAMETOOLONG, EACCES), not a malformed archive.
      throw new HutchError('EBADIMAGE', `${label}: extracting entry ${JSON.stringify(last)} failed: ${code} (${(failure as Error).message})`, {
        errno: code,
        path: last,
        cause: failure,
      });
    }
    const msg = failure instanceof Error ? failure.message : String(failure);
    const where = last ? ` (at or after entry ${JSON.stringify(last)})` : '';
    throw new HutchError('EBADIMAGE', `${label}: not a valid tar archive${where}: ${msg}`, { cause: failure });
  }
}

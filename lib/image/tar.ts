import {
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lutimesSync,
  mkdirSync,
  openSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeSync,
  chmodSync,
  chownSync,
  utimesSync,
} from 'node:fs';
import { spawn } from 'node:child_process';
import { Parser, type ReadEntry } from 'tar';
import { HutchError, unsupported } from '../errors.js';
import { tarBuffer, type TarEntry } from './tarwriter.js';

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
 * - a byte and an entry limit stop huge or endless archives.
 * Every refusal is `EBADIMAGE` naming the entry; the caller discards the directory.
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
  shift: { uid: number; gid: number } | null;
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

const ID_LIMIT = 65536;

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

export class LayerExtractor {
  private readonly kinds = new Map<string, Kind>([['', 'dir']]);
  private readonly dirMeta = new Map<string, Meta>();
  private readonly whiteouts: { path: string; meta: Meta }[] = [];
  private readonly fifos: { path: string; meta: Meta }[] = [];
  private readonly opaque = new Set<string>();
  private readonly stats: LayerStats = { sizeBytes: 0, entries: 0, skippedDevices: 0, whiteouts: 0, opaqueDirs: 0 };
  private readonly now = Math.floor(Date.now() / 1000);
  /** Files being written: an extraction stopped mid-entry (a full disk elsewhere, a bad archive) closes them in close(). */
  private readonly open = new Set<() => void>();

  constructor(private readonly dir: string, private readonly opts: ExtractOptions) {
    mkdirSync(dir, { mode: 0o700 });
    this.dirMeta.set('', { mode: 0o755, uid: 0, gid: 0, mtime: this.now });
  }

  /** Closes the files of entries that never ended. Idempotent; call it however extraction ends. */
  close(): void {
    for (const c of [...this.open]) {
      try {
        c();
      } catch {}
    }
  }

  private abs(rel: string): string {
    return rel === '' ? this.dir : `${this.dir}/${rel}`;
  }

  private meta(e: ReadEntry, name: string): Meta {
    const uid = e.uid ?? 0;
    const gid = e.gid ?? 0;
    if (!Number.isInteger(uid) || uid < 0 || uid >= ID_LIMIT || !Number.isInteger(gid) || gid < 0 || gid >= ID_LIMIT) {
      throw bad(this.opts.label, name, `is owned by ${uid}:${gid}; ids must be below ${ID_LIMIT} to map into a sandbox`);
    }
    const mtime = e.mtime ? Math.floor(e.mtime.getTime() / 1000) : this.now;
    return { mode: (e.mode ?? 0o644) & 0o7777, uid, gid, mtime: Number.isFinite(mtime) ? mtime : this.now };
  }

  private hostIds(m: Meta): [number, number] | null {
    const s = this.opts.shift;
    return s ? [s.uid + m.uid, s.gid + m.gid] : null;
  }

  /** Makes sure every parent of `parts` is a directory of this layer, creating implied ones. */
  private parents(name: string, parts: string[]): void {
    let rel = '';
    for (let i = 0; i < parts.length - 1; i++) {
      rel = rel === '' ? parts[i]! : `${rel}/${parts[i]}`;
      const kind = this.kinds.get(rel);
      if (kind === undefined) {
        mkdirSync(this.abs(rel), { mode: 0o700 });
        this.kinds.set(rel, 'dir');
        this.dirMeta.set(rel, { mode: 0o755, uid: 0, gid: 0, mtime: this.now });
      } else if (kind !== 'dir') {
        throw bad(this.opts.label, name, `goes through ${JSON.stringify(rel)}, which this archive made a ${kind === 'symlink' ? 'symlink' : 'non-directory'}`);
      }
    }
  }

  /** Clears whatever an earlier entry put at `rel` (a later entry replaces it, as in tar). */
  private clear(rel: string, keepDir: boolean): void {
    const kind = this.kinds.get(rel);
    if (kind === undefined) return;
    if (kind === 'dir') {
      if (keepDir) return;
      rmSync(this.abs(rel), { recursive: true, force: true });
      const prefix = `${rel}/`;
      for (const k of [...this.kinds.keys()]) if (k.startsWith(prefix)) this.kinds.delete(k);
      for (const k of [...this.dirMeta.keys()]) if (k.startsWith(prefix)) this.dirMeta.delete(k);
      this.dirMeta.delete(rel);
      this.opaque.delete(rel);
    } else if (kind === 'special') {
      const drop = (list: { path: string }[]) => {
        const i = list.findIndex((w) => w.path === rel);
        if (i >= 0) list.splice(i, 1);
      };
      drop(this.whiteouts);
      drop(this.fifos);
    } else {
      unlinkSync(this.abs(rel));
    }
    this.kinds.delete(rel);
  }

  /** Handles one entry, synchronously (its data arrives through 'data' events). */
  entry(e: ReadEntry): void {
    const label = this.opts.label;
    const name = e.path;
    if (++this.stats.entries > this.opts.limits.maxEntries) {
      throw bad(label, name, `is past the limit of ${this.opts.limits.maxEntries} entries`);
    }
    const parts = entryParts(label, name);
    const base = parts[parts.length - 1] ?? '';

    if (base.startsWith('.wh.')) {
      e.resume();
      if (e.type !== 'File' && e.type !== 'OldFile' && e.type !== 'ContiguousFile') {
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
      this.clear(rel, false);
      this.kinds.set(rel, 'special');
      this.whiteouts.push({ path: rel, meta: { mode: 0, uid: 0, gid: 0, mtime: this.now } });
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
    const at = this.abs(rel);

    switch (e.type) {
      case 'Directory': {
        e.resume();
        const meta = this.meta(e, name);
        this.parents(name, parts);
        if (this.kinds.get(rel) !== 'dir') {
          this.clear(rel, false);
          mkdirSync(at, { mode: 0o700 });
          this.kinds.set(rel, 'dir');
        }
        this.dirMeta.set(rel, meta);
        return;
      }
      case 'File':
      case 'OldFile':
      case 'ContiguousFile': {
        const meta = this.meta(e, name);
        this.parents(name, parts);
        this.clear(rel, false);
        const fd = openSync(at, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
        this.kinds.set(rel, 'file');
        let open = true;
        const close = () => {
          if (open) {
            open = false;
            this.open.delete(close);
            closeSync(fd);
          }
        };
        this.open.add(close);
        e.on('data', (chunk: Buffer) => {
          if (!open) return;
          this.stats.sizeBytes += chunk.length;
          let off = 0;
          try {
            while (off < chunk.length) off += writeSync(fd, chunk, off, chunk.length - off);
          } catch (err) {
            close(); // a full disk must not leak the fd; the extraction fails with the error
            throw err;
          }
        });
        e.on('end', () => {
          if (!open) return;
          try {
            const ids = this.hostIds(meta);
            // chown clears set-id bits, so it comes before chmod.
            if (ids) fchownSync(fd, ids[0], ids[1]);
            fchmodSync(fd, meta.mode);
            futimesSync(fd, meta.mtime, meta.mtime);
          } finally {
            close();
          }
        });
        e.on('error', close);
        return;
      }
      case 'SymbolicLink': {
        e.resume();
        const meta = this.meta(e, name);
        const target = e.linkpath ?? '';
        if (target === '' || target.includes('\0')) throw bad(label, name, 'is a symlink with an empty target');
        this.parents(name, parts);
        this.clear(rel, false);
        // The target is stored as written and never followed here: inside the sandbox it
        // resolves against the sandbox's own root.
        symlinkSync(target, at);
        this.kinds.set(rel, 'symlink');
        const ids = this.hostIds(meta);
        if (ids) lchownSync(at, ids[0], ids[1]);
        lutimesSync(at, meta.mtime, meta.mtime);
        return;
      }
      case 'Link': {
        e.resume();
        const target = e.linkpath ?? '';
        if (target.startsWith('/')) throw bad(label, name, `is a hardlink to the absolute path ${JSON.stringify(target)}`);
        const tparts = entryParts(label, target);
        const trel = tparts.join('/');
        const tkind = this.kinds.get(trel);
        if (tkind !== 'file' && tkind !== 'symlink') {
          throw bad(label, name, `is a hardlink to ${JSON.stringify(target)}, which is not a file extracted earlier from this archive`);
        }
        this.parents(name, parts);
        if (trel === rel) return;
        this.clear(rel, false);
        linkSync(this.abs(trel), at);
        this.kinds.set(rel, tkind);
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
        this.clear(rel, false);
        this.kinds.set(rel, 'special');
        this.fifos.push({ path: rel, meta });
        return;
      }
      default:
        e.resume();
        throw bad(label, name, `has an unsupported entry type ${e.type}`);
    }
  }

  /** Creates whiteouts, FIFOs and opaque markers, then sets directory metadata. */
  async finish(): Promise<LayerStats> {
    await this.specials();
    const ids = (m: Meta) => this.hostIds(m);
    // Deepest first, so setting a child's metadata never changes an already-set parent.
    const dirs = [...this.dirMeta.entries()].sort((a, b) => b[0].split('/').length - a[0].split('/').length);
    for (const [rel, m] of dirs) {
      const p = this.abs(rel);
      const i = ids(m);
      if (i) chownSync(p, i[0], i[1]);
      chmodSync(p, m.mode);
      utimesSync(p, m.mtime, m.mtime);
    }
    return this.stats;
  }

  /**
   * Node has neither mknod(2) nor setxattr(2): GNU tar makes the whiteouts (0:0 character
   * devices), FIFOs and opaque xattrs from an archive hutch writes here, whose names were
   * all checked above and whose parents are directories of this layer. One process per
   * layer, and only for layers that need it.
   */
  private async specials(): Promise<void> {
    if (this.whiteouts.length === 0 && this.fifos.length === 0 && this.opaque.size === 0) return;
    const entries: TarEntry[] = [];
    const own = (m: Meta) => {
      const i = this.hostIds(m);
      return i ? { uid: i[0], gid: i[1] } : {};
    };
    for (const rel of this.opaque) {
      const m = this.dirMeta.get(rel) ?? { mode: 0o755, uid: 0, gid: 0, mtime: this.now };
      entries.push({ path: rel === '' ? '.' : rel, type: 'dir', mode: 0o700, ...own(m), mtime: m.mtime, xattrs: { 'user.overlay.opaque': 'y' } });
    }
    for (const w of this.whiteouts) entries.push({ path: w.path, type: 'char', mode: 0, ...own(w.meta), mtime: w.meta.mtime });
    for (const f of this.fifos) entries.push({ path: f.path, type: 'fifo', mode: f.meta.mode, ...own(f.meta), mtime: f.meta.mtime });
    await gnuTarExtract(this.dir, tarBuffer(entries), this.opts.label);
  }
}

async function gnuTarExtract(dir: string, archive: Buffer, label: string): Promise<void> {
  const args = ['--xattrs', '--xattrs-include=user.overlay.opaque', '--numeric-owner', '-xpf', '-', '-C', dir];
  await new Promise<void>((resolve, reject) => {
    let stderr = '';
    const child = spawn('tar', args, { stdio: ['pipe', 'ignore', 'pipe'] });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (e) => reject(unsupported('making overlay whiteouts (GNU tar is needed)', 'apt-get install tar', e)));
    child.on('close', (code) => {
      if (code === 0) resolve();
      else reject(new HutchError('EBADIMAGE', `${label}: making whiteouts and opaque directories failed: ${stderr.trim() || `tar exited ${code}`}`));
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(archive);
  });
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

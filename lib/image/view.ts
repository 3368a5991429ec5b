/**
 * One scoped view of an image's tree as overlay merges its layers, for host code that must
 * read a path of an image (its /etc/passwd and /etc/group for a User, a build's COPY
 * destination and WORKDIR). Image data is hostile; the view keeps host root inside the image:
 *
 * - names are looked up layer by layer, top first: a whiteout (a 0:0 character device, or
 *   overlay's xattr form: an empty file marked `user.overlay.whiteout`) hides
 *   the name below, a non-directory hides every layer below, an opaque directory
 *   (`user.overlay.opaque=y`) hides the same directory of the layers below;
 * - the walk descends only through real directories (lstat, no symlink followed on the host);
 *   the image's symlinks are resolved by the view itself, inside the image root (`..` stops at
 *   the root, an absolute target starts again from it), at most 40 of them;
 * - a file is read by the addon on the libuv pool, opened beneath its layer directory with
 *   openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), O_NONBLOCK (a FIFO never blocks the open),
 *   and read only when fstat says it is a regular file of at most the cap;
 * - everything is asynchronous: nothing the image holds can stall the event loop.
 */
import type { Stats } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { join } from 'node:path';
import { HutchError } from '../errors.js';
import { isFailure, native } from '../native.js';
import type { StoreContext } from './context.js';

/** The most a view reads of one file (an /etc/passwd of 4 MiB has some 50,000 users). */
export const VIEW_READ_MAX = 4 * 1024 * 1024;

const OPAQUE_XATTR = 'user.overlay.opaque';
const WHITEOUT_XATTR = 'user.overlay.whiteout';
const ENOTSUP = 95;
const ENODATA = 61;

/** An object of the merged tree: its lstat, the layer dir holding it and its path there. */
export interface ViewEntry {
  st: Stats;
  /** Host path (layer + rel); for lstat/readlink only, never to open. */
  host: string;
  layer: string;
  rel: string;
}

function kind(st: Stats): string {
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  if (st.isDirectory()) return 'a directory';
  if (st.isSymbolicLink()) return 'a symlink';
  return 'not a regular file';
}

export class ImageView {
  /** Layer directories, top first. */
  readonly dirs: string[];
  private readonly opaqueCache = new Map<string, string | null>();

  /**
   * @param dirs the layer directories, TOP FIRST (as ResolvedImage.lowerdirs).
   * @param label names the image in errors ("image app:1").
   */
  constructor(dirs: string[], readonly label: string) {
    this.dirs = dirs;
  }

  /** A view of a store image's layers (diff ids, bottom first, as Image.layers). */
  static of(store: StoreContext, layers: string[], label: string): ImageView {
    return new ImageView(layers.map((d) => store.path('layers', d.slice(7))).reverse(), label);
  }

  private async opaque(layer: string, rel: string): Promise<boolean> {
    return (await this.mark(layer, rel)) === 'y';
  }

  /** A directory's `user.overlay.opaque`: 'y' opaque, 'x' holds xattr whiteouts, null neither. */
  private async mark(layer: string, rel: string): Promise<string | null> {
    const key = `${layer}\0${rel}`;
    const hit = this.opaqueCache.get(key);
    if (hit !== undefined) return hit;
    const v = await native().viewXattr(layer, rel, OPAQUE_XATTR);
    if (isFailure(v) && v.errno !== ENOTSUP && v.errno !== ENODATA) {
      throw new HutchError('EBADIMAGE', `${this.label}: cannot read the opaque mark of /${rel} in layer ${layer} (${v.step}: errno ${v.errno})`, { path: rel });
    }
    const mark = typeof v === 'string' ? v : null;
    this.opaqueCache.set(key, mark);
    return mark;
  }

  /**
   * Overlay's other whiteout: an empty regular file marked `user.overlay.whiteout`, in a
   * directory marked `user.overlay.opaque=x` (made where a 0:0 device cannot be, tar.ts).
   */
  private async xattrWhiteout(e: ViewEntry): Promise<boolean> {
    if (!e.st.isFile() || e.st.size !== 0) return false;
    const parent = e.rel.includes('/') ? e.rel.slice(0, e.rel.lastIndexOf('/')) : '';
    if ((await this.mark(e.layer, parent)) !== 'x') return false;
    const v = await native().viewXattr(e.layer, e.rel, WHITEOUT_XATTR);
    if (isFailure(v) && v.errno !== ENOTSUP && v.errno !== ENODATA) {
      throw new HutchError('EBADIMAGE', `${this.label}: cannot read the whiteout mark of /${e.rel} in layer ${e.layer} (${v.step}: errno ${v.errno})`, { path: e.rel });
    }
    return v === 'y';
  }

  /** The topmost object at `parts` (symlinks not followed), or null. */
  async lookup(parts: string[]): Promise<ViewEntry | null> {
    let layers = this.dirs;
    let found: ViewEntry | null = null;
    for (let i = 0; i < parts.length; i++) {
      const rel = parts.slice(0, i + 1).join('/');
      found = null;
      const below: string[] = [];
      for (const [k, L] of layers.entries()) {
        let st: Stats;
        try {
          st = await fsp.lstat(join(L, rel));
        } catch {
          continue;
        }
        found ??= { st, host: join(L, rel), layer: L, rel };
        if (!st.isDirectory()) break; // hides this name in every layer below
        below.push(L);
        if (k < layers.length - 1 && (await this.opaque(L, rel))) break;
      }
      if (!found || (found.st.isCharacterDevice() && found.st.rdev === 0) || (await this.xattrWhiteout(found))) return null;
      if (i < parts.length - 1 && !found.st.isDirectory()) return null;
      layers = below;
    }
    if (found) return found;
    // The root: always a directory (the top layer's own root stands for it).
    const top = this.dirs[0];
    return parts.length === 0 && top ? { st: await fsp.lstat(top), host: top, layer: top, rel: '' } : null;
  }

  /** Resolves symlinks inside the image (scoped to its root): the real path's components. */
  async resolve(path: string, followLast: boolean): Promise<string[]> {
    let todo = path.split('/').filter((p) => p !== '' && p !== '.');
    let done: string[] = [];
    for (let hops = 0; todo.length > 0; ) {
      const name = todo.shift()!;
      if (name === '..') {
        done.pop();
        continue;
      }
      const cand = [...done, name];
      const f = await this.lookup(cand);
      if (f && f.st.isSymbolicLink() && (todo.length > 0 || followLast)) {
        if (++hops > 40) throw new HutchError('EBADIMAGE', `${this.label}: too many symlinks resolving ${path} in the image`, { path });
        const target = await fsp.readlink(f.host);
        if (target.startsWith('/')) done = [];
        todo = [...target.split('/').filter((p) => p !== '' && p !== '.'), ...todo];
        continue;
      }
      done = cand;
      if (!f) return [...done, ...todo.filter((p) => p !== '..')];
    }
    return done;
  }

  /**
   * The bytes of the image's file at `path` (symlinks resolved inside the image), or null when
   * there is none. EBADIMAGE when it is not a regular file or is larger than `max`.
   */
  async readFile(path: string, max = VIEW_READ_MAX): Promise<Buffer | null> {
    const f = await this.lookup(await this.resolve(path, true));
    if (!f) return null;
    const shown = `/${f.rel}` === path ? path : `${path} (/${f.rel} in the image)`;
    if (!f.st.isFile()) throw new HutchError('EBADIMAGE', `${this.label}: ${shown} is ${kind(f.st)}, not a regular file; refusing to read it`, { path });
    if (f.st.size > max) throw new HutchError('EBADIMAGE', `${this.label}: ${shown} is ${f.st.size} bytes, more than the ${max} hutch reads`, { path });
    const r = await native().viewRead(f.layer, f.rel, max);
    if (isFailure(r)) throw new HutchError('EBADIMAGE', `${this.label}: cannot read ${shown} (${r.step}: errno ${r.errno})`, { path });
    if (r.data === undefined || r.data.length > max || (r.mode & 0o170000) !== 0o100000) {
      throw new HutchError('EBADIMAGE', `${this.label}: ${shown} changed while it was read (now ${r.size} bytes, mode 0${r.mode.toString(8)})`, { path });
    }
    return r.data;
  }
}

/** The fields of the line of `file` whose first field is `name`, or null. */
async function entry(view: ImageView, file: string, name: string, minFields: number): Promise<string[] | null> {
  const buf = await view.readFile(file);
  if (!buf) return null;
  for (const line of buf.toString('utf8').split('\n')) {
    const f = line.split(':');
    if (f[0] === name && f.length >= minFields) return f;
  }
  return null;
}

function idField(view: ImageView, file: string, name: string, v: string | undefined): number {
  if (v === undefined || !/^\d{1,10}$/.test(v) || Number(v) > 0xfffffffe) {
    throw new HutchError('EBADIMAGE', `${view.label}: the ${file} entry of ${JSON.stringify(name)} has no valid numeric id (${JSON.stringify(v)})`, { path: file });
  }
  return Number(v);
}

/**
 * `user[:group]` (names or numbers) to ids through the image's /etc/passwd and /etc/group, as
 * Docker reads them: a user name gives its passwd gid unless a group is given; a uid alone
 * gives gid = uid. EINVAL when a name is not there; EBADIMAGE when the files cannot be read
 * safely (not regular files, too large) or an entry has no numeric id.
 */
export async function userIds(view: ImageView, spec: string): Promise<{ uid: number; gid: number }> {
  const [u, g] = spec.split(':') as [string, string | undefined];
  let uid: number;
  let gid: number | undefined;
  if (/^\d+$/.test(u)) uid = idField(view, 'uid', u, u);
  else {
    const f = await entry(view, '/etc/passwd', u, 4);
    if (!f) throw new HutchError('EINVAL', `${view.label}: user ${JSON.stringify(spec)}: no user ${JSON.stringify(u)} in the image's /etc/passwd`, { hint: "pass user: 'uid:gid'" });
    uid = idField(view, '/etc/passwd', u, f[2]);
    gid = idField(view, '/etc/passwd', u, f[3]);
  }
  if (g !== undefined && g !== '') {
    if (/^\d+$/.test(g)) gid = idField(view, 'gid', g, g);
    else {
      const f = await entry(view, '/etc/group', g, 3);
      if (!f) throw new HutchError('EINVAL', `${view.label}: user ${JSON.stringify(spec)}: no group ${JSON.stringify(g)} in the image's /etc/group`, { hint: "pass user: 'uid:gid'" });
      gid = idField(view, '/etc/group', g, f[2]);
    }
  }
  return { uid, gid: gid ?? uid };
}

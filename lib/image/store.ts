import { existsSync, mkdirSync, chmodSync, chownSync, renameSync, rmdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve as resolvePath } from 'node:path';
import { randomBytes } from 'node:crypto';
import { HutchError, hostFailure, invalid, storeErrno } from '../errors.js';
import { hostRange } from '../identity.js';
import { StoreLock } from './lock.js';
import { teardownsDone } from '../teardowns.js';
import { unmountUnder } from '../disk.js';
import { storeHooks } from './hooks.js';
import { isAlive, ownerFromName, ownerTag, parseOwner, selfOwner } from './owner.js';
import { DEFAULT_LIMITS, type ExtractLimits } from './tar.js';
import { HEX64 } from './blob.js';
import type { Image, ImageRecord, LayerInfo, Progress, ResolvedImage } from './types.js';
import { importSource, type PendingImage } from './import.js';
import { BUILTINS, ensureBuiltin, type BuiltinName } from './builtin.js';
import type { BuildOptions } from './build.js';
import type { CommitOptions } from './commit.js';

export type { Image, ImageConfig, Progress, ResolvedImage } from './types.js';
export type { BuildOptions } from './build.js';
export type { CommitOptions } from './commit.js';

/**
 * Options of `new ImageStore(...)`.
 *
 * @example
 * ```ts
 * const store = new ImageStore({ root: '/srv/hutch', maxLayerBytes: 8 * 1024 ** 3 });
 * ```
 */
export interface ImageStoreOptions {
  /**
   * The store's directory (resolved to an absolute path; created on first use). Share it
   * between processes freely; put it on the disk that should hold the images and the
   * writable layers of persistent sandboxes.
   */
  root: string;
  /** Largest uncompressed layer accepted by import and pull, in bytes (default 64 GiB); past it: `EBADIMAGE`. */
  maxLayerBytes?: number;
  /** Most entries in one layer (default 4,000,000); past it: `EBADIMAGE`. */
  maxLayerEntries?: number;
}

const ID_PREFIX = /^[0-9a-f]{12,64}$/;
const TAG = /^[A-Za-z0-9][A-Za-z0-9._\/:@+-]{0,255}$/;

/**
 * Why `tag` cannot name an image, or undefined when it can. A tag must never read as an id
 * (`sha256:<hex>`, 12 to 64 hex digits) or a builtin's name: lookups try ids first, and a tag
 * shaped like another image's id would otherwise redirect a reference by id.
 */
export function tagProblem(tag: unknown): string | undefined {
  if (typeof tag !== 'string' || !TAG.test(tag)) return "a name like 'app' or 'app:1.0' (letters, digits, . _ / : @ + -)";
  if (tag.startsWith('sha256:') || ID_PREFIX.test(tag)) return "a name that is not an image id ('sha256:<hex>' or 12 to 64 hex digits)";
  if ((BUILTINS as readonly string[]).includes(tag)) return `a name other than the builtin images ${BUILTINS.join(', ')}`;
  return undefined;
}

/** True when `ref` has the shape of an image id: such a reference never resolves through tags. */
function idShaped(ref: string): boolean {
  return (ref.startsWith('sha256:') && HEX64.test(ref.slice(7))) || ID_PREFIX.test(ref);
}

/**
 * A store operation's failure as its caller sees it. A write the store's filesystem refused
 * (STORE_ERRNOS: full, over quota, read-only, broken), also when code below wrapped it as
 * EBADIMAGE, EBUILD or EREGISTRY, is `ESTORE` with `errno` and a `path` under the store; a raw
 * errno error on the store's files is `ESTORE` too; other HutchErrors pass unchanged. The
 * callers have removed the operation's work directory by then: nothing of it is kept.
 */
export function storeFailure(root: string, what: string, e: unknown): unknown {
  // The layer cap's ESTORE (EFBIG, the path inside the layer) is not a write failure: as it is.
  if (HutchError.is(e) && e.code === 'ESTORE' && !e.path?.startsWith(root + '/')) return e;
  const found = storeErrno(e);
  if (found) {
    const path = found.path !== undefined && (found.path === root || found.path.startsWith(root + '/')) ? found.path : root;
    const errno = found.errno;
    const hint =
      errno === 'ENOSPC' || errno === 'EDQUOT'
        ? "the store's disk is full: free space (store.remove() images you do not need, then store.prune()) and try again"
        : errno === 'EROFS'
          ? 'the store is on a read-only filesystem: give ImageStore a writable root'
          : errno === 'EMFILE' || errno === 'ENFILE'
            ? 'the process or system ran out of file descriptors: raise the limit (ulimit -n) and try again'
            : errno === 'EFBIG'
              ? "a file is larger than the store's filesystem allows"
              : "the store's disk failed: look at the kernel log (dmesg)";
    return new HutchError('ESTORE', `${what} failed: the store ${root} could not be written (${errno} at ${path}); nothing of it was kept: ${hint}`, { errno, path, hint, cause: e });
  }
  if (HutchError.is(e)) return e;
  const err = e as NodeJS.ErrnoException | undefined;
  if (typeof err?.code !== 'string') return e;
  // Another filesystem failure (EACCES, EMLINK...) on the store's files: still the store's, typed.
  const failure = hostFailure('ESTORE', `${what} in the store ${root} failed`, e);
  return failure.path === undefined ? new HutchError('ESTORE', failure.message, { errno: failure.errno, path: root, cause: e }) : failure;
}

/** Directory permissions: see docs/images.md, "Ownership". */
const SHARED_DIRS = ['layers', 'sandboxes'];
const PRIVATE_DIRS = ['blobs', 'blobs/sha256', 'images', 'layerinfo', 'builtin', 'buildcache', 'tmp'];

/**
 * The image store: content-addressed blobs, extracted read-only layers shared by every image
 * that uses them, image records and tags, safe under concurrent use by several processes.
 * Layout and rules: docs/images.md.
 *
 * The builtin images `'host'` and `'busybox'` need no import: they are made on first use.
 *
 * @example
 * ```ts
 * const store = new ImageStore({ root: '/var/lib/hutch' });
 * await store.import('./rootfs.tar.gz', { tag: 'myroot' });
 * await store.pull('alpine:3.20');
 * const sb = await Sandbox.create({ store, image: 'alpine:3.20' });
 * ```
 */
export class ImageStore {
  /** The store's directory, absolute. */
  readonly root: string;
  /** Caps on one extracted layer, from {@link ImageStoreOptions} `maxLayerBytes` and `maxLayerEntries`. */
  readonly limits: ExtractLimits;
  /** @internal */
  readonly lock: StoreLock;
  private ready = false;
  private readonly records = new Map<string, ImageRecord>();

  /**
   * A store at `options.root`. Nothing is touched on disk until first use.
   *
   * @throws HutchError `EINVAL` when `root` is not a non-empty string.
   *
   * @example
   * ```ts
   * const store = new ImageStore({ root: `${process.env.HOME}/.cache/hutch` });
   * ```
   */
  constructor(options: ImageStoreOptions) {
    if (typeof options !== 'object' || options === null || typeof options.root !== 'string' || options.root === '') {
      throw invalid('store.root', 'a directory path', options?.root);
    }
    // Absolute, because the sandbox code chdirs into layers/ and names lowerdirs relative to it.
    this.root = resolvePath(options.root);
    this.limits = {
      maxBytes: options.maxLayerBytes ?? DEFAULT_LIMITS.maxBytes,
      maxEntries: options.maxLayerEntries ?? DEFAULT_LIMITS.maxEntries,
    };
    this.lock = new StoreLock(join(this.root, 'lock'));
  }

  /**
   * The store sandboxes use unless told otherwise: at `$HUTCH_ROOT`, else /var/lib/hutch as
   * root, else `$XDG_DATA_HOME/hutch` (~/.local/share/hutch). A new object each call, over the
   * same directory.
   *
   * @example
   * ```ts
   * const images = await ImageStore.default().list();
   * ```
   */
  static default(): ImageStore {
    const env = process.env.HUTCH_ROOT;
    if (env) return new ImageStore({ root: env });
    if (process.geteuid?.() === 0) return new ImageStore({ root: '/var/lib/hutch' });
    const data = process.env.XDG_DATA_HOME || join(homedir(), '.local', 'share');
    return new ImageStore({ root: join(data, 'hutch') });
  }

  /** @internal */
  path(...parts: string[]): string {
    return join(this.root, ...parts);
  }

  /** @internal Host ids that sandbox id 0 maps to, or null when not root (files stay the caller's). */
  shift(): { uid: number; gid: number } | null {
    if (process.geteuid?.() !== 0) return null;
    const r = hostRange();
    return { uid: r.uid, gid: r.gid };
  }

  /**
   * Creates the layout. The root, layers/ and sandboxes/ are root:<range gid> 0710 when
   * running as root: the sandbox's root (range uid 0, group range gid) may pass through to
   * mount the layers, other host users may not even reach them.
   * @internal
   */
  ensure(): void {
    if (this.ready) return;
    mkdirSync(this.root, { recursive: true, mode: 0o700 });
    const shift = this.shift();
    const share = (p: string) => {
      if (shift) {
        chownSync(p, 0, shift.gid);
        chmodSync(p, 0o710);
      } else chmodSync(p, 0o700);
    };
    share(this.root);
    for (const d of SHARED_DIRS) {
      mkdirSync(this.path(d), { recursive: true, mode: 0o700 });
      share(this.path(d));
    }
    for (const d of PRIVATE_DIRS) mkdirSync(this.path(d), { recursive: true, mode: 0o700 });
    this.ready = true;
  }

  // ---- records and tags -------------------------------------------------------------

  /** @internal */
  async writeJson(target: string, value: unknown): Promise<void> {
    const tmp = this.path('tmp', `w-${ownerTag()}-${randomBytes(6).toString('hex')}`);
    try {
      await fsp.writeFile(tmp, JSON.stringify(value, null, 1) + '\n', { mode: 0o600 });
      await fsp.rename(tmp, target);
    } catch (e) {
      await fsp.rm(tmp, { force: true });
      throw e;
    }
  }

  /** @internal */
  async readTags(): Promise<Record<string, string>> {
    try {
      const v = JSON.parse(await fsp.readFile(this.path('tags.json'), 'utf8')) as unknown;
      return typeof v === 'object' && v !== null ? (v as Record<string, string>) : {};
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
      throw e;
    }
  }

  /** @internal */
  async readRecord(hex: string): Promise<ImageRecord | undefined> {
    const cached = this.records.get(hex);
    const file = this.path('images', `${hex}.json`);
    if (cached) {
      // Records never change; only check the image was not removed meanwhile.
      if (existsSync(file)) return cached;
      this.records.delete(hex);
      return undefined;
    }
    try {
      const rec = JSON.parse(await fsp.readFile(file, 'utf8')) as ImageRecord;
      this.records.set(hex, rec);
      return rec;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new HutchError('EBADIMAGE', `image record ${file} is unreadable: ${(e as Error).message}`, { path: file, cause: e });
    }
  }

  private toImage(rec: ImageRecord, tags: Record<string, string>): Image {
    return {
      id: rec.id,
      tags: Object.keys(tags).filter((t) => tags[t] === rec.id).sort(),
      layers: [...rec.layers],
      config: structuredClone(rec.config),
      sizeBytes: rec.sizeBytes,
    };
  }

  private static tagCandidates(ref: string): string[] {
    const out = [ref];
    const slash = ref.lastIndexOf('/');
    if (!ref.slice(slash + 1).includes(':') && !ref.includes('@')) out.push(`${ref}:latest`);
    if (ref.endsWith(':latest')) out.push(ref.slice(0, -':latest'.length));
    return out;
  }

  /**
   * Finds the image hex for a ref without creating builtins. Ids come before tags, and a ref
   * shaped like an id never resolves through a tag (a tag made before tags were checked, or
   * planted by an old archive, cannot take over an id).
   */
  private async lookup(ref: string, tags: Record<string, string>): Promise<string | undefined> {
    if (idShaped(ref)) {
      const hex = ref.startsWith('sha256:') ? ref.slice(7) : ref;
      if (hex.length === 64) return (await this.readRecord(hex)) ? hex : undefined;
      const names = (await fsp.readdir(this.path('images'))).filter((n) => n.endsWith('.json') && n.startsWith(hex));
      if (names.length > 1) {
        throw new HutchError('ENOIMAGE', `image id prefix ${ref} is ambiguous (${names.length} images); give more digits`);
      }
      return names.length === 1 ? names[0]!.slice(0, 64) : undefined;
    }
    for (const t of ImageStore.tagCandidates(ref)) {
      const id = tags[t];
      if (id && (await this.readRecord(id.slice(7)))) return id.slice(7);
    }
    return undefined;
  }

  private async find(ref: string): Promise<ImageRecord> {
    if (typeof ref !== 'string' || ref === '') throw invalid('image', "a tag, 'sha256:<id>' or an id prefix", ref);
    this.ensure();
    if ((BUILTINS as readonly string[]).includes(ref)) {
      const hex = await ensureBuiltin(this, ref as BuiltinName);
      const rec = await this.readRecord(hex);
      if (rec) return rec;
    }
    const hex = await this.lookup(ref, await this.readTags());
    const rec = hex ? await this.readRecord(hex) : undefined;
    if (!rec) throw new HutchError('ENOIMAGE', `no image ${JSON.stringify(ref)} in the store ${this.root}`);
    return rec;
  }

  // ---- the API ----------------------------------------------------------------------

  /**
   * Every image in the store, sorted by id, the builtins included when this host can make
   * them (`busybox` needs the host's busybox-static).
   *
   * @example
   * ```ts
   * for (const img of await store.list()) console.log(img.id.slice(7, 19), img.tags.join(' '), img.sizeBytes);
   * ```
   */
  async list(): Promise<Image[]> {
    this.ensure();
    for (const b of BUILTINS) {
      try {
        await ensureBuiltin(this, b);
      } catch (e) {
        if (!(HutchError.is(e) && e.code === 'EUNSUPPORTED')) throw e;
      }
    }
    const tags = await this.readTags();
    const out: Image[] = [];
    for (const n of await fsp.readdir(this.path('images'))) {
      if (!n.endsWith('.json') || !HEX64.test(n.slice(0, 64))) continue;
      const rec = await this.readRecord(n.slice(0, 64));
      if (rec) out.push(this.toImage(rec, tags));
    }
    return out.sort((a, b) => a.id.localeCompare(b.id));
  }

  /**
   * An image by tag (`'app'` means `'app:latest'` too), full id (`sha256:<hex>`) or unique hex
   * prefix of at least 12 digits.
   *
   * @throws HutchError `ENOIMAGE` when there is none (or the prefix is ambiguous).
   *
   * @example
   * ```ts
   * const img = await store.get('busybox');
   * const same = await store.get(img.id.slice(7, 19));
   * ```
   */
  async get(ref: string): Promise<Image> {
    const rec = await this.find(ref);
    return this.toImage(rec, await this.readTags());
  }

  /**
   * Imports a rootfs tarball (plain or gzip), an OCI image layout (directory or tar) or a
   * `docker save` archive, from a path or a stream. Layers the store already has are not
   * extracted again. Every entry is checked while extracting: nothing lands outside the layer.
   *
   * @param options `tag`: a name for the image (not an id, not `host` or `busybox`);
   * `onProgress`: called as bytes are read.
   * @throws HutchError `EINVAL` (a bad tag), `EBADIMAGE` (an archive, manifest or entry rejected,
   * or a layer over the store's {@link ImageStore.limits}), `ESTORE` (the store's disk is full or
   * failed: `errno` e.g. `ENOSPC`, `path` under the store; nothing of the import is kept).
   *
   * @example
   * ```ts
   * import { createReadStream } from 'node:fs';
   * const a = await store.import('/tmp/app-oci.tar', { tag: 'app:1.0' });
   * const b = await store.import(createReadStream('/tmp/rootfs.tar.gz'), { tag: 'rootfs' });
   * ```
   */
  async import(
    source: string | NodeJS.ReadableStream,
    options: { tag?: string; onProgress?: (p: Progress) => void } = {},
  ): Promise<Image> {
    if (options.tag !== undefined) this.checkTag(options.tag);
    this.ensure();
    const op = await this.beginOp().catch((e: unknown) => {
      throw storeFailure(this.root, 'import', e);
    });
    try {
      const pending = await importSource(this, op, source, options.onProgress);
      if (options.tag !== undefined) pending.tags = [options.tag];
      return await this.commit(op, pending);
    } catch (e) {
      throw storeFailure(this.root, 'import', e);
    } finally {
      await op.close();
    }
  }

  /**
   * Pulls an image from an OCI / Docker registry (distribution API v2) and tags it with `ref`
   * as written. Docker Hub names work as in Docker (`alpine` is
   * `registry-1.docker.io/library/alpine:latest`); a multi-platform image gives this host's
   * platform. Anonymous, basic or bearer-token auth, as the registry asks.
   *
   * @param ref `[host[:port]/]repository[:tag][@sha256:<digest>]`.
   * @param options `insecure`: plain http; `auth`: credentials; `onProgress`: per layer.
   * @throws HutchError `EINVAL` (a malformed ref), `EREGISTRY` (the registry refused, failed,
   * or sent something that does not check out), `ESTORE` (the store could not be written:
   * `errno`, `path`; nothing of the pull is kept).
   *
   * @example
   * ```ts
   * const img = await store.pull('alpine:3.20');
   * await store.pull('localhost:5000/team/app:1.0', { insecure: true, auth: { username: 'ci', password: token } });
   * ```
   */
  async pull(
    ref: string,
    options: { insecure?: boolean; auth?: { username: string; password: string }; onProgress?: (p: Progress) => void } = {},
  ): Promise<Image> {
    const { pull } = await import('./registry.js');
    try {
      return await pull(this, ref, options);
    } catch (e) {
      throw storeFailure(this.root, `pull of ${ref}`, e);
    }
  }

  /**
   * Pushes an image of this store to a registry as `ref` (blobs the registry has already are
   * skipped).
   *
   * @param image An {@link Image} or a reference to one in this store.
   * @param ref Where to: `[host[:port]/]repository[:tag]` (a tag, not a digest).
   * @param options `insecure`: plain http; `auth`: credentials; `onProgress`: per blob.
   * @throws HutchError `ENOIMAGE` (no such image), `EINVAL` (a malformed ref, or a digest ref),
   * `EREGISTRY` (the registry refused or failed), `EBADIMAGE` (a blob of the image is gone from
   * the store: import it again).
   *
   * @example
   * ```ts
   * await store.push('app:1.0', 'registry.example.com/team/app:1.0', { auth: { username: 'ci', password: token } });
   * ```
   */
  async push(
    image: Image | string,
    ref: string,
    options: { insecure?: boolean; auth?: { username: string; password: string }; onProgress?: (p: Progress) => void } = {},
  ): Promise<void> {
    const { push } = await import('./registry.js');
    const rec = await this.find(typeof image === 'string' ? image : image.id);
    return push(this, rec, ref, options);
  }

  /**
   * Builds an image from Dockerfile text (docs/images.md, "Build"): FROM, RUN, COPY, ADD
   * (local), ENV, WORKDIR, USER, CMD, ENTRYPOINT, EXPOSE, ARG, LABEL. RUN steps run in
   * sandboxes; each step's result is cached in the store.
   *
   * @throws HutchError `EINVAL` (bad options or tag), `EBUILD` (a bad instruction, a failing
   * RUN, or a FROM image not in the store: FROM never pulls; the message names the Dockerfile line),
   * `ESTORE` (the store could not be written: `errno`, `path`; nothing of the build is kept).
   *
   * @example
   * ```ts
   * const img = await store.build({
   *   dockerfile: 'FROM busybox\nRUN mkdir /app\nCOPY main.sh /app/\nCMD ["/app/main.sh"]',
   *   context: './app',
   *   tag: 'app:dev',
   * });
   * ```
   */
  async build(options: BuildOptions): Promise<Image> {
    const { build } = await import('./build.js');
    try {
      return await build(this, options);
    } catch (e) {
      throw storeFailure(this.root, 'build', e);
    }
  }

  /**
   * A new image: `base` plus one layer made from an overlay upper dir (whiteouts back to
   * `.wh.` entries, ids shifted back), with `config` changes applied (docs/images.md, "Commit").
   * Used by {@link Sandbox.commit}, which is the public way to commit.
   * @internal
   */
  async commitUpper(options: CommitOptions): Promise<Image> {
    const { commitUpper } = await import('./commit.js');
    try {
      return await commitUpper(this, options);
    } catch (e) {
      throw storeFailure(this.root, 'commit', e);
    }
  }

  /** @internal */
  checkTag(tag: unknown): asserts tag is string {
    const problem = tagProblem(tag);
    if (problem) throw invalid('tag', problem, tag);
  }

  /**
   * Points `tag` at an image (moving it from any other image).
   *
   * @param image An {@link Image} or a reference to one.
   * @param tag A name like `'app'` or `'app:1.0'`: letters, digits and `. _ / : @ + -`, not an
   * id-like hex string, not `host` or `busybox`.
   * @throws HutchError `EINVAL` (a bad tag), `ENOIMAGE` (no such image).
   *
   * @example
   * ```ts
   * await store.tag('app:dev', 'app:1.0');
   * ```
   */
  async tag(image: Image | string, tag: string): Promise<void> {
    this.checkTag(tag);
    const rec = await this.find(typeof image === 'string' ? image : image.id);
    await this.lock.run(async () => {
      if (!(await this.readRecord(rec.id.slice(7)))) throw new HutchError('ENOIMAGE', `image ${rec.id} was removed meanwhile`);
      const tags = await this.readTags();
      tags[tag] = rec.id;
      await this.writeJson(this.path('tags.json'), tags);
    });
  }

  /**
   * Removes a tag, or an image with all its tags when `ref` is its id or its only tag. Refuses
   * (EINVAL) an image a live sandbox uses. Layers and blobs no other image uses go with it.
   *
   * @throws HutchError `ENOIMAGE` (no such image), `EINVAL` (in use by a live sandbox: destroy it first).
   *
   * @example
   * ```ts
   * await store.remove('app:dev');          // only the tag, when app:1.0 points at the same image
   * await store.remove('sha256:3f5e...');   // the image, every tag, its unshared layers
   * ```
   */
  async remove(ref: string): Promise<void> {
    if (typeof ref !== 'string' || ref === '') throw invalid('ref', "a tag, 'sha256:<id>' or an id prefix", ref);
    this.ensure();
    // A sandbox Sandbox.run has finished with may still hold its record for a moment, and a
    // blank made for the next run holds one: drop those first.
    await storeHooks.dropBlanks();
    await teardownsDone();
    const trash = await this.lock.run(async () => {
      const tags = await this.readTags();
      const hex = await this.lookup(ref, tags);
      if (!hex) throw new HutchError('ENOIMAGE', `no image ${JSON.stringify(ref)} in the store ${this.root}`);
      const id = `sha256:${hex}`;
      const tagged = Object.keys(tags).filter((t) => tags[t] === id);
      const byTag = idShaped(ref) ? undefined : ImageStore.tagCandidates(ref).find((t) => tags[t] === id);
      if (byTag && tagged.length > 1) {
        delete tags[byTag];
        await this.writeJson(this.path('tags.json'), tags);
        return [];
      }
      const users = (await this.owners()).filter((o) => o.image === id && isAlive(o)).map((o) => o.sandbox);
      if (users.length > 0) {
        throw new HutchError('EINVAL', `image ${id} is in use by sandbox ${users.join(', ')}; destroy it first`);
      }
      const rec = await this.readRecord(hex);
      for (const t of tagged) delete tags[t];
      await this.writeJson(this.path('tags.json'), tags);
      await fsp.rm(this.path('images', `${hex}.json`), { force: true });
      this.records.delete(hex);
      // A sandbox may have marked the image between the check above and the removal (markInUse
      // takes no lock): look again now that the record is gone, and put it back if so.
      const late = (await this.owners()).filter((o) => o.image === id && isAlive(o)).map((o) => o.sandbox);
      if (late.length > 0 && rec) {
        await this.writeJson(this.path('images', `${hex}.json`), rec);
        for (const t of tagged) tags[t] = id;
        await this.writeJson(this.path('tags.json'), tags);
        throw new HutchError('EINVAL', `image ${id} is in use by sandbox ${late.join(', ')}; destroy it first`);
      }
      if (rec?.builtin) await fsp.rm(this.path('builtin', `${rec.builtin}.json`), { force: true });
      return (await this.collect()).trash;
    });
    await this.empty(trash);
  }

  /**
   * Removes unreferenced layers and blobs, leftovers of crashed imports and of sandboxes whose
   * owner process died. Safe while other processes use the store: what a live process needs stays.
   *
   * @returns `removedBytes`: bytes of files removed.
   *
   * @example
   * ```ts
   * const { removedBytes } = await store.prune();
   * console.log(`freed ${(removedBytes / 2 ** 20).toFixed(1)} MiB`);
   * ```
   */
  async prune(): Promise<{
    /** Bytes of files removed. */
    removedBytes: number;
  }> {
    this.ensure();
    await storeHooks.dropBlanks();
    await teardownsDone();
    const { trash, bytes } = await this.lock.run(async () => {
      const found = await this.collect();
      for (const n of await fsp.readdir(this.path('tmp'))) {
        if (n === 'trash') {
          // Left by a prune or remove that died before emptying it.
          for (const t of await fsp.readdir(this.path('tmp', 'trash'))) found.trash.push(this.path('tmp', 'trash', t));
          continue;
        }
        const owner = ownerFromName(n);
        if (owner && isAlive(owner)) continue;
        if (!owner) {
          // Not ours to judge by name; leave files that are younger than a minute.
          const st = await fsp.lstat(this.path('tmp', n)).catch(() => undefined);
          if (!st || Date.now() - st.mtimeMs < 60_000) continue;
        }
        found.bytes += await treeBytes(this.path('tmp', n));
        found.trash.push(await this.toTrash(this.path('tmp', n)));
      }
      for (const o of await this.owners()) {
        if (isAlive(o)) continue;
        const dir = this.path('sandboxes', o.sandbox);
        // A dead persistent sandbox's disk is still loop-mounted at <dir>/disk: unmounted
        // first, or its directory could not be removed from the trash (EBUSY).
        await this.unmount([dir]);
        found.bytes += await treeBytes(dir);
        found.trash.push(await this.toTrash(dir));
      }
      return found;
    });
    await this.empty(trash);
    return { removedBytes: bytes };
  }

  /**
   * The layers of an image as the sandbox mounts them. Internal contract with lib/sandbox.ts:
   * chdir(layersDir), then mount overlay with `lowerdir=<lowerdirs joined by ':'>` (top first)
   * and bind each of hostBinds read-only at the same path.
   * @internal
   */
  async resolve(ref: string | Image): Promise<ResolvedImage> {
    const rec = await this.find(typeof ref === 'string' ? ref : ref.id);
    const lowerdirs = rec.layers.map((d) => d.slice(7)).reverse();
    for (const hex of lowerdirs) {
      if (!existsSync(this.path('layers', hex))) {
        throw new HutchError('ENOIMAGE', `image ${rec.id} lacks its layer ${hex} in ${this.root}; import it again`);
      }
    }
    return { image: this.toImage(rec, await this.readTags()), layersDir: this.path('layers'), lowerdirs, hostBinds: [...rec.hostBinds] };
  }

  /**
   * Records that sandbox `sandboxId`, owned by this process, uses image `imageId`, so that
   * `remove` refuses the image until `release` (or this process's death).
   * Writes sandboxes/<sandboxId>/owner.json.
   * @internal
   */
  async markInUse(imageId: string, sandboxId: string, ownerPid?: number): Promise<void> {
    if (!/^[A-Za-z0-9_.-]{1,128}$/.test(sandboxId) || sandboxId.startsWith('.')) throw invalid('sandboxId', 'a plain name', sandboxId);
    this.ensure();
    const owner = ownerPid === undefined ? selfOwner() : { pid: ownerPid, start: (await readStart(ownerPid)) ?? '0' };
    // No store lock on this path (it is on every create; the lock serialised concurrent
    // creates): the intent is written first, then the image is checked. remove() deletes the
    // record first and then looks for owners, so either it sees this record and restores the
    // image, or this check sees the record gone.
    const hex = imageId.replace(/^sha256:/, '');
    const dir = this.path('sandboxes', sandboxId);
    // The record's dir appears whole (made in tmp/, renamed into place): sandboxes/ never holds
    // an empty one that a prune could take for a crashed sandbox's while we fill it.
    // Synchronous on purpose: four small metadata calls (~0.1 ms) on every create cost less
    // than the threadpool round trips of their async forms (~2 ms under load).
    const tmp = this.path('tmp', `rec-${ownerTag()}-${randomBytes(6).toString('hex')}`);
    mkdirSync(tmp, { mode: 0o711 });
    writeFileSync(join(tmp, 'owner.json'), JSON.stringify({ image: `sha256:${hex}`, ...owner }) + '\n', { mode: 0o600 });
    try {
      renameSync(tmp, dir);
    } catch (e) {
      rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
    if (!existsSync(this.path('images', `${hex}.json`))) {
      await this.release(sandboxId);
      throw new HutchError('ENOIMAGE', `no image ${imageId} in the store ${this.root}`);
    }
  }

  /** Ends what markInUse recorded; removes sandboxes/<sandboxId>/ when nothing else is in it. @internal */
  async release(sandboxId: string): Promise<void> {
    this.releaseSync(sandboxId);
  }

  /** release(), synchronously (at process exit too). @internal */
  releaseSync(sandboxId: string): void {
    if (!/^[A-Za-z0-9_.-]{1,128}$/.test(sandboxId) || sandboxId.startsWith('.')) return;
    const dir = this.path('sandboxes', sandboxId);
    // The usual record is owner.json alone: two calls in place (a prune that meets the dir
    // between them takes an empty dir for an abandoned one and removes it: what we do anyway).
    try {
      unlinkSync(join(dir, 'owner.json'));
      rmdirSync(dir);
      return;
    } catch {
      /* more in it (a persistent layer's leftovers), or gone */
    }
    // Out of sandboxes/ in one step, then removed: never a half-removed tree there.
    const gone = this.path('tmp', `rel-${ownerTag()}-${randomBytes(6).toString('hex')}`);
    try {
      renameSync(dir, gone);
    } catch {
      return;
    }
    rmSync(gone, { recursive: true, force: true });
  }

  // ---- internals ----------------------------------------------------------------------

  private async owners(): Promise<{ sandbox: string; image: string; pid: number; start: string }[]> {
    const out = [];
    let names: string[] = [];
    try {
      names = await fsp.readdir(this.path('sandboxes'));
    } catch {
      return [];
    }
    for (const n of names) {
      try {
        const v = JSON.parse(await fsp.readFile(this.path('sandboxes', n, 'owner.json'), 'utf8')) as { image?: unknown };
        const o = parseOwner(v);
        if (o && typeof v.image === 'string') out.push({ sandbox: n, image: v.image, ...o });
      } catch {
        /* no owner record: not a sandbox this code tracks */
      }
    }
    return out;
  }

  /**
   * Under the lock: moves every layer and blob no image record and no live import needs into
   * tmp/trash, so they vanish from layers/ atomically.
   */
  private async collect(): Promise<{ trash: (string | null)[]; bytes: number }> {
    const layers = new Set<string>();
    const blobs = new Set<string>();
    for (const n of await fsp.readdir(this.path('images'))) {
      if (!n.endsWith('.json')) continue;
      const rec = await this.readRecord(n.slice(0, 64));
      if (!rec) continue;
      for (const l of rec.layers) layers.add(l.slice(7));
      for (const b of rec.layerBlobs) blobs.add(b.digest.slice(7));
      blobs.add(rec.configBlob.digest.slice(7));
    }
    for (const n of await fsp.readdir(this.path('tmp'))) {
      const owner = ownerFromName(n);
      if (!owner || !isAlive(owner)) continue;
      const pins = await fsp.readFile(this.path('tmp', n, 'pins'), 'utf8').catch(() => '');
      for (const p of pins.split('\n')) if (HEX64.test(p)) layers.add(p);
    }
    const trash: (string | null)[] = [];
    let bytes = 0;
    for (const n of await fsp.readdir(this.path('layers'))) {
      if (!HEX64.test(n) || layers.has(n)) continue;
      const info = await fsp.readFile(this.path('layerinfo', `${n}.json`), 'utf8').then((t) => JSON.parse(t) as LayerInfo).catch(() => undefined);
      bytes += info?.sizeBytes ?? (await treeBytes(this.path('layers', n)));
      trash.push(await this.toTrash(this.path('layers', n)));
      await fsp.rm(this.path('layerinfo', `${n}.json`), { force: true });
    }
    for (const n of await fsp.readdir(this.path('layerinfo'))) {
      if (!layers.has(n.slice(0, 64)) && !existsSync(this.path('layers', n.slice(0, 64)))) await fsp.rm(this.path('layerinfo', n), { force: true });
    }
    for (const n of await fsp.readdir(this.path('blobs', 'sha256'))) {
      if (blobs.has(n)) continue;
      bytes += (await fsp.lstat(this.path('blobs', 'sha256', n)).catch(() => undefined))?.size ?? 0;
      await fsp.rm(this.path('blobs', 'sha256', n), { force: true });
    }
    return { trash, bytes };
  }

  /**
   * Moves `p` into tmp/trash; null when it is already gone (a dead sandbox's record can be
   * removed at the same time by another process's leftover cleanup, lib/prune.ts, which does
   * not take the store's lock).
   */
  private async toTrash(p: string): Promise<string | null> {
    await fsp.mkdir(this.path('tmp', 'trash'), { recursive: true, mode: 0o700 });
    const t = this.path('tmp', 'trash', randomBytes(8).toString('hex'));
    try {
      await fsp.rename(p, t);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
    return t;
  }

  /** unmountUnder, its failure as ESTORE naming the mount. */
  private async unmount(paths: string[]): Promise<void> {
    try {
      await unmountUnder(paths);
    } catch (e) {
      throw new HutchError('ESTORE', `unmounting a dead sandbox's disk under ${paths.join(', ')} failed: ${(e as Error).message.trim()}`, {
        errno: 'EBUSY',
        path: paths[0],
        hint: 'find what still uses it (fuser -vm <path>), stop it, and run ImageStore.prune() again',
        cause: e,
      });
    }
  }

  /**
   * Removes the trash entries. A mount left inside one (a dead sandbox's disk moved here by an
   * older prune) is unmounted first; an entry that still cannot go is an ESTORE after the
   * others are removed, never a raw error.
   */
  private async empty(trash: (string | null)[]): Promise<void> {
    const entries = trash.filter((t): t is string => t !== null);
    let failure: unknown;
    try {
      await this.unmount(entries);
    } catch (e) {
      failure = e;
    }
    for (const t of entries) {
      try {
        await rmTree(t);
      } catch (e) {
        failure ??= hostFailure('ESTORE', `removing ${t} from the store's trash`, e);
      }
    }
    if (failure) throw failure;
  }

  /** @internal A private work directory under tmp/, named after this process so prune can tell it is live. */
  async beginOp(): Promise<Op> {
    this.ensure();
    const dir = this.path('tmp', `op-${ownerTag()}-${randomBytes(6).toString('hex')}`);
    await fsp.mkdir(dir, { mode: 0o700 });
    return new Op(this, dir);
  }

  /** @internal True when layers/<hex> exists. */
  hasLayer(hex: string): boolean {
    return existsSync(this.path('layers', hex));
  }

  /**
   * @internal Moves an import's layers and blobs into place and writes its record and tags,
   * under the lock. Layers another process finished first are kept and ours discarded.
   */
  async commit(op: Op, p: PendingImage): Promise<Image> {
    for (const t of p.tags) {
      // Every tag an import, pull or build brings is checked as tag() checks it (a builtin tags itself).
      const problem = p.builtin === t ? undefined : tagProblem(t);
      if (problem) throw new HutchError('EBADIMAGE', `the image's tag ${JSON.stringify(t)} is refused: a tag must be ${problem}`, { hint: 'drop or rename the tag (RepoTags of a docker save archive) and import again' });
    }
    const idHex = p.configDigest.slice(7);
    const created = new Date().toISOString();
    return this.lock.run(async () => {
      // What this commit moved into the store: taken out again if a later step fails (a full
      // disk), so that no layer, blob or record of a half-made image stays.
      const placed: string[] = [];
      try {
        return await this.place(op, p, idHex, created, placed);
      } catch (e) {
        for (const f of placed.reverse()) await rmTree(f).catch(() => undefined);
        throw e;
      }
    });
  }

  private async place(op: Op, p: PendingImage, idHex: string, created: string, placed: string[]): Promise<Image> {
    {
      let sizeBytes = 0;
      for (const l of p.layers) {
        const target = this.path('layers', l.diffHex);
        if (l.tree) {
          try {
            await fsp.rename(l.tree, target);
            placed.push(target);
          } catch (e) {
            const code = (e as NodeJS.ErrnoException).code;
            if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
            // Another import won the race: its copy is identical (same diff id); ours is discarded with the op.
          }
        } else if (!existsSync(target)) {
          throw new HutchError('EBADIMAGE', `layer sha256:${l.diffHex} vanished before the import finished`);
        }
        const infoFile = this.path('layerinfo', `${l.diffHex}.json`);
        let info = await fsp.readFile(infoFile, 'utf8').then((t) => JSON.parse(t) as LayerInfo).catch(() => undefined);
        if (!info) {
          info = { diffId: `sha256:${l.diffHex}`, sizeBytes: l.stats?.sizeBytes ?? (await treeBytes(target)), entries: l.stats?.entries ?? 0, created };
          await this.writeJson(infoFile, info);
          placed.push(infoFile);
        }
        sizeBytes += info.sizeBytes;
        const blobTarget = this.path('blobs', 'sha256', l.blob.digest.slice(7));
        if (l.blobFile && !existsSync(blobTarget)) {
          await fsp.rename(l.blobFile, blobTarget);
          placed.push(blobTarget);
        }
      }
      const configFile = this.path('blobs', 'sha256', idHex);
      if (!existsSync(configFile)) {
        const tmp = join(op.dir, 'config');
        await fsp.writeFile(tmp, p.configBytes, { mode: 0o600 });
        await fsp.rename(tmp, configFile);
        placed.push(configFile);
      }
      const rec: ImageRecord = {
        schema: 1,
        id: p.configDigest,
        layers: p.layers.map((l) => `sha256:${l.diffHex}`),
        config: p.config,
        sizeBytes,
        hostBinds: p.hostBinds,
        configBlob: { digest: p.configDigest, size: p.configBytes.length, mediaType: p.configMediaType },
        layerBlobs: p.layers.map((l) => l.blob),
        ...(p.builtin ? { builtin: p.builtin } : {}),
        created,
      };
      const recFile = this.path('images', `${idHex}.json`);
      const existing = await this.readRecord(idHex);
      if (!existing) {
        await this.writeJson(recFile, rec);
        placed.push(recFile);
      }
      const tags = await this.readTags();
      if (p.tags.length > 0) {
        for (const t of p.tags) tags[t] = p.configDigest;
        await this.writeJson(this.path('tags.json'), tags);
      }
      return this.toImage(existing ?? rec, tags);
    }
  }
}

/** A private work directory of one import (tmp/op-<pid>-<start>-<random>). @internal */
export class Op {
  private pins: string[] = [];
  constructor(private readonly store: ImageStore, readonly dir: string) {}

  /**
   * Keeps layers/<hex> from being pruned until this op ends; true when the layer exists.
   * Pinning under the lock, then checking, means prune either saw the pin or removed the
   * layer before we looked.
   */
  async pin(hex: string): Promise<boolean> {
    return this.store.lock.run(async () => {
      this.pins.push(hex);
      await fsp.writeFile(join(this.dir, 'pins'), this.pins.join('\n') + '\n');
      return this.store.hasLayer(hex);
    });
  }

  async close(): Promise<void> {
    await rmTree(this.dir);
  }
}

async function readStart(pid: number): Promise<string | undefined> {
  try {
    const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Bytes of regular files under p (lstat, no symlinks followed). */
export async function treeBytes(p: string): Promise<number> {
  let st;
  try {
    st = await fsp.lstat(p);
  } catch {
    return 0;
  }
  if (!st.isDirectory()) return st.isFile() ? st.size : 0;
  let sum = 0;
  for (const n of await fsp.readdir(p).catch(() => [] as string[])) sum += await treeBytes(join(p, n));
  return sum;
}

/** rm -rf that also works on trees with read-only directories when not root. */
export async function rmTree(p: string): Promise<void> {
  try {
    await fsp.rm(p, { recursive: true, force: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EACCES' && (e as NodeJS.ErrnoException).code !== 'EPERM') throw e;
    const fix = async (d: string) => {
      await fsp.chmod(d, 0o700).catch(() => undefined);
      for (const ent of await fsp.readdir(d, { withFileTypes: true }).catch(() => [])) {
        if (ent.isDirectory()) await fix(join(d, ent.name));
      }
    };
    await fix(p);
    await fsp.rm(p, { recursive: true, force: true });
  }
}


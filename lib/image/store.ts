import { existsSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve as resolvePath } from 'node:path';
import { HutchError, invalid } from '../errors.js';
import { idSource } from '../host/ids.js';
import { StoreLock } from './lock.js';
import { makeStoreLayout } from './layout.js';
import { teardownsDone } from '../teardowns.js';
import { storeHooks } from './hooks.js';
import { isAlive } from '../host/liveness.js';
import { pruneHost, type HostPruneOptions, type HostPruneResult } from '../host/prune.js';
import { DEFAULT_LIMITS, type ExtractLimits } from './tar.js';
import { HEX64 } from './blob.js';
import type { Image, ImageRecord, Progress, ResolvedImage } from './types.js';
import { importSource, type PendingImage } from './import.js';
import { BUILTINS, ensureBuiltin, type BuiltinName } from './builtin.js';
import type { BuildOptions } from './build-options.js';
import { commitUpper, type CommitOptions } from './commit.js';
import { pull, push } from './registry.js';
import { collect, emptyTrash, imageUsers, storeSide } from './gc.js';
import { beginOp, commitPending, storeFailure, type Op } from './operations.js';
import { ID_PREFIX, idShaped, markInUse, readRecord, readTags, releaseRecord, releaseSync, tagProblem, writeJson } from './records.js';

export type { Image, ImageConfig, Progress, ResolvedImage } from './types.js';
export type { BuildOptions } from './build-options.js';
export type { CommitOptions } from './commit.js';
export { tagProblem } from './records.js';
export { storeFailure, Op } from './operations.js';
export { treeBytes, rmTree } from './gc.js';


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

/** Directory permissions: see docs/images.md, "Ownership". */

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
  /** @internal Image records read so far (they never change). */
  readonly records = new Map<string, ImageRecord>();

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

  /**
   * @internal The ids the store's files get for image id 0 (lib/host/ids.ts: host ids as root,
   * the holder namespace's or hutch's own namespace's ids elsewhere), or null when files stay
   * the caller's (one id: owners squashed).
   */
  shift(): { uid: number; gid: number } | null {
    return idSource().storeShift;
  }

  /**
   * Creates the layout (lib/image/layout.ts: the directories and who may reach them).
   * @internal
   */
  ensure(): void {
    if (this.ready) return;
    makeStoreLayout(this.root, this.shift());
    this.ready = true;
  }




  // ---- records and tags (records.ts) ------------------------------------------------

  /** @internal */
  writeJson(target: string, value: unknown): Promise<void> {
    return writeJson(this, target, value);
  }

  /** @internal */
  readTags(): Promise<Record<string, string>> {
    return readTags(this);
  }

  /** @internal */
  readRecord(hex: string): Promise<ImageRecord | undefined> {
    return readRecord(this, this.records, hex);
  }

  /** @internal */
  toImage(rec: ImageRecord, tags: Record<string, string>): Image {
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
    const op = await beginOp(this).catch((e: unknown) => {
      throw storeFailure(this.root, 'import', e);
    });
    try {
      const pending = await importSource(this, op, source, options.onProgress);
      if (options.tag !== undefined) pending.tags = [options.tag];
      return await commitPending(this, op, pending);
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
    const build = storeHooks.build;
    if (!build) throw new HutchError('EUNSUPPORTED', 'ImageStore.build: the builder is not loaded; import ImageStore from the package entry (hutch), which loads lib/image/build');
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
      const users = (await imageUsers(this)).filter((o) => o.image === id && isAlive(o)).map((o) => o.sandbox);
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
      const late = (await imageUsers(this)).filter((o) => o.image === id && isAlive(o)).map((o) => o.sandbox);
      if (late.length > 0 && rec) {
        await this.writeJson(this.path('images', `${hex}.json`), rec);
        for (const t of tagged) tags[t] = id;
        await this.writeJson(this.path('tags.json'), tags);
        throw new HutchError('EINVAL', `image ${id} is in use by sandbox ${late.join(', ')}; destroy it first`);
      }
      if (rec?.builtin) await fsp.rm(this.path('builtin', `${rec.builtin}.json`), { force: true });
      return (await collect(this)).trash;
    });
    await emptyTrash(trash);
  }

  /**
   * Removes unreferenced layers and blobs, and every leftover of sandboxes whose owner process
   * is gone, whichever store they used: their cgroups, network links, nftables state and
   * leases, id leases, records, loop-mounted disks, and the leftovers of crashed imports and
   * commits. Safe while other processes use the store or the host: a live sandbox of any
   * process is never touched. (The first sandbox a process creates starts the same cleanup,
   * unused layers aside, in the background.)
   *
   * @returns `removedBytes`: bytes of files removed; `cgroups`, `network`, `sandboxes`,
   * `idRanges`: what was removed of dead sandboxes.
   * @throws HutchError `ESTORE` (the store could not be written), `ECLEANUP` (a host resource
   * could not be removed; `cause` says which), after every step was tried.
   *
   * @example
   * ```ts
   * const { removedBytes } = await store.prune();
   * console.log(`freed ${(removedBytes / 2 ** 20).toFixed(1)} MiB`);
   * ```
   */
  async prune(): Promise<HostPruneResult> {
    return this.pruneHost();
  }

  /**
   * prune() with the host side's options (lib/prune.ts `pruneAll`, `hutch prune`).
   * @internal
   */
  async pruneHost(options: HostPruneOptions = {}): Promise<HostPruneResult> {
    this.ensure();
    await storeHooks.dropBlanks();
    await teardownsDone();
    try {
      return await pruneHost(storeSide(this, true, options.graceMs ?? 30_000), options);
    } catch (e) {
      throw storeFailure(this.root, 'prune', e);
    }
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

  /** @internal */
  markInUse(imageId: string, sandboxId: string, ownerPid?: number): Promise<void> {
    return markInUse(this, imageId, sandboxId, ownerPid);
  }

  /** Ends what markInUse recorded; removes sandboxes/<sandboxId>/ when nothing else is in it. @internal */
  async release(sandboxId: string): Promise<void> {
    return releaseRecord(this, sandboxId);
  }

  /** release(), synchronously (at process exit too). @internal */
  releaseSync(sandboxId: string): void {
    releaseSync(this, sandboxId);
  }

  /** @internal A private work directory under tmp/, named after this process so prune can tell it is live. */
  beginOp(): Promise<Op> {
    return beginOp(this);
  }

  /** @internal True when layers/<hex> exists. */
  hasLayer(hex: string): boolean {
    return existsSync(this.path('layers', hex));
  }

  /** @internal Moves an import's layers and blobs into place and writes its record and tags (operations.ts). */
  commit(op: Op, p: PendingImage): Promise<Image> {
    return commitPending(this, op, p);
  }
}

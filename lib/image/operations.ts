/**
 * Store operations: a private work directory per import/pull/commit/build (`Op`), moving a
 * finished image into place with nothing half-made left on failure (`commitPending`), and
 * turning any failure on the way into the error its caller sees (`storeFailure`).
 */
import * as fsp from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { HutchError, hostFailure, storeErrno } from '../errors.js';
import { ownerTag } from '../host/liveness.js';
import { rmTree, treeBytes } from './gc.js';
import type { PendingImage } from './import.js';
import { tagProblem } from './records.js';
import type { Op as OpShape, StoreContext } from './context.js';
import type { Image, ImageRecord, LayerInfo } from './types.js';

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

/** A private work directory under tmp/, named after this process so prune can tell it is live. */
export async function beginOp(store: StoreContext): Promise<Op> {
  store.ensure();
  const dir = store.path('tmp', `op-${ownerTag()}-${randomBytes(6).toString('hex')}`);
  await fsp.mkdir(dir, { mode: 0o700 });
  return new Op(store, dir);
}

/**
 * @internal Moves an import's layers and blobs into place and writes its record and tags,
 * under the lock. Layers another process finished first are kept and ours discarded.
 */
export async function commitPending(store: StoreContext, op: OpShape, p: PendingImage): Promise<Image> {
  for (const t of p.tags) {
    // Every tag an import, pull or build brings is checked as tag() checks it (a builtin tags itself).
    const problem = p.builtin === t ? undefined : tagProblem(t);
    if (problem) throw new HutchError('EBADIMAGE', `the image's tag ${JSON.stringify(t)} is refused: a tag must be ${problem}`, { hint: 'drop or rename the tag (RepoTags of a docker save archive) and import again' });
  }
  const idHex = p.configDigest.slice(7);
  const created = new Date().toISOString();
  return store.lock.run(async () => {
    // What this commit moved into the store: taken out again if a later step fails (a full
    // disk), so that no layer, blob or record of a half-made image stays.
    const placed: string[] = [];
    try {
      return await place(store, op, p, idHex, created, placed);
    } catch (e) {
      for (const f of placed.reverse()) await rmTree(f).catch(() => undefined);
      throw e;
    }
  });
}

async function place(store: StoreContext, op: OpShape, p: PendingImage, idHex: string, created: string, placed: string[]): Promise<Image> {
  {
    let sizeBytes = 0;
    for (const l of p.layers) {
      const target = store.path('layers', l.diffHex);
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
      const infoFile = store.path('layerinfo', `${l.diffHex}.json`);
      let info = await fsp.readFile(infoFile, 'utf8').then((t) => JSON.parse(t) as LayerInfo).catch(() => undefined);
      if (!info) {
        info = { diffId: `sha256:${l.diffHex}`, sizeBytes: l.stats?.sizeBytes ?? (await treeBytes(target)), entries: l.stats?.entries ?? 0, created };
        await store.writeJson(infoFile, info);
        placed.push(infoFile);
      }
      sizeBytes += info.sizeBytes;
      const blobTarget = store.path('blobs', 'sha256', l.blob.digest.slice(7));
      if (l.blobFile && !existsSync(blobTarget)) {
        await fsp.rename(l.blobFile, blobTarget);
        placed.push(blobTarget);
      }
    }
    const configFile = store.path('blobs', 'sha256', idHex);
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
    const recFile = store.path('images', `${idHex}.json`);
    const existing = await store.readRecord(idHex);
    if (!existing) {
      await store.writeJson(recFile, rec);
      placed.push(recFile);
    }
    const tags = await store.readTags();
    if (p.tags.length > 0) {
      for (const t of p.tags) tags[t] = p.configDigest;
      await store.writeJson(store.path('tags.json'), tags);
    }
    return store.toImage(existing ?? rec, tags);
  }
}

/** A private work directory of one import (tmp/op-<pid>-<start>-<random>). @internal */
export class Op implements OpShape {
  private pins: string[] = [];
  constructor(private readonly store: StoreContext, readonly dir: string) {}

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

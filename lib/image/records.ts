/**
 * The store's records: tags (tags.json), image records (images/<hex>.json), written whole
 * through a rename; and the owner records of sandboxes (sandboxes/<id>/owner.json), each
 * backed by a host-wide sandbox lease (lib/host/sandboxes.ts) so that liveness does not
 * depend on the store.
 */
import { idSource, removeStoreTree } from '../host/ids.js';
import { closeSync, existsSync, ftruncateSync, mkdirSync, openSync, readdirSync, renameSync, rmdirSync, rmSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { randomHex } from '../random.js';
import { MAX_SPARE_RECORDS, spareRecordList } from './spares.js';
import { HutchError, hostFailure, invalid } from '../errors.js';
import { ownerTag, processStart, selfOwner } from '../host/liveness.js';
import { leaseSandbox, unleaseSandbox, unleaseSandboxAsync } from '../host/sandboxes.js';
import { startBackgroundPrune } from './background.js';
import { HEX64 } from './blob.js';
import type { StoreContext } from './context.js';
import type { ImageRecord } from './types.js';

/** The builtin images, made on first use (builtin.ts); no tag may take their names. */
export const BUILTINS = ['busybox', 'host'] as const;
export type BuiltinName = (typeof BUILTINS)[number];

export const ID_PREFIX = /^[0-9a-f]{12,64}$/;
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
export function idShaped(ref: string): boolean {
  return (ref.startsWith('sha256:') && HEX64.test(ref.slice(7))) || ID_PREFIX.test(ref);
}


/** @internal */
export async function writeJson(store: StoreContext, target: string, value: unknown): Promise<void> {
  const tmp = store.path('tmp', `w-${ownerTag()}-${randomBytes(6).toString('hex')}`);
  try {
    await fsp.writeFile(tmp, JSON.stringify(value, null, 1) + '\n', { mode: 0o600 });
    await fsp.rename(tmp, target);
  } catch (e) {
    await fsp.rm(tmp, { force: true });
    throw e;
  }
}

/** @internal */
export async function readTags(store: StoreContext): Promise<Record<string, string>> {
  try {
    const v = JSON.parse(await fsp.readFile(store.path('tags.json'), 'utf8')) as unknown;
    return typeof v === 'object' && v !== null ? (v as Record<string, string>) : {};
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw e;
  }
}

/** @internal */
export async function readRecord(store: StoreContext, records: Map<string, ImageRecord>, hex: string): Promise<ImageRecord | undefined> {
  const cached = records.get(hex);
  const file = store.path('images', `${hex}.json`);
  if (cached) {
    // Records never change; only check the image was not removed meanwhile.
    if (existsSync(file)) return cached;
    records.delete(hex);
    return undefined;
  }
  try {
    const rec = JSON.parse(await fsp.readFile(file, 'utf8')) as ImageRecord;
    records.set(hex, rec);
    return rec;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new HutchError('EBADIMAGE', `image record ${file} is unreadable: ${(e as Error).message}`, { path: file, cause: e });
  }
}

/**
 * Records that sandbox `sandboxId`, owned by this process, uses image `imageId`, so that
 * `remove` refuses the image until `release` (or this process's death).
 * Writes sandboxes/<sandboxId>/owner.json.
 * @internal
 */
export async function markInUse(store: StoreContext, imageId: string, sandboxId: string, ownerPid?: number): Promise<void> {
  if (!/^[A-Za-z0-9_.-]{1,128}$/.test(sandboxId) || sandboxId.startsWith('.')) throw invalid('sandboxId', 'a plain name', sandboxId);
  store.ensure();
  const owner = ownerPid === undefined ? selfOwner() : { pid: ownerPid, start: processStart(ownerPid) ?? '0' };
  // The first sandbox of this process starts the cleanup of what dead processes left.
  startBackgroundPrune(store);
  // No store lock on this path (it is on every create; the lock serialised concurrent
  // creates): the intent is written first, then the image is checked. remove() deletes the
  // record first and then looks for owners, so either it sees this record and restores the
  // image, or this check sees the record gone.
  const hex = imageId.replace(/^sha256:/, '');
  const dir = store.path('sandboxes', sandboxId);
  // Written in place (mkdir, then owner.json), after the host-wide lease: a prune that meets
  // the dir before its owner.json is whole sees the lease's live owner and leaves it
  // (lib/image/gc.ts pruneLeftovers); one whose writer was killed half-way goes with the dead
  // lease. (A temp dir renamed into place cost a rename and a dir in tmp/ on every create.)
  // Synchronous on purpose: three small metadata calls (~0.1 ms) on every create cost less
  // than the threadpool round trips of their async forms (~2 ms under load).
  try {
    // The host-wide lease first: from here on any prune knows whose sandbox this is.
    leaseSandbox(sandboxId, store.root, owner);
  } catch (e) {
    throw hostFailure('ESETUP', `recording sandbox ${sandboxId} in the host state dir`, e);
  }
  const text = JSON.stringify({ image: `sha256:${hex}`, ...owner }) + '\n';
  let made = false;
  try {
    // A spare record of this process (an ended sandbox's), its owner.json rewritten, renamed
    // into place whole: no inode allocated (see retireRecord).
    made = placeSpareRecord(store, dir, text);
    if (!made) {
      // Not recursive: a dir left by a dead holder of this id (the lease was taken over) is an
      // error, as it was for the rename, and is left to prune.
      mkdirSync(dir, { mode: 0o711 });
      made = true;
      writeFileSync(join(dir, 'owner.json'), text, { mode: 0o600, flag: 'wx' });
    }
  } catch (e) {
    if (made) rmSync(dir, { recursive: true, force: true });
    unleaseSandbox(sandboxId);
    throw hostFailure('ESTORE', `writing the owner record of sandbox ${sandboxId} in the store ${store.root}`, e);
  }
  if (!existsSync(store.path('images', `${hex}.json`))) {
    releaseSync(store, sandboxId);
    throw new HutchError('ENOIMAGE', `no image ${imageId} in the store ${store.root}`);
  }
}

/**
 * releaseSync's usual case (owner.json alone) with its unlinks in libuv's threadpool, for a
 * teardown nobody waits for: on a filesystem mounted `discard` each freed block waits for the
 * device (about 2 ms a destroy on this VM's ext4), which on the event loop delays every other
 * sandbox's messages. Anything else (more in the dir) goes the synchronous way. @internal
 */
export async function releaseRecord(store: StoreContext, sandboxId: string): Promise<void> {
  if (!/^[A-Za-z0-9_.-]{1,128}$/.test(sandboxId) || sandboxId.startsWith('.')) return;
  const dir = store.path('sandboxes', sandboxId);
  if (!retireRecord(store, dir)) {
    try {
      await fsp.unlink(join(dir, 'owner.json'));
      await fsp.rmdir(dir);
    } catch {
      return releaseSync(store, sandboxId);
    }
  }
  await unleaseSandboxAsync(sandboxId);
}

/** Moves the record at `dir` (owner.json alone) out to a spare; false when it is anything else, or enough spares are kept. */
function retireRecord(store: StoreContext, dir: string): boolean {
  const list = spareRecordList(store.root);
  if (list === null || list.length >= MAX_SPARE_RECORDS) return false;
  try {
    // Never a persistent sandbox's dir (its disk, its upper dir): the plain record only.
    const names = readdirSync(dir);
    if (names.length !== 1 || names[0] !== 'owner.json') return false;
    if (list.length === 0) mkdirSync(store.path('spare'), { recursive: true, mode: 0o700 });
    const spare = store.path('spare', `rec-${ownerTag()}-${randomHex(4)}`);
    renameSync(dir, spare);
    list.push(spare);
    return true;
  } catch {
    return false;
  }
}

/**
 * Puts a spare record of this process at `dir` holding `text`: true when done, false when
 * there is none (or it went), and the record is to be made anew. The target must not exist:
 * rename(2) would replace an empty dir, which a dead holder of the same id may have left (an
 * error for mkdir, left to prune).
 */
function placeSpareRecord(store: StoreContext, dir: string, text: string): boolean {
  const list = spareRecordList(store.root) ?? [];
  for (let spare = list.pop(); spare !== undefined; spare = list.pop()) {
    let fd = -1;
    try {
      fd = openSync(join(spare, 'owner.json'), 'r+');
      const n = writeSync(fd, text, 0);
      if (n === Buffer.byteLength(text)) {
        ftruncateSync(fd, n);
        closeSync(fd);
        fd = -1;
        if (existsSync(dir)) {
          list.push(spare);
          return false;
        }
        renameSync(spare, dir);
        return true;
      }
    } catch {
      /* gone, or unwritable: made anew */
    } finally {
      if (fd >= 0) closeSync(fd);
    }
    rmSync(spare, { recursive: true, force: true });
  }
  return false;
}

/** Ends what markInUse recorded (synchronously: at process exit too); removes sandboxes/<sandboxId>/ and the sandbox lease. @internal (at process exit too). @internal */
export function releaseSync(store: StoreContext, sandboxId: string): void {
  if (!/^[A-Za-z0-9_.-]{1,128}$/.test(sandboxId) || sandboxId.startsWith('.')) return;
  const dir = store.path('sandboxes', sandboxId);
  // The usual record is owner.json alone: two calls in place (a prune that meets the dir
  // between them takes an empty dir for an abandoned one and removes it: what we do anyway).
  try {
    unlinkSync(join(dir, 'owner.json'));
    rmdirSync(dir);
    unleaseSandbox(sandboxId);
    return;
  } catch {
    /* more in it (a persistent layer's leftovers), or gone */
  }
  // Out of sandboxes/ in one step, then removed: never a half-removed tree there.
  const gone = store.path('tmp', `rel-${ownerTag()}-${randomBytes(6).toString('hex')}`);
  try {
    renameSync(dir, gone);
  } catch {
    unleaseSandbox(sandboxId);
    return;
  }
  if (idSource().kind === 'subordinate') {
    try {
      removeStoreTree(dirname(gone), basename(gone));
    } catch {}
  } else rmSync(gone, { recursive: true, force: true });
  unleaseSandbox(sandboxId);
}

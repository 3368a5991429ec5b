/** The image's own tree during a build: USER's ids from the image's passwd/group, WORKDIR's directories. */
import { seenIds } from '../../host/ids.js';
import { join } from 'node:path';
import { ID_LIMIT } from '../../conventions.js';
import { LayerTar } from '../commit.js';
import type { PendingLayer } from '../import.js';
import { ImageView, userIds } from '../view.js';
import type { State, Ctx } from './state.js';

// ---- the image's own tree -------------------------------------------------------------------

/** `user[:group]` to ids through the image view; a bad user is the build's error (EBUILD). */
export async function buildUserIds(view: ImageView, spec: string): Promise<{ uid: number; gid: number }> {
  let ids: { uid: number; gid: number };
  try {
    ids = await userIds(view, spec);
  } catch (e) {
    throw new Error((e as Error).message, { cause: e });
  }
  if (!(ids.uid < ID_LIMIT && ids.gid < ID_LIMIT)) throw new Error(`${spec}: ids must be below ${ID_LIMIT}`);
  return ids;
}

/**
 * Emits directory entries for `parts` and each of its parents that this layer has not
 * written yet: an image directory keeps its metadata (else the new layer would change it),
 * a new one is 0755 and owned by `owner`.
 */
export async function ensureDirs(tar: LayerTar, view: ImageView, shift: { uid: number; gid: number } | null, parts: string[], owner: { uid: number; gid: number }, now: number): Promise<void> {
  for (let i = 1; i <= parts.length; i++) {
    const rel = parts.slice(0, i).join('/');
    if (tar.hasDir(rel)) continue;
    const f = await view.lookup(parts.slice(0, i));
    if (f && f.st.isDirectory()) {
      tar.add({ path: rel, type: 'dir', mode: f.st.mode & 0o7777, uid: shift ? f.st.uid - shift.uid : 0, gid: shift ? f.st.gid - shift.gid : 0, mtime: Math.floor(f.st.mtimeMs / 1000) });
    } else {
      tar.add({ path: rel, type: 'dir', mode: 0o755, ...owner, mtime: now });
    }
  }
}

export async function userOwner(view: ImageView, state: State): Promise<{ uid: number; gid: number }> {
  const u = state.base.config.config?.User;
  if (typeof u !== 'string' || u === '') return { uid: 0, gid: 0 };
  try {
    return await buildUserIds(view, u);
  } catch {
    return { uid: 0, gid: 0 };
  }
}

export async function workdirLayer(ctx: Ctx, state: State, dir: string): Promise<PendingLayer | null> {
  const view = ImageView.of(ctx.store, state.base.layers, 'the base image');
  const parts = await view.resolve(dir, true);
  const f = await view.lookup(parts);
  if (f && f.st.isDirectory()) return null;
  if (f) throw new Error(`WORKDIR ${dir} exists in the image and is not a directory`);
  const tar = new LayerTar(ctx.op);
  try {
    const outer = ctx.store.shift();
    await ensureDirs(tar, view, outer && seenIds(outer), parts, await userOwner(view, state), Math.floor(Date.now() / 1000));
    return await tar.toLayer(ctx.store, ctx.op, `WORKDIR ${dir}`);
  } catch (e) {
    tar.discard(); // its fd closed now: a full disk gets its space back
    throw e;
  }
}

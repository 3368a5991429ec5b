/**
 * What a plan needs of the image and the store: the image's resolution (kept a second), its
 * default user, and where the root is attached.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULT_PATH } from '../conventions.js';
import { HutchError } from '../errors.js';
import type { ImageStore } from '../image/store.js';
import { ImageView, userIds } from '../image/view.js';
import type { Image, ResolvedImage } from '../image/types.js';

const mountpoints = new Map<string, string>();

export function rootMountpoint(store: ImageStore): string {
  let p = mountpoints.get(store.root);
  if (!p) {
    p = join(store.root, 'mnt');
    mkdirSync(p, { recursive: true, mode: 0o755 });
    mountpoints.set(store.root, p);
  }
  return p;
}

/**
 * Resolutions of image refs, kept a second: repeated creates of one image (the hot path of a
 * code runner) skip the store's reads. Safe when stale: markInUse checks the image record
 * again, and a layer removed meanwhile fails the overlay step with its name.
 */
const resolved = new Map<string, { at: number; value: ResolvedImage }>();
const RESOLVE_TTL_MS = 1000;

export async function resolveCached(store: ImageStore, ref: string | Image): Promise<ResolvedImage> {
  const key = `${store.root}\0${typeof ref === 'string' ? ref : ref.id}`;
  const hit = resolved.get(key);
  const now = performance.now();
  if (hit && now - hit.at < RESOLVE_TTL_MS) return hit.value;
  const value = await store.resolve(ref);
  if (resolved.size > 256) resolved.clear();
  resolved.set(key, { at: now, value });
  return value;
}

/**
 * The image's `User` ('uid', 'uid:gid', or names in the image's /etc/passwd and /etc/group),
 * resolved once per resolution through the scoped image view (lib/image/view.ts): never by
 * a host path read that a symlink, FIFO or huge file in a layer could turn against the host.
 * prepareImageUser runs at create (async, off the event loop); imageUser is its answer, or
 * the error it met, thrown when a process would start as that user.
 */
const users = new WeakMap<ResolvedImage, { uid: number; gid: number } | HutchError>();

export async function prepareImageUser(r: ResolvedImage): Promise<void> {
  const u = r.image.config.user;
  if (!u || /^\d+(?::\d+)?$/.test(u) || users.has(r)) return;
  const label = `image ${r.image.tags[0] ?? r.image.id}`;
  const view = new ImageView(r.lowerdirs.map((hex) => join(r.layersDir, hex)), label);
  try {
    users.set(r, await userIds(view, u));
  } catch (e) {
    const he = HutchError.is(e) ? e : new HutchError('EBADIMAGE', `${label}: ${(e as Error).message}`, { cause: e });
    users.set(r, he.message.includes(JSON.stringify(u)) ? he : new HutchError(he.code, `${he.message} (resolving its User ${JSON.stringify(u)})`, { cause: he }));
  }
}

export function imageUser(r: ResolvedImage): { uid: number; gid: number } | undefined {
  const u = r.image.config.user;
  if (!u) return undefined;
  const m = /^(\d+)(?::(\d+))?$/.exec(u);
  if (m) return { uid: Number(m[1]), gid: Number(m[2] ?? m[1]) };
  const v = users.get(r);
  if (v === undefined) throw new HutchError('EINVAL', `the image's User '${u}' was not resolved (prepareImageUser); pass user: 'uid:gid'`);
  if (HutchError.is(v)) throw new HutchError(v.code, `${v.message}; pass user: 'uid:gid'`, { cause: v });
  return v;
}

/**
 * The environment every process of a sandbox starts with: the image's `Env`, a `PATH` when it
 * sets none (lib/conventions.ts, the only default: init searches exactly the PATH it is sent
 * and has none of its own), then the sandbox's `env`. One place for sandboxes and templates.
 */
export function sandboxEnv(r: ResolvedImage, env: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of r.image.config.env) {
    const i = kv.indexOf('=');
    if (i > 0) out[kv.slice(0, i)] = kv.slice(i + 1);
  }
  out.PATH ??= DEFAULT_PATH;
  return Object.assign(out, env);
}

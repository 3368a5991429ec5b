/**
 * The store's directories and who may reach them (ImageStore.ensure). The root, layers/ and
 * sandboxes/ are <owner>:<range gid> 0710: a sandbox's root (range uid 0, group range gid)
 * passes through to mount the layers (before Linux 6.8 overlay resolves them after the setup
 * child took the range's ids), other users may not even reach them. As host root the owner is
 * root; outside it the owner stays the caller (id 0 of the holder namespace or of hutch's
 * own) and the group is given in that namespace (lib/host/ids.ts). With one id (no range) all
 * is the caller's, 0700.
 */
import { chmodSync, chownSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { HutchError } from '../errors.js';
import { chownAsOwner } from '../host/ids.js';
import { hostMode } from '../host/mode.js';

const SHARED_DIRS = ['layers', 'sandboxes'];
const PRIVATE_DIRS = ['blobs', 'blobs/sha256', 'images', 'layerinfo', 'builtin', 'buildcache', 'tmp'];

/** Makes the layout under `root`; `shift` is the store's id shift (ImageStore.shift). ESTORE naming the path and the fix. */
export function makeStoreLayout(root: string, shift: { uid: number; gid: number } | null): void {
  try {
    mkdirSync(root, { recursive: true, mode: 0o700 });
    const share = (p: string) => {
      if (shift && hostMode() === 'root') chownSync(p, 0, shift.gid);
      else if (shift) chownAsOwner(p, 0, shift.gid);
      chmodSync(p, shift ? 0o710 : 0o700);
    };
    share(root);
    for (const d of SHARED_DIRS) {
      mkdirSync(join(root, d), { recursive: true, mode: 0o700 });
      share(join(root, d));
    }
    for (const d of PRIVATE_DIRS) mkdirSync(join(root, d), { recursive: true, mode: 0o700 });
  } catch (e) {
    // fs errors, and chownAsOwner's (a HutchError with errno and path): the store's failure.
    const err = e instanceof HutchError ? { code: e.errno, path: e.path, message: e.message } : (e as NodeJS.ErrnoException);
    const fix = process.env.HUTCH_ROOT
      ? 'point HUTCH_ROOT at a directory this user may create and write'
      : 'set HUTCH_ROOT (or XDG_DATA_HOME) to a directory this user may write, or pass new ImageStore({ root })';
    throw new HutchError('ESTORE', `the image store ${root} cannot be created or written: ${err.code ?? err.message} at ${err.path ?? root} (running as uid ${process.getuid?.()}); ${fix}`, { errno: err.code, path: err.path ?? root, cause: e });
  }
}

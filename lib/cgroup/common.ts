/** Pieces both drivers share: teardown of a set of directories, and the messages for unenforceable limits. */
import { HutchError, unsupported } from '../errors.js';
import * as fsp from 'node:fs/promises';
import { cgroupFailure, errnoOf, killAndWait, sleep, subdirs, tryRmdir } from './files.js';

/**
 * Removes `dir` after its children (a sandbox never gets nested cgroups from hutch, but a
 * leftover might have some). Returns the errno of the first directory that would not go.
 */
export function removeTree(dir: string): string | undefined {
  const first = tryRmdir(dir);
  if (first !== 'EBUSY' && first !== 'ENOTEMPTY') return first;
  for (const child of subdirs(dir)) {
    const e = removeTree(`${dir}/${child}`);
    if (e) return e;
  }
  return tryRmdir(dir);
}

/**
 * The shared destroy sequence: kill until empty (bounded), then rmdir every directory,
 * retrying EBUSY briefly (on v1 a just-killed task can still be listed for a moment).
 */
export async function teardown(id: string, dirs: readonly string[], kill: () => void, isEmpty: () => boolean): Promise<void> {
  const emptied = await killAndWait(kill, isEmpty);
  if (!emptied) {
    throw new HutchError('ESETUP', `cgroup of sandbox ${id} still has tasks after being killed for 10 s (${dirs.join(', ')}); its directories were kept`, {
      step: 'cgroup',
      path: dirs[0],
      hint: 'a task in uninterruptible sleep (D state, e.g. stuck NFS or FUSE I/O) cannot die until its I/O ends; destroy() can be called again',
    });
  }
  // Off the event loop, all hierarchies at once: a v1 rmdir takes ~0.3 ms of kernel time each
  // (css offlining), which would otherwise hold up the next sandbox's start. EBUSY is retried
  // for up to a second (v1 lists a just-killed task a little longer); a leftover with
  // children of its own is taken apart (removeTree).
  let pending = [...dirs];
  const deadline = Date.now() + 1000;
  for (let delay = 0.5; ; delay = Math.min(delay * 2, 20)) {
    const errs = await Promise.all(pending.map((d) => fsp.rmdir(d).then(() => undefined, (e: unknown) => errnoOf(e) ?? 'EIO')));
    const failed: { dir: string; errno: string }[] = [];
    for (let i = 0; i < pending.length; i++) {
      const errno = errs[i] === 'ENOTEMPTY' ? removeTree(pending[i]!) : errs[i];
      if (errno !== undefined && errno !== 'ENOENT') failed.push({ dir: pending[i]!, errno });
    }
    const left = failed[0];
    if (!left) return;
    if ((left.errno !== 'EBUSY' && left.errno !== 'ENOTEMPTY') || Date.now() > deadline) {
      throw cgroupFailure('rmdir', left.dir, Object.assign(new Error(left.errno), { code: left.errno }));
    }
    pending = failed.map((f) => f.dir);
    await sleep(delay);
  }
}

/** Which Limits field needs which controller (for messages). */
export const LIMIT_OF: Record<string, string> = {
  memory: 'memory',
  pids: 'pids',
  cpu: 'cpus',
  cpuset: 'cpuset',
  io: 'io',
  blkio: 'io',
  freezer: 'freezer',
};

export function ioNeedsDevice(): HutchError {
  return unsupported(
    'limits.io for this sandbox',
    'io limits throttle the block device that backs the writable layer, and this sandbox has none (an ephemeral tmpfs writable layer does no block I/O); ' +
      'use persistent: true with an image store on a block device, or leave io unset',
  );
}

export function badIoDevice(dev: string): HutchError {
  return new HutchError('EINVAL', `invalid option ioDevice: expected 'major:minor' of a block device, got ${JSON.stringify(dev)}`);
}

export const IO_DEVICE = /^\d+:\d+$/;

/** memorySwap or the default 0 cannot be enforced: explain how to get it. */
export function swapUnsupported(explicit: boolean, how: string, swapActive: boolean): HutchError {
  const why = swapActive
    ? '. This host has swap enabled, so a memory limit without a swap limit would let the sandbox swap instead of being held at it'
    : '';
  return unsupported(explicit ? 'limits.memorySwap' : 'keeping the sandbox off swap (limits.memorySwap defaults to 0)', how + why);
}

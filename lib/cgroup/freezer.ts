/**
 * The cgroup freezer, for both drivers: stop every task of a sandbox where it is and let it go
 * on later. Used by commit (the writable layer must hold still while it is read) and meant
 * for Sandbox.pause/resume.
 *
 * - cgroup2 (`cgroup.freeze`, 5.2+): a core file of every non-root cgroup, no controller
 *   needed, so a hybrid host's cgroup2 leaf (which holds every task of the sandbox: it is
 *   cloned into it) has it too. Writing 1 starts freezing; the cgroup is frozen once
 *   `cgroup.events` says `frozen 1`.
 * - cgroup v1 `freezer` controller: `freezer.state` goes FREEZING until every task stopped,
 *   then FROZEN; writing FROZEN again retries tasks that were busy (cgroup-v1/freezer-subsystem).
 *
 * Both are idempotent: freezing a frozen cgroup or thawing a thawed one is a no-op. A freeze
 * that does not complete within the bound (a task in uninterruptible sleep) is undone and
 * fails, so a caller never proceeds believing the sandbox stopped when it did not.
 */
import { HutchError } from '../errors.js';
import { readControl, readKeyed, sleep, writeControl } from './files.js';

/** How long a freeze may take before it is given up (tasks in D state cannot stop). */
export const FREEZE_WAIT_MS = 10_000;

export type Freezer = { kind: 'v2'; dir: string } | { kind: 'v1'; dir: string };

/** Polls `done` with a growing delay (0.2 ms up to 10 ms) until it holds or the bound passes. */
async function waitFor(done: () => boolean, retry: () => void, boundMs: number): Promise<boolean> {
  const deadline = Date.now() + boundMs;
  for (let delay = 0.2; ; delay = Math.min(delay * 2, 10)) {
    if (done()) return true;
    if (Date.now() > deadline) return false;
    await sleep(delay);
    retry();
  }
}

function isFrozen(f: Freezer): boolean {
  if (f.kind === 'v2') return readKeyed(`${f.dir}/cgroup.events`).get('frozen') === 1;
  return (readControl(`${f.dir}/freezer.state`) ?? '').trim() === 'FROZEN';
}

/** Whether a freeze was asked for (done or under way): cgroup.freeze 1, or FREEZING/FROZEN. */
function freezeRequested(f: Freezer): boolean {
  if (f.kind === 'v2') return (readControl(`${f.dir}/cgroup.freeze`) ?? '').trim() === '1';
  return (readControl(`${f.dir}/freezer.state`) ?? '').trim() !== 'THAWED';
}

/**
 * Freezes the cgroup and resolves once every task in it is stopped: true when this call
 * froze it, false when a freeze was already asked for (a caller that did not freeze it
 * should not thaw it).
 */
export async function freezeCgroup(id: string, f: Freezer, boundMs = FREEZE_WAIT_MS): Promise<boolean> {
  const already = freezeRequested(f);
  const write = () => (f.kind === 'v2' ? writeControl(f.dir, 'cgroup.freeze', '1') : writeControl(f.dir, 'freezer.state', 'FROZEN'));
  write();
  // v2 needs no retry: the kernel finishes the freeze by itself; v1 retries busy tasks on a new write.
  const ok = await waitFor(() => isFrozen(f), f.kind === 'v1' ? write : () => undefined, boundMs);
  if (ok) return !already;
  if (!already) await thawCgroup(f).catch(() => undefined);
  throw new HutchError('ESETUP', `cgroup of sandbox ${id} did not freeze within ${boundMs / 1000} s (${f.dir}); ${already ? 'it stays frozen' : 'it was thawed again'}`, {
    step: 'cgroup',
    path: f.dir,
    hint: 'a task in uninterruptible sleep (D state, e.g. stuck NFS or FUSE I/O) cannot be frozen until its I/O ends; try again',
  });
}

/** Thaws the cgroup and resolves once the kernel no longer reports it frozen. */
export async function thawCgroup(f: Freezer): Promise<void> {
  if (f.kind === 'v2') {
    writeControl(f.dir, 'cgroup.freeze', '0');
    await waitFor(() => readKeyed(`${f.dir}/cgroup.events`).get('frozen') !== 1, () => undefined, FREEZE_WAIT_MS);
  } else {
    writeControl(f.dir, 'freezer.state', 'THAWED');
  }
}

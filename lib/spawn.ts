/**
 * The parent's side of a sandbox's birth after clone: waiting for the child's setup, joining
 * its v1 cgroups meanwhile, and killing a half-made one.
 */
import { fstatSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { HutchError, hostFailure } from './errors.js';
import { isFailure, native, type NativeFailure, type Spawned, type Watch } from './native.js';

export function isDirFd(fd: number): boolean {
  try {
    return fstatSync(fd).isDirectory();
  } catch {
    return true;
  }
}

/**
 * Joins the sandbox's init to its v1 cgroups (hybrid and v1 hosts; on v2 CLONE_INTO_CGROUP
 * placed it at clone). Done from the threadpool while the child sets up, not before: on v1
 * the first write to cgroup.procs after a quiet spell waits for an RCU grace period
 * (cgroup_threadgroup_rwsem), 5-10 ms here, which would otherwise sit on the critical path.
 * Nothing of the sandbox runs before create() resolves, and that waits for this; the setup
 * itself (a few mounts, no user memory) is charged to the caller's cgroups.
 */
export async function attachV1(files: readonly string[], pid: number): Promise<HutchError | null> {
  for (const f of files) {
    try {
      await writeFile(f, String(pid));
    } catch (e) {
      return hostFailure('ESETUP', `joining the sandbox's cgroup ${f}`, e);
    }
  }
  return null;
}

/** Waits for the child's setup: EOF on the error pipe (init was exec'd) or its error record. */
export function waitSetup(s: Spawned): Promise<NativeFailure | null> {
  const n = native();
  return new Promise((resolve) => {
    const check = (): boolean => {
      const r = n.readSetupError(s.errFd, s.pid);
      if (r === undefined) return false;
      resolve(r === null ? null : isFailure(r) ? r : null);
      return true;
    };
    if (check()) return;
    const w = new n.Watch(s.errFd, () => {
      if (check()) {
        w.close();
        setupWatches.delete(s);
      }
    });
    setupWatches.set(s, w);
  });
}

/** Watches still open on error pipes: closed before their fd is (a reused fd number would
 * otherwise meet a stale watch in libuv). */
const setupWatches = new WeakMap<Spawned, Watch>();

export async function killAndReap(s: Spawned): Promise<void> {
  const n = native();
  n.pidfdKill(s.pidfd, 9);
  setupWatches.get(s)?.close();
  setupWatches.delete(s);
  n.close(s.ctlFd);
  n.close(s.errFd);
  await new Promise<void>((resolve) => {
    const done = (): boolean => n.reap(s.pidfd) !== null;
    if (done()) return resolve();
    const w = new n.Watch(s.pidfd, () => {
      if (done()) {
        w.close();
        resolve();
      }
    });
  });
  n.close(s.pidfd);
}

/**
 * The parent's side of a sandbox's birth after clone: waiting for the child's setup, and
 * killing a half-made one.
 */
import { fstatSync } from 'node:fs';
import { HutchError, hostFailure } from './errors.js';
import { isFailure, native, type NativeFailure, type ClonedInit, type Watch } from './native.js';

export function isDirFd(fd: number): boolean {
  try {
    return fstatSync(fd).isDirectory();
  } catch {
    return true;
  }
}

/** Waits for the child's setup: EOF on the error pipe (init was exec'd) or its error record. */
export function waitSetup(s: ClonedInit): Promise<NativeFailure | null> {
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
const setupWatches = new WeakMap<ClonedInit, Watch>();

export async function killAndReap(s: ClonedInit): Promise<void> {
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

/**
 * Warm starts for `Sandbox.run`: a blank sandbox made ahead, so that the next run with the same
 * image and limits skips the slowest host-side steps of a start — the clone into new namespaces
 * (about 1 ms, most of it the new network namespace), the cgroup, the id range and the store's
 * owner record.
 *
 * A blank is a child cloned into its namespaces and cgroup, id maps written, that waits for its
 * plan: lib/start.ts sends the encoded plan (lib/plan/encode.ts) and the fds it names as the
 * blank's go message (addon/blank.cc startBlank), received into memory of the blank's own, so
 * no memory need be shared with this process (CLONE_VM or not). It has
 * made its mounts private and brought `lo` up, and closed every fd but its own; it has run
 * nothing and mounted nothing: a sandbox made from it is as fresh as any. There is at most one
 * per key (and MAX_BLANKS in all). The next run's is made while a run's command runs, its clone
 * on a libuv pool thread; it is dropped after IDLE_MS unused, by `Sandbox.settle()`, and at
 * exit. A blank costs a process
 * waiting in recvmsg, an empty cgroup, an id range and an owner record naming the image (so
 * the image is in use: `store.remove()` and `prune()` drop this process's blanks first).
 */
import { randomHex } from './random.js';
import { rmdirSync } from 'node:fs';
import { cgroupDriver, type SandboxCgroup } from './cgroup/driver.js';
import { cloneMaps, idSource } from './host/ids.js';
import { acquireIds, type SandboxIds } from './idrange.js';
import type { ImageStore } from './image/store.js';
import type { CgroupLimits } from './limits.js';
import { isFailure, native, type ClonedInit } from './native.js';
import { killAndReap } from './child-setup.js';
import { inBackground } from './teardowns.js';

/** How long a blank waits for a run before it is dropped. */
export const IDLE_MS = 2000;
/** Blanks kept at once (one per image and limits): runs with ever-new limits keep no more. */
export const MAX_BLANKS = 4;

export interface Blank {
  key: string;
  id: string;
  /** Its owner record names the image (written first, as for any sandbox). */
  store: ImageStore;
  ids: SandboxIds;
  cgroup: SandboxCgroup;
  spawned: ClonedInit;
  timer: NodeJS.Timeout;
}

const blanks = new Map<string, Blank>();
/** Keys whose blank is being made (makeBlank awaits the owner record). */
const making = new Map<string, Promise<void>>();
let exitHook = false;

/**
 * The blank for `key`, now the caller's (it releases it, or drops it with `dropBlank`). One
 * still being cloned is waited for: that takes less than cloning anew.
 */
export async function takeBlank(key: string): Promise<Blank | undefined> {
  const inflight = making.get(key);
  if (inflight) await inflight;
  return takeReady(key);
}

function takeReady(key: string): Blank | undefined {
  const b = blanks.get(key);
  if (!b) return undefined;
  blanks.delete(key);
  clearTimeout(b.timer);
  return b;
}

/**
 * Makes the blank for `key` unless there is one. A failure only means there is no blank: the
 * next run makes its sandbox the ordinary way, and reports a failure of its own if it has one.
 */
export function makeBlank(key: string, store: ImageStore, imageId: string, layersDir: string, limits: CgroupLimits): void {
  if (blanks.has(key) || making.has(key)) return;
  const p = make(key, store, imageId, layersDir, limits).finally(() => making.delete(key));
  making.set(key, p);
}

async function make(key: string, store: ImageStore, imageId: string, layersDir: string, limits: CgroupLimits): Promise<void> {
  const n = native();
  const id = randomHex(6);
  const ids = acquireIds(layersDir);
  let cgroup: SandboxCgroup | undefined;
  let marked = false;
  try {
    // As for any sandbox, the owner record first: a prune elsewhere then never takes the
    // cgroup made next for a crashed sandbox's.
    await store.markInUse(imageId, id);
    marked = true;
    cgroup = cgroupDriver().create(id, limits);
    // The clone runs on a libuv pool thread (addon/blank.cc BlankWorker).
    const s = await n.cloneBlank({
      ...cloneMaps(ids, idSource().size),
      cgroupFd: cgroup.cloneIntoFd ?? -1,
      joinFiles: [...cgroup.joinFiles],
    });
    cgroup.closeCloneFd();
    if (isFailure(s)) throw new Error(`cloneBlank: ${s.step} errno ${s.errno}`);
    // First of the exit hooks: the subtree roots' removal (cgroup/files.ts) comes after it.
    if (!exitHook) exitHook = !!process.prependOnceListener('exit', dropAllAtExit);
    const timer = setTimeout(() => {
      const b = takeReady(key);
      if (b) dropBlank(b);
    }, IDLE_MS).unref();
    blanks.set(key, { key, id, store, ids, cgroup, spawned: s, timer });
    // The oldest go first (a Map keeps insertion order).
    for (const old of [...blanks.keys()].slice(0, Math.max(0, blanks.size - MAX_BLANKS))) {
      const b = takeReady(old);
      if (b) dropBlank(b);
    }
  } catch {
    // The record last, as in destroy().
    const made = cgroup;
    inBackground((async () => {
      if (made) await made.destroy();
      if (marked) await store.release(id);
    })());
    ids.release();
  }
}

/** Kills a blank and frees its cgroup and id range, in the background (`Sandbox.settle()` waits). */
export function dropBlank(b: Blank): void {
  inBackground(
    (async () => {
      await killAndReap(b.spawned);
      b.ids.release();
      await b.cgroup.destroy();
      await b.store.release(b.id);
    })(),
  );
}

/** Drops every blank, those being made included (`Sandbox.settle()`, store remove and prune). */
export async function dropBlanks(): Promise<void> {
  await blanksMade();
  for (const key of [...blanks.keys()]) {
    const b = takeReady(key);
    if (b) dropBlank(b);
  }
}

/** At exit the event loop is gone: kill, reap and remove synchronously, as far as that goes. */
function dropAllAtExit(): void {
  const n = native();
  for (const b of blanks.values()) {
    n.pidfdKill(b.spawned.pidfd, 9);
    const deadline = Date.now() + 100;
    while (n.reap(b.spawned.pidfd) === null && Date.now() < deadline) {
      /* a killed child with nothing mounted dies within microseconds */
    }
    for (const d of [...b.cgroup.dirs].reverse()) {
      try {
        rmdirSync(d);
      } catch {
        /* left to prune */
      }
    }
    b.store.releaseSync(b.id);
    b.ids.release();
  }
  blanks.clear();
}

/** @internal For tests: the blanks now, as { id, pid }. */
export function blanksNow(): { id: string; pid: number }[] {
  return [...blanks.values()].map((b) => ({ id: b.id, pid: b.spawned.pid }));
}

/** Waits for the blanks being made (also for tests). */
export async function blanksMade(): Promise<void> {
  while (making.size > 0) await Promise.all([...making.values()]);
}

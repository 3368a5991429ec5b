/**
 * Per-sandbox host id ranges. Where the kernel has idmapped mounts (overlay over idmapped
 * lower layers: 5.19+), each sandbox gets a range of its own — sandbox ids 0..65535 map to
 * host ids base + slot*65536 — so two sandboxes never share a host uid: a process that
 * escaped one could not touch the files or processes of another. Layers stay stored in the
 * base range (lib/identity.ts); each sandbox sees them through idmapped mounts. Elsewhere all
 * sandboxes share the base range (checkHost says which applies).
 *
 * Slots are leased with O_EXCL files holding the owner's pid and start time, shared by every
 * hutch process on the host; a lease whose owner died is taken over.
 */
import { mkdirSync, readFileSync, readdirSync, unlinkSync } from 'node:fs';
import { randomInt } from 'node:crypto';
import { join } from 'node:path';
import { HutchError, errnoName, hostFailure } from './errors.js';
import { kernelFeatures } from './host/features.js';
import { idSource } from './host/ids.js';
import { hostMode } from './host/mode.js';
import { hostRange, RANGE_SIZE, DEFAULT_RANGE_START } from './identity.js';
import { selfOwner } from './host/liveness.js';
import { breakIfStale, createLease, jsonOwner } from './host/lease.js';
import { isFailure, native } from './native.js';

export interface SandboxIds {
  /** First host uid / gid of the sandbox's range (its root). */
  readonly uid: number;
  readonly gid: number;
  /** The leased slot, or null when sandboxes share the base range. */
  readonly slot: number | null;
  /**
   * User namespace fd mapping the stored layer ids (base range) to this range; null when shared.
   * Read it when needed, not once to keep: `parkNamespace()` may close it, and the next read
   * makes it again.
   */
  readonly layersUserns: number | null;
  /**
   * Once the sandbox's layers are mounted: closes the range's namespace fd when this process
   * holds more than 64 of them (HUTCH_USERNS_KEEP) (many live sandboxes), so a live sandbox holds no
   * fd for it. Reusing the range makes it again.
   */
  parkNamespace(): void;
  release(): void;
}

export function idsStateDir(): string {
  return process.env.HUTCH_IDS_DIR ?? '/run/hutch/ids';
}

/** How many slots the configured range holds beyond the base one. */
function slotCount(): number {
  const base = hostRange();
  let total = RANGE_SIZE;
  if (base.uid === DEFAULT_RANGE_START) {
    total = 2 ** 31 - DEFAULT_RANGE_START; // up to 2^31: 16384 ranges
  } else {
    try {
      for (const line of readFileSync('/etc/subuid', 'utf8').split('\n')) {
        const [who, start, count] = line.trim().split(':');
        if (who === 'hutch' && Number(start) === base.uid) total = Number(count);
      }
    } catch {}
  }
  return Math.max(0, Math.floor(total / RANGE_SIZE) - 1);
}

const namespaces = new Map<number, number>();
let supported: boolean | undefined;
/**
 * Slots this process used and released, reused first, at most MAX_IDLE: their namespaces are
 * kept, and so is their lease (an idle slot stays this process's), so taking one again costs
 * no file I/O.
 */
const idle: number[] = [];
const MAX_IDLE = 4;
/** Namespace fds kept for live sandboxes' ranges beyond which parkNamespace closes them. */
const keepNamespaces = (): number => Number(process.env.HUTCH_USERNS_KEEP ?? 64);

let exitHook = false;
/** Set once the exit hook ran: a slot released later (another exit hook) goes at once. */
let exiting = false;

/** At exit: idle slots' leases go (a crash leaves them to takeOverIfDead and prune). */
function dropIdleLeases(): void {
  exiting = true;
  for (const slot of idle.splice(0)) {
    try {
      unlinkSync(join(idsStateDir(), String(slot)));
    } catch {}
  }
}

/** Drops every idle slot now, leases and namespaces (`Sandbox.settle()`: leave nothing behind). */
export function dropIdleIds(): void {
  for (const slot of idle.splice(0)) forget(slot, join(idsStateDir(), String(slot)));
}

/** Drops an idle slot: its namespaces, and its lease unless someone else holds it now. */
function forget(slot: number, leaseFile?: string): void {
  if (leaseFile !== undefined) {
    try {
      unlinkSync(leaseFile);
    } catch {}
  }
  const ns = namespaces.get(slot);
  if (ns === undefined) return;
  namespaces.delete(slot);
  native().close(ns);
}

/** The user namespace (an fd) that maps the stored layer ids (base range) to this slot's range. */
function nsFor(slot: number, uid: number, gid: number): number {
  const have = namespaces.get(slot);
  if (have !== undefined) return have;
  const base = hostRange();
  const layers = native().makeUserns(`${base.uid} ${uid} ${RANGE_SIZE}\n`, `${base.gid} ${gid} ${RANGE_SIZE}\n`);
  if (isFailure(layers)) throw hostFailure('ESETUP', 'a user namespace for idmapped layers', layers);
  namespaces.set(slot, layers);
  return layers;
}

/**
 * Which id ranges this host gives sandboxes: 'per-sandbox' where overlay takes idmapped layers
 * one by one ("lowerdir+", 6.8+: resolved before the setup child drops to the sandbox's range;
 * older kernels take them in mount(2)'s data, resolved with the range's ids, which the store's
 * 0710 directories admit only for the base range) and the configured range holds more than
 * one; else 'shared'. HUTCH_SHARED_RANGE=1 asks for 'shared' by name. checkHost() reports it.
 */
export function idRangeMode(): 'per-sandbox' | 'shared' {
  if (hostMode() !== 'root' || !kernelFeatures().overlayLowerdirPlus || process.env.HUTCH_SHARED_RANGE === '1' || slotCount() === 0) return 'shared';
  return 'per-sandbox';
}

/**
 * Whether sandboxes get ranges of their own: idRangeMode(), and on the first sandbox an
 * idmapped tree of the store's layers dir made once to prove it. A failure there is an error,
 * not a quiet fall back to the shared range (which is weaker).
 */
function idmapWorks(layersDir: string): boolean {
  if (supported !== undefined) return supported;
  if (idRangeMode() === 'shared') return (supported = false);
  const base = hostRange();
  const ns = nsFor(0, base.uid, base.gid);
  const t = native().openTree(layersDir, true, ns);
  if (isFailure(t)) {
    throw new HutchError('EUNSUPPORTED', `per-sandbox id ranges: an idmapped mount of the store's layers dir ${layersDir} failed: ${errnoName(t.errno)} (does its filesystem support idmapped mounts?); set HUTCH_SHARED_RANGE=1 to let every sandbox share one id range, or move the store`, { errno: errnoName(t.errno), path: layersDir });
  }
  native().close(t.fd);
  return (supported = true);
}

/** The id range for a new sandbox. */
export function acquireIds(layersDir: string): SandboxIds {
  if (hostMode() !== 'root') {
    // Outside root mode every sandbox shares the one range the caller owns (lib/host/ids.ts):
    // idmapped mounts of the store's files need CAP_SYS_ADMIN over their filesystem.
    const src = idSource();
    return { uid: src.uid, gid: src.gid, slot: null, layersUserns: null, parkNamespace: () => undefined, release: () => undefined };
  }
  const base = hostRange();
  if (!idmapWorks(layersDir)) return { uid: base.uid, gid: base.gid, slot: null, layersUserns: null, parkNamespace: () => undefined, release: () => undefined };
  const dir = idsStateDir();
  // An idle slot first: its lease still names this live process, which no other process
  // takes over (takeOverIfDead), so it needs no file I/O.
  const reused = idle.pop();
  if (reused !== undefined) return leased(dir, reused);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw hostFailure('ESETUP', `id ranges: cannot create ${dir}`, e);
  }
  const count = slotCount();
  const start = randomInt(count);
  const me = JSON.stringify(selfOwner());
  for (let i = 0; i < count; i++) {
    const slot = 1 + ((start + i) % count);
    const file = join(dir, String(slot));
    try {
      if (!createLease(file, me) && !(takeOverIfDead(file) && createLease(file, me))) continue;
    } catch (e) {
      throw hostFailure('ESETUP', `id ranges: cannot write ${file}`, e);
    }
    return leased(dir, slot);
  }
  // Every slot taken: share the base range rather than fail.
  return { uid: base.uid, gid: base.gid, slot: null, layersUserns: null, parkNamespace: () => undefined, release: () => undefined };
}

/** A slot whose lease this process holds: its range and namespaces, and its release (to the idle list). */
function leased(dir: string, slot: number): SandboxIds {
  const base = hostRange();
  const uid = base.uid + slot * RANGE_SIZE;
  const gid = base.gid + slot * RANGE_SIZE;
  nsFor(slot, uid, gid); // made now: a failure is the acquire's
  // Registered at the first lease, before any other module's exit hook that may release one.
  if (!exitHook) exitHook = !!process.once('exit', dropIdleLeases);
  let released = false;
  return {
    uid,
    gid,
    slot,
    get layersUserns() {
      return nsFor(slot, uid, gid);
    },
    parkNamespace: () => {
      if (namespaces.size > keepNamespaces()) forget(slot);
    },
    release: () => {
      if (released) return;
      released = true;
      if (exiting) return forget(slot, join(dir, String(slot)));
      idle.push(slot);
      while (idle.length > MAX_IDLE) {
        const old = idle.shift()!;
        forget(old, join(dir, String(old)));
      }
    },
  };
}

/**
 * Removes the lease when its owner is gone. An empty or torn one (its writer was killed between
 * the exclusive create and the write) is taken over once it is clearly not in progress.
 */
function takeOverIfDead(file: string): boolean {
  return breakIfStale(file, jsonOwner, TORN_LEASE_MS);
}

/** How old an empty or unreadable lease must be before it counts as a dead writer's. */
const TORN_LEASE_MS = 10_000;

/** Removes leases of dead owners (prune). */
export function pruneIds(): number {
  let n = 0;
  let names: string[] = [];
  try {
    names = readdirSync(idsStateDir());
  } catch {
    return 0;
  }
  for (const name of names) if (/^\d+$/.test(name) && takeOverIfDead(join(idsStateDir(), name))) n++;
  return n;
}

/**
 * Sandbox leases: one file per live sandbox on the host, `<state dir>/sandboxes/<id>`, naming
 * its owner process (pid + start time), the store it uses and the cgroup subtree it lives in.
 * They make liveness independent of the store: a prune run with any store finds every
 * sandbox whose owner is gone, and what it left (cgroups under whichever subtree, the record
 * and the loop-mounted disk in whichever store). Written (O_EXCL) with the store's owner
 * record, before the sandbox's cgroup exists, and removed after it is gone.
 */
import { hostMode } from './mode.js';
import { mkdirSync, readdirSync } from 'node:fs';
import { unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cgroupDriver } from '../cgroup/driver.js';
import { createLease, jsonOwner, leaseAge, MAX_SPARE_LEASES, readLeaseText, removeLease, retireLease, spareLeaseCount } from './lease.js';
import { isAlive, selfOwner, type Owner } from './liveness.js';

export interface SandboxLease extends Owner {
  /** The sandbox id (the file's name). */
  id: string;
  /** The store root whose `sandboxes/<id>/` holds its owner record and persistent disk. */
  store: string;
  /** The directory its cgroup was made in (hutch's subtree root in the first hierarchy), or null. */
  cgroupParent: string | null;
}

/**
 * Where hutch keeps host state: `$HUTCH_STATE_DIR`, else /run/hutch as host root, else
 * `$XDG_RUNTIME_DIR/hutch` (or a per-user dir in the temp dir). Root of a user namespace may
 * not own the /run it sees (a pod's /run is its own; a user namespace on a host's is not).
 */
export function hostStateDir(): string {
  const env = process.env.HUTCH_STATE_DIR;
  if (env) return env;
  if (hostMode() === 'root') return '/run/hutch';
  return process.env.XDG_RUNTIME_DIR ? join(process.env.XDG_RUNTIME_DIR, 'hutch') : join(tmpdir(), `hutch-${process.getuid?.() ?? 0}`);
}

export function sandboxLeaseDir(): string {
  return join(hostStateDir(), 'sandboxes');
}

let made = '';
let parentDir: string | null | undefined;

function ownCgroupParent(): string | null {
  if (parentDir === undefined) {
    try {
      parentDir = cgroupDriver().subtreeRoots[0] ?? null;
    } catch {
      parentDir = null; // no cgroups here: the create fails on its own, with its own error
    }
  }
  return parentDir;
}

const held = new Map<string, string>();

/**
 * Records that this process owns sandbox `id` of `store`. Synchronous: on the create hot path.
 * A lease of the same id held by a dead owner is taken over.
 * @throws the raw errno error when the state dir cannot be written (the caller wraps it).
 */
export function leaseSandbox(id: string, store: string, owner: Owner = selfOwner()): void {
  const dir = sandboxLeaseDir();
  if (made !== dir) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    made = dir;
  }
  const text = JSON.stringify({ pid: owner.pid, start: owner.start, id, store, cgroupParent: ownCgroupParent() });
  const file = join(dir, id);
  if (!createLease(file, text)) {
    // A dead owner's lease of the same id (ids are random: in practice only a retried id).
    const old = readSandboxLease(id);
    if (old && isAlive(old)) throw Object.assign(new Error(`sandbox id ${id} is in use by process ${old.pid}`), { code: 'EEXIST', path: file });
    removeLease(file);
    if (!createLease(file, text)) throw Object.assign(new Error(`sandbox id ${id} was taken meanwhile`), { code: 'EEXIST', path: file });
  }
  held.set(id, text);
}

/**
 * Ends this process's lease of sandbox `id` (never another process's). Removed without reading
 * it back first: only a taker that judged it stale may replace a held lease, and it is stale
 * only when its owner is dead (this process is not) or it is torn (createLease never leaves
 * one torn), so while `held` has it, the file is ours.
 */
export function unleaseSandbox(id: string): void {
  const text = held.get(id);
  if (text === undefined) return;
  held.delete(id);
  try {
    // Kept as a spare for the next lease (lease.ts retireLease): no inode freed and allocated anew.
    retireLease(join(sandboxLeaseDir(), id));
  } catch {
    /* left to prune (it judges the lease by its owner: this process, once dead) */
  }
}

/**
 * unleaseSandbox for a background teardown: the lease becomes a spare (a rename, which frees
 * no block), and only when enough spares are kept is it unlinked, in libuv's threadpool: on a
 * filesystem mounted `discard` (ext4 here) freeing the file's block waits for the device, which
 * would stall the event loop of every other sandbox of this process.
 */
export async function unleaseSandboxAsync(id: string): Promise<void> {
  if (!held.has(id)) return;
  const file = join(sandboxLeaseDir(), id);
  try {
    if (spareLeaseCount(sandboxLeaseDir()) < MAX_SPARE_LEASES) retireLease(file);
    else await unlink(file);
  } catch {
    /* gone (ENOENT), or left to prune, as in unleaseSandbox */
  }
  held.delete(id);
}

/** The lease of sandbox `id`, or undefined when there is none (or it is torn). */
export function readSandboxLease(id: string): SandboxLease | undefined {
  const text = readLeaseText(join(sandboxLeaseDir(), id));
  if (!text) return undefined;
  try {
    const owner = jsonOwner(text);
    const v = JSON.parse(text) as Partial<SandboxLease>;
    if (!owner || typeof v.store !== 'string') return undefined;
    return { ...owner, id, store: v.store, cgroupParent: typeof v.cgroupParent === 'string' ? v.cgroupParent : null };
  } catch {
    return undefined;
  }
}

/** Every sandbox lease on the host: id -> lease (undefined when torn or empty). */
export function sandboxLeases(): Map<string, SandboxLease | undefined> {
  const out = new Map<string, SandboxLease | undefined>();
  let names: string[] = [];
  try {
    names = readdirSync(sandboxLeaseDir());
  } catch {
    return out;
  }
  for (const n of names) if (!n.startsWith('.')) out.set(n, readSandboxLease(n));
  return out;
}

/** A torn (empty, unreadable) lease older than this is a dead writer's. */
export const TORN_SANDBOX_LEASE_MS = 10_000;

/** True when lease `id` is stale: its owner is gone, or it is torn and old. */
export function sandboxLeaseDead(id: string, lease: SandboxLease | undefined): boolean {
  if (lease) return !isAlive(lease);
  const age = leaseAge(join(sandboxLeaseDir(), id));
  return age !== undefined && age >= TORN_SANDBOX_LEASE_MS;
}

/** Removes a dead sandbox's lease (prune, after everything it names is gone). */
export function dropSandboxLease(id: string): void {
  try {
    removeLease(join(sandboxLeaseDir(), id));
  } catch {
    /* the next prune */
  }
}

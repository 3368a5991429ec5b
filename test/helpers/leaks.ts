import { readFileSync, readdirSync, existsSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { SHARED_MEMCG, SHARED_PIN } from '../../lib/cgroup/types.js';
import { isAlive, ownerFromName } from '../../lib/host/liveness.js';
import { sandboxLeaseDir } from '../../lib/host/sandboxes.js';
import { pinOwner } from '../../lib/cgroup/v1.js';

function readdirOr(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/**
 * The sandbox cgroup directories in `dir` (a subtree root): its children, and on v2 the leaves
 * below the shared memory cgroup (SHARED_MEMCG), which itself is hutch's like the root.
 */
export function sandboxCgroupsIn(dir: string): string[] {
  const kids = (d: string) => {
    try {
      return readdirSync(d, { withFileTypes: true }).filter((k) => k.isDirectory()).map((k) => `${d}/${k.name}`);
    } catch {
      return [];
    }
  };
  // v1/hybrid: the processes' pins in the shared memory cgroup are no sandbox's (deadPins).
  return kids(dir).flatMap((k) => (k.endsWith(`/${SHARED_MEMCG}`) ? kids(k).filter((p) => !p.slice(p.lastIndexOf('/') + 1).startsWith(SHARED_PIN)) : [k]));
}

/** v1/hybrid: pins in the shared memory cgroup of processes that are gone (their exit removes them; a prune, those of killed ones). */
export function deadPins(dir: string): string[] {
  let names: string[] = [];
  try {
    names = readdirSync(`${dir}/${SHARED_MEMCG}`);
  } catch {
    return [];
  }
  return names
    .filter((n) => {
      const owner = pinOwner(n);
      return owner !== undefined && !isAlive(owner);
    })
    .map((n) => `${dir}/${SHARED_MEMCG}/${n}`);
}

/** Removes an (empty) subtree root `dir` after its shared memory cgroup; throws what rmdir throws. */
export function rmdirSubtreeRoot(dir: string): void {
  if (existsSync(`${dir}/${SHARED_MEMCG}`)) {
    // v1/hybrid: the processes' pins first (the caller's own among them: its next 'shared' sandbox pins again).
    for (const n of readdirSync(`${dir}/${SHARED_MEMCG}`)) if (n.startsWith(SHARED_PIN)) rmdirSync(`${dir}/${SHARED_MEMCG}/${n}`);
    rmdirSync(`${dir}/${SHARED_MEMCG}`);
  }
  rmdirSync(dir);
}
import { execFileSync } from 'node:child_process';

/** hutch's cgroup subtree roots: directories under /sys/fs/cgroup whose name has "hutch". */
export function subtreeRoots(dir = '/sys/fs/cgroup', depth = 5, out: string[] = []): string[] {
  if (depth < 0) return out;
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!e.isDirectory()) continue;
    const p = `${dir}/${e.name}`;
    // A delegated cgroup of the rootless tests (scripts/rootless-user.sh) holds a user's hutch subtree.
    if (/hutch/.test(e.name) && !e.name.startsWith('hutch-delegate-')) out.push(p);
    else subtreeRoots(p, depth - 1, out);
  }
  return out;
}

function walk(out: string[]): void {
  // The subtree roots themselves may stay (empty); sandbox cgroups below them must not.
  for (const p of subtreeRoots()) {
    for (const k of sandboxCgroupsIn(p)) out.push(`cgroup ${k}`);
    for (const k of deadPins(p)) out.push(`pin of a process that is gone ${k}`);
  }
}

/** Everything hutch may have left on the host: cgroups, mounts, links, queue tables, processes. */
export async function leftovers(): Promise<string[]> {
  const out: string[] = [];
  walk(out);
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    if (/hutch/.test(line)) out.push(`mount ${line}`);
  }
  try {
    const links = execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' });
    for (const l of links.split('\n')) if (/hutch|hx[0-9a-f]/.test(l)) out.push(`link ${l}`);
  } catch {}
  try {
    // The name check's queue table (lib/network/nfqueue.ts), one per hutch process that has one open.
    const tables = execFileSync('nft', ['list', 'tables'], { encoding: 'utf8' });
    for (const l of tables.split('\n')) if (/ hutchq\d+$/.test(l)) out.push(`nft ${l.trim()}`);
  } catch {}
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const exe = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (exe.startsWith('hutch-init') || exe.includes('memfd:hutch-init')) out.push(`process ${pid} ${exe}`);
    } catch {}
  }
  // Spare leases and records of processes that are gone (a prune's, or their exit's, to remove).
  for (const n of readdirOr(sandboxLeaseDir())) {
    const m = /^\.[^.]+\.(\d+)-(\d+)-/.exec(n);
    if (m && !isAlive({ pid: Number(m[1]), start: m[2]! })) out.push(`spare lease ${n}`);
  }
  for (const n of readdirOr(join(process.env.HUTCH_ROOT ?? '/var/tmp/hutch-test-store', 'spare'))) {
    const owner = ownerFromName(n);
    if (owner && !isAlive(owner)) out.push(`spare record ${n}`);
  }
  if (existsSync('/run/netns')) {
    for (const n of readdirSync('/run/netns')) if (/hutch/.test(n)) out.push(`netns ${n}`);
  }
  return out;
}

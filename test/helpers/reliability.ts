// Shared by the reliability and fuzz tests: a private cgroup parent and store per test file,
// views of what hutch holds on the host (cgroups, processes, leases, links, nft elements,
// fds, mounts, namespaces), and a runner for the crash child.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { networkStateDir } from '../../lib/network/index.js';
import { rmdirSubtreeRoot, sandboxCgroupsIn } from './leaks.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CRASH_CHILD = join(ROOT, 'test', 'helpers', 'crash-child.mjs');

/** Every cgroup mount (v1 hierarchies and cgroup2). */
export function cgroupMounts(): string[] {
  const out: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (dash > 0 && (f[dash + 1] === 'cgroup' || f[dash + 1] === 'cgroup2') && f[3] === '/') out.push(f[4]!);
  }
  return out;
}

/**
 * A cgroup parent of this test's own (`/hutch-rel-<tag>-<random>`), set as
 * HUTCH_CGROUP_PARENT for this process and the children it starts, so that `pruneAll` here
 * never sees the sandboxes of other test files running at the same time.
 */
export function privateCgroupParent(tag: string): string {
  const p = `/hutch-rel-${tag}-${randomBytes(3).toString('hex')}`;
  process.env.HUTCH_CGROUP_PARENT = p;
  return p;
}

/** Sandbox cgroup directories under `parent`, in every hierarchy. */
export function cgroupsUnder(parent: string): string[] {
  const out: string[] = [];
  for (const m of cgroupMounts()) {
    const d = m + parent;
    if (!existsSync(d)) continue;
    out.push(...sandboxCgroupsIn(d));
  }
  return out;
}

/** Pids in the sandbox cgroups under `parent`. */
export function pidsUnder(parent: string): number[] {
  const s = new Set<number>();
  for (const d of cgroupsUnder(parent)) {
    try {
      for (const l of readFileSync(`${d}/cgroup.procs`, 'utf8').split('\n')) if (l) s.add(Number(l));
    } catch {}
  }
  return [...s];
}

/** Removes the (empty) parent in every hierarchy. */
export function removeCgroupParent(parent: string): void {
  for (const m of cgroupMounts()) {
    try {
      rmdirSubtreeRoot(m + parent);
    } catch {}
  }
}

/** Direct children of every thread of `pid`. */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const t of readdirSync(`/proc/${pid}/task`)) {
      try {
        for (const c of readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim().split(/\s+/)) if (c) out.push(Number(c));
      } catch {}
    }
  } catch {}
  return out;
}

/** True when the process no longer runs (gone, or a zombie nobody reaped yet). */
export function gone(pid: number): boolean {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return st.slice(st.lastIndexOf(')') + 2).startsWith('Z') || st.slice(st.lastIndexOf(')') + 2).startsWith('X');
  } catch {
    return true;
  }
}

export interface LeaseView {
  file: string;
  slot: string;
  id?: string;
  ownerPid?: number;
}

/** Lease files in the network state dir (empty ones included, with no owner). */
export function leases(): LeaseView[] {
  const dir = networkStateDir();
  let names: string[] = [];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.lease'));
  } catch {
    return [];
  }
  return names.map((n) => {
    const v: LeaseView = { file: join(dir, n), slot: n.slice(0, 8) };
    try {
      const l = JSON.parse(readFileSync(join(dir, n), 'utf8')) as { id: string; ownerPid: number };
      v.id = l.id;
      v.ownerPid = l.ownerPid;
    } catch {}
    return v;
  });
}

export function linkNames(): string[] {
  try {
    return execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' })
      .split('\n')
      .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1])
      .filter((x): x is string => !!x);
  } catch {
    return [];
  }
}

export function nftText(): string {
  try {
    return execFileSync('nft', ['list', 'table', 'inet', 'hutch'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return '';
  }
}

/** A fresh temp store root; `HUTCH_ROOT` for this process when `setEnv`. */
export function tempRoot(tag: string): string {
  return mkdtempSync(join(tmpdir(), `hutch-rel-${tag}-`));
}

export function rmRoot(root: string): void {
  rmSync(root, { recursive: true, force: true });
}

/** Entries of a store's dir (empty when missing). */
export function entries(root: string, ...parts: string[]): string[] {
  try {
    return readdirSync(join(root, ...parts));
  } catch {
    return [];
  }
}

/** Open fds of this process. */
export function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Namespace inodes held by processes: `/proc/<pid>/ns/*` links of every process. */
export function namespaceInodes(): Set<string> {
  // Only this process and its descendants: namespace inode numbers are recycled, so another
  // test file's sandboxes (other workers' children) may carry a number one of ours had.
  const parent = new Map<string, string>();
  const pids = readdirSync('/proc').filter((x) => /^\d+$/.test(x));
  for (const p of pids) {
    try {
      const st = readFileSync(`/proc/${p}/stat`, 'utf8');
      parent.set(p, st.slice(st.lastIndexOf(')') + 2).split(' ')[1]!);
    } catch {}
  }
  const mine = (p: string): boolean => {
    for (let q: string | undefined = p, i = 0; q && i < 64; q = parent.get(q), i++) if (q === String(process.pid)) return true;
    return false;
  };
  const s = new Set<string>();
  for (const p of pids.filter(mine)) {
    try {
      for (const n of readdirSync(`/proc/${p}/ns`)) {
        try {
          s.add(readlinkSync(`/proc/${p}/ns/${n}`));
        } catch {}
      }
    } catch {}
  }
  return s;
}

export function mountCount(): number {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').length;
}

export function rssBytes(): number {
  return process.memoryUsage().rss;
}

/** Bytes under a directory (lstat, no links followed). */
export function duBytes(p: string): number {
  let st;
  try {
    st = statSync(p, { throwIfNoEntry: false });
  } catch {
    return 0;
  }
  if (!st) return 0;
  if (!st.isDirectory()) return st.size;
  let sum = 0;
  for (const n of entries(p)) sum += duBytes(join(p, n));
  return sum;
}

/** Mount points at or under `p` (this mount namespace). */
export function mountsUnder(p: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((mp) => mp === p || mp.startsWith(`${p}/`));
}

/** Loop devices backed by a file under `p` (losetup's view, from sysfs). */
export function loopsUnder(p: string): string[] {
  const out: string[] = [];
  for (const n of readdirSync('/sys/block')) {
    if (!n.startsWith('loop')) continue;
    try {
      const f = readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').trim();
      if (f.startsWith(`${p}/`)) out.push(`${n} ${f}`);
    } catch {
      /* not attached */
    }
  }
  return out;
}

export interface ChildEvent {
  ev: string;
  delay?: number;
  tag?: string;
  kind?: string;
  what?: string;
  n?: number;
  id?: string;
  pid?: number;
  slot?: string | null;
}

/** The crash child, its events as they come, and a way to wait for one. */
export class CrashChild {
  readonly proc: ChildProcess;
  readonly events: ChildEvent[] = [];
  stderr = '';
  private waiters: { pred: (e: ChildEvent) => boolean; resolve: (e: ChildEvent) => void }[] = [];
  readonly exited: Promise<void>;

  constructor(scenario: string, env: NodeJS.ProcessEnv, archive?: string, script = CRASH_CHILD, args: string[] = []) {
    this.proc = spawn(process.execPath, [script, scenario, ...args, ...(archive ? [archive] : [])], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let buf = '';
    this.proc.stdout!.on('data', (b: Buffer) => {
      buf += b.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        let e: ChildEvent;
        try {
          e = JSON.parse(line) as ChildEvent;
        } catch {
          continue;
        }
        this.events.push(e);
        for (const w of this.waiters.filter((x) => x.pred(e))) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.resolve(e);
        }
      }
    });
    this.proc.stderr!.on('data', (b: Buffer) => (this.stderr += b.toString()));
    this.exited = new Promise((r) => this.proc.once('exit', () => r()));
  }

  /** Waits for an event matching `pred` (also one already seen), at most `ms`. */
  wait(pred: (e: ChildEvent) => boolean, ms: number): Promise<ChildEvent> {
    const seen = this.events.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve };
      this.waiters.push(w);
      const t = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`crash child: no such event within ${ms} ms; events ${JSON.stringify(this.events.slice(-5))}; stderr ${this.stderr.slice(-2000)}`));
      }, ms);
      t.unref();
      void this.exited.then(() => {
        clearTimeout(t);
        if (this.waiters.includes(w)) reject(new Error(`crash child exited early; stderr ${this.stderr.slice(-2000)}`));
      });
    });
  }

  sandboxes(): ChildEvent[] {
    return this.events.filter((e) => e.ev === 'sandbox');
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

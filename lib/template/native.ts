/**
 * The host side of a template's native parts: the template addon (socket pairs, fd passing,
 * pidfds), the zygote's helper files, and the pid lookups the host needs.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HutchError, errnoName, type HutchErrorStep } from '../errors.js';
import type { NativeFailure } from '../native.js';
import { findAddon, loadAddon } from '../native-load.js';

export interface HostNative {
  socketPair(): [number, number] | NativeFailure;
  recvFds(fd: number): { data: Buffer; fds: number[] } | null | undefined | NativeFailure;
  sendFds(fd: number, data: Buffer, fds: number[]): number | NativeFailure;
  procFor(pidfd: number): number | NativeFailure;
  pidfdOpen(pid: number): number | NativeFailure;
  pidfdGetfd(pidfd: number, fd: number): number | NativeFailure;
}

function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'binding.gyp'))) return dir;
    dir = dirname(dir);
  }
  throw new HutchError('EUNSUPPORTED', 'cannot find the hutch package root (binding.gyp) for the template helpers; reinstall hutch');
}

/**
 * A template binary: beside the addon this process loads (build/Release in a checkout or a
 * source build), or in templates/ beside it (the package's prebuilds/<platform>-<arch>/, as
 * node-gyp-build picks the addon).
 */
function binary(name: string): string {
  const root = packageRoot();
  const dir = dirname(findAddon(root));
  // prebuilds/<platform>-<arch>/templates/ (out of node-gyp-build's sight), or beside a build's addon.
  const p = [join(dir, 'templates', name), join(dir, name)].find((c) => existsSync(c)) ?? join(dir, name);
  if (!existsSync(p)) {
    throw new HutchError('EUNSUPPORTED', `templates need ${p}, which is missing: in a checkout run npx node-gyp rebuild; an installed package ships it in prebuilds/ (reinstall hutch, or npm rebuild hutch --build-from-source)`, { path: p });
  }
  return p;
}

let hostNative: HostNative | undefined;
/** The template's part of the addon (hutch_template.node), loaded on first use. */
export function tn(): HostNative {
  if (hostNative) return hostNative;
  hostNative = loadAddon<HostNative>(binary('hutch_template.node'), packageRoot());
  return hostNative;
}

/** The zygote's files bound into the template: its helper library and the Python zygote. */
export function helperFiles(): { lib: string; python: string } {
  return { lib: binary('libhutch-zygote.so'), python: join(packageRoot(), 'addon', 'zygote', 'zygote.py') };
}

/** The Node zygote's own files: its script and its addon (which loads the helper library). */
export function nodeZygoteFiles(): { script: string; addon: string } {
  return { script: join(packageRoot(), 'addon', 'zygote', 'zygote.cjs'), addon: binary('hutch_zygote_node.node') };
}

/**
 * The Node zygote's addon is built for one node major version (it gives forks worker threads
 * through node's platform: docs/templates.md, "The Node zygote"). With image 'host' the zygote
 * runs this node: another major is EUNSUPPORTED here, naming the fix. (In another image, the
 * zygote checks its own node at its start.)
 */
export function checkNodeZygoteBuild(): void {
  const { addon } = nodeZygoteFiles();
  const have = Number(process.versions.node.split('.')[0]);
  let built: unknown;
  try {
    built = (createRequire(import.meta.url)(addon) as { nodeMajor?: unknown }).nodeMajor;
  } catch (e) {
    throw new HutchError('EUNSUPPORTED', `zygote 'node': its addon ${addon} does not load in node ${process.version} (${(e as Error).message}); run npm rebuild in hutch's directory with this node`, { path: addon });
  }
  if (built !== have) {
    throw new HutchError('EUNSUPPORTED', `zygote 'node': its addon ${addon} was built for node ${String(built)}, this is node ${process.version}; run npm rebuild in hutch's directory with this node`, { path: addon });
  }
}

/** ESETUP for a fork's failed step. */
export function fail(step: string, errno: number, what: string): HutchError {
  return new HutchError('ESETUP', `template fork failed at ${step}: ${errnoName(errno) ?? errno} (${what})`, { step: step as HutchErrorStep, errno: errnoName(errno) ?? String(errno) });
}

/** The host pid of a process given its pid in the template's pid namespace (NSpid). */
export function hostPidOf(initHostPid: number, innerPid: number): number | null {
  const seen = new Set<number>();
  const walk = (pid: number, depth: number): number | null => {
    if (depth > 4 || seen.has(pid)) return null;
    seen.add(pid);
    let kids: string;
    try {
      kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8');
    } catch {
      return null;
    }
    for (const k of kids.split(' ').filter(Boolean).map(Number)) {
      try {
        const ns = /NSpid:\s*([\d\s]+)/.exec(readFileSync(`/proc/${k}/status`, 'utf8'));
        const last = ns ? Number(ns[1]!.trim().split(/\s+/).pop()) : NaN;
        if (last === innerPid) return k;
      } catch {}
      const r = walk(k, depth + 1);
      if (r !== null) return r;
    }
    return null;
  };
  return walk(initHostPid, 0);
}

/** The pid a pidfd refers to (its fdinfo). */
export function fdinfoPid(fd: number): number {
  const m = /^Pid:\s*(-?\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return m ? Number(m[1]) : -1;
}

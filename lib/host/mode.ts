/**
 * Where hutch runs, decided once per process: the three sources of privilege of API.md's
 * "Where hutch runs".
 *
 * - `root`: host root (euid 0 in the initial user namespace, whose uid_map is the identity of
 *   all 2^32 ids).
 * - `userns-root`: euid 0 in a user namespace that is not the host's (a Kubernetes pod with
 *   `hostUsers: false`, `podman run --userns=auto`, LXC): full capabilities over the ids that
 *   namespace maps, none on the host.
 * - `user`: any other uid (an ordinary user, no capabilities).
 *
 * Nothing else here decides; the planner, the id ranges, the cgroup parent, the store path
 * and the network backend ask `hostMode()`, and `checkHost()` reports it.
 */
import { accessSync, readFileSync } from 'node:fs';

/**
 * Where hutch runs ({@link HostReport.mode}, docs/rootless.md): `root` is host root;
 * `userns-root` is root of a user namespace that is not the host's (a Kubernetes pod with
 * `hostUsers: false`); `user` is an ordinary user. The API is the same in all three.
 */
export type HostMode = 'root' | 'userns-root' | 'user';

/** One line of a uid_map / gid_map: `inside` maps to `outside` for `count` ids. */
export interface IdMapLine {
  inside: number;
  outside: number;
  count: number;
}

/** Parses /proc/<pid>/uid_map text (exported for tests). */
export function parseIdMap(text: string): IdMapLine[] {
  const out: IdMapLine[] = [];
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length !== 3) continue;
    const [inside, outside, count] = f.map(Number) as [number, number, number];
    if ([inside, outside, count].every((n) => Number.isSafeInteger(n) && n >= 0)) out.push({ inside, outside, count });
  }
  return out;
}

/** True when a uid_map is the initial namespace's: every id maps to itself. */
export function isInitialMap(lines: readonly IdMapLine[]): boolean {
  return lines.length === 1 && lines[0]!.inside === 0 && lines[0]!.outside === 0 && lines[0]!.count === 4294967295;
}

/** The mode for a euid and the text of /proc/self/uid_map (pure: tests pass any). */
export function modeOf(euid: number, uidMap: string): HostMode {
  if (euid !== 0) return 'user';
  return isInitialMap(parseIdMap(uidMap)) ? 'root' : 'userns-root';
}

let cached: HostMode | undefined;

/** This process's mode, decided on first use. */
export function hostMode(): HostMode {
  if (cached) return cached;
  let map = '';
  try {
    map = readFileSync('/proc/self/uid_map', 'utf8');
  } catch {}
  cached = modeOf(process.geteuid?.() ?? 0, map);
  return cached;
}

/** The uid_map / gid_map of this process's own user namespace. */
export function ownIdMaps(): { uid: IdMapLine[]; gid: IdMapLine[] } {
  const read = (p: string): IdMapLine[] => {
    try {
      return parseIdMap(readFileSync(p, 'utf8'));
    } catch {
      return [];
    }
  };
  return { uid: read('/proc/self/uid_map'), gid: read('/proc/self/gid_map') };
}

/** access(2) as a boolean: whether this process may `mode` (fs.constants.W_OK, X_OK, ...) the path. */
export function mayAccess(path: string, mode: number): boolean {
  try {
    accessSync(path, mode);
    return true;
  } catch {
    return false;
  }
}

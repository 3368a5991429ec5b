/**
 * Where a sandbox's ids come from, per mode (lib/host/mode.ts), decided once per process:
 *
 * - `host-range` (root): sandbox ids 0..65535 map to an unprivileged host range
 *   (lib/identity.ts), per sandbox where idmapped mounts allow (lib/idrange.ts).
 * - `namespace-range` (userns-root): the ids of the user namespace hutch runs in (a pod with
 *   `hostUsers: false` has 65536). Sandbox id 0 maps to the namespace's id 1, never to the
 *   caller's own root, so a process that escapes a sandbox is not the caller.
 * - `subordinate` (user, with /etc/subuid and /etc/subgid entries and newuidmap/newgidmap): a
 *   holder user namespace is made once per process, its maps written by the setuid helpers
 *   (0 = the caller, 1.. = the subordinate ids). Every sandbox's user namespace is made inside
 *   it (addon/clone.cc's trampoline) and maps sandbox 0.. to holder ids 1..: the sandbox's root
 *   is a subordinate id, never the caller; the helpers run once, not per sandbox.
 * - `single` (user without subordinate ids): one id. Sandbox root is the caller; an image's
 *   other owners are squashed to it at import (every file is the caller's).
 *
 * `checkHost()` reports which applies and how to get a range.
 */
import { execFileSync } from 'node:child_process';
import { constants, readFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import { HutchError, errnoName } from '../errors.js';
import { hostRange, RANGE_SIZE } from '../identity.js';
import { isFailure, native } from '../native.js';
import { hostMode, mayAccess, ownIdMaps, type HostMode } from './mode.js';

export type IdKind = 'host-range' | 'namespace-range' | 'subordinate' | 'single';

export interface IdSource {
  readonly mode: HostMode;
  readonly kind: IdKind;
  /** Outer uid / gid of sandbox id 0: ids of the namespace the maps are written from (the holder's for 'subordinate'). */
  readonly uid: number;
  readonly gid: number;
  /** How many ids a sandbox maps (65536, or fewer where the caller owns fewer). */
  readonly size: number;
  /** The holder user namespace (an fd) that sandboxes are cloned in, or null. */
  readonly userns: number | null;
  /** The map is the caller's one id, written unprivileged: setgroups must be denied first. */
  readonly denySetgroups: boolean;
  /** Outer ids the store's files are given for image id 0 (chown), or null: files stay the caller's (squashed). */
  readonly storeShift: { uid: number; gid: number; size?: number } | null;
  /** Why this kind, and how to get a better one (checkHost). */
  readonly note: string;
  /** 'subordinate': the host ids of holder id 1 (what stat shows for the store's image id 0), else null. */
  readonly holderBase: { uid: number; gid: number } | null;
}

/** Outer ids (storeShift's) as this process sees them in stat: the holder's ids translated to the host's. */
export function seenIds(outer: { uid: number; gid: number }): { uid: number; gid: number } {
  const base = idSource().holderBase;
  return base ? { uid: base.uid + outer.uid - 1, gid: base.gid + outer.gid - 1 } : { uid: outer.uid, gid: outer.gid };
}

/** A subordinate range of /etc/subuid or /etc/subgid for a user (by name or uid). */
export interface SubordinateRange {
  start: number;
  count: number;
}

/** The first range of `who` (names or uid as text) in subuid/subgid text (pure, for tests). */
export function subordinateRange(text: string, who: readonly string[]): SubordinateRange | null {
  for (const line of text.split('\n')) {
    const [name, start, count] = line.trim().split(':');
    if (name === undefined || !who.includes(name)) continue;
    const s = Number(start);
    const c = Number(count);
    if (Number.isSafeInteger(s) && Number.isSafeInteger(c) && s > 0 && c > 0) return { start: s, count: c };
  }
  return null;
}

function readOr(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

function findHelper(name: string): string | null {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':').concat(['/usr/bin', '/usr/sbin', '/bin', '/sbin'])) {
    if (dir && mayAccess(`${dir}/${name}`, constants.X_OK)) return `${dir}/${name}`;
  }
  return null;
}

let cached: IdSource | undefined;

/** This process's id source; the holder namespace is made on first use (subordinate). */
export function idSource(): IdSource {
  return (cached ??= decide());
}

/** What idSource() would pick, without making anything (checkHost before any sandbox). */
export function idSourceKind(): { kind: IdKind; note: string } {
  if (cached) return { kind: cached.kind, note: cached.note };
  const mode = hostMode();
  if (mode === 'root') return { kind: 'host-range', note: 'host root: sandboxes map to unprivileged host ranges' };
  if (mode === 'userns-root') return namespaceKind();
  const sub = subordinate();
  if ('fix' in sub) return { kind: 'single', note: sub.fix };
  return { kind: 'subordinate', note: `subordinate ids ${sub.uid.start}..+${sub.uid.count} (uids) mapped with ${sub.newuidmap}` };
}

function namespaceKind(): { kind: IdKind; note: string } {
  const count = ownIdMaps().uid.reduce((n, l) => n + l.count, 0);
  if (count >= 2) return { kind: 'namespace-range', note: `the ${count} ids of hutch's own user namespace (sandbox root is its id 1)` };
  return { kind: 'single', note: 'hutch\'s user namespace maps one id: images are squashed to it; give the container more ids (podman --userns=auto, Kubernetes hostUsers: false)' };
}

type Sub = { uid: SubordinateRange; gid: SubordinateRange; newuidmap: string; newgidmap: string } | { fix: string };

function subordinate(): Sub {
  const uid = process.getuid?.() ?? 0;
  let name: string | null = null;
  try {
    name = userInfo().username;
  } catch {}
  const who = [String(uid), ...(name ? [name] : [])];
  const u = subordinateRange(readOr('/etc/subuid'), who);
  const g = subordinateRange(readOr('/etc/subgid'), who);
  const how = `add ranges for ${name ?? uid} to /etc/subuid and /etc/subgid (usermod --add-subuids 100000-165535 --add-subgids 100000-165535 ${name ?? uid}) and install newuidmap/newgidmap (apt-get install uidmap)`;
  if (!u || !g) return { fix: `one id (sandbox root is the caller; image owners are squashed): no subordinate ids for this user; to map image owners, ${how}` };
  const newuidmap = findHelper('newuidmap');
  const newgidmap = findHelper('newgidmap');
  if (!newuidmap || !newgidmap) return { fix: `one id (sandbox root is the caller; image owners are squashed): newuidmap/newgidmap are missing; apt-get install uidmap` };
  return { uid: u, gid: g, newuidmap, newgidmap };
}

function decide(): IdSource {
  const mode = hostMode();
  if (mode === 'root') {
    const r = hostRange();
    return { mode, kind: 'host-range', uid: r.uid, gid: r.gid, size: RANGE_SIZE, userns: null, denySetgroups: false, storeShift: { uid: r.uid, gid: r.gid }, note: 'host root: sandboxes map to unprivileged host ranges', holderBase: null };
  }
  if (mode === 'userns-root') {
    const { kind, note } = namespaceKind();
    if (kind === 'namespace-range') {
      const count = Math.min(...[ownIdMaps().uid, ownIdMaps().gid].map((m) => m.reduce((n, l) => n + l.count, 0)));
      const size = Math.min(RANGE_SIZE, count - 1);
      return { mode, kind, uid: 1, gid: 1, size, userns: null, denySetgroups: false, storeShift: { uid: 1, gid: 1, size }, note, holderBase: null };
    }
    return { mode, kind, uid: 0, gid: 0, size: 1, userns: null, denySetgroups: false, storeShift: null, note, holderBase: null };
  }
  const sub = subordinate();
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  if ('fix' in sub) return { mode, kind: 'single', uid, gid, size: 1, userns: null, denySetgroups: true, storeShift: null, note: sub.fix, holderBase: null };
  const size = Math.min(RANGE_SIZE, sub.uid.count, sub.gid.count);
  const userns = makeHolder(sub, uid, gid);
  native().setOwnerUserns(userns);
  return {
    mode,
    kind: 'subordinate',
    uid: 1,
    gid: 1,
    size,
    userns,
    denySetgroups: false,
    storeShift: { uid: 1, gid: 1, size },
    note: `subordinate ids ${sub.uid.start}..+${sub.uid.count} (uids) mapped with ${sub.newuidmap}`,
    holderBase: { uid: sub.uid.start, gid: sub.gid.start },
  };
}

/** The holder user namespace: 0 = the caller, 1..count = its subordinate ids, written by newuidmap/newgidmap. */
function makeHolder(sub: Extract<Sub, { uid: SubordinateRange }>, uid: number, gid: number): number {
  let failure: HutchError | null = null;
  const fd = native().makeUserns((pid: number) => {
    for (const [tool, self, range] of [
      [sub.newuidmap, uid, sub.uid],
      [sub.newgidmap, gid, sub.gid],
    ] as const) {
      try {
        execFileSync(tool, [String(pid), '0', String(self), '1', '1', String(range.start), String(range.count)], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
      } catch (e) {
        const err = String((e as { stderr?: Buffer }).stderr ?? (e as Error).message).trim();
        failure = new HutchError(
          'EUNSUPPORTED',
          `the user namespace for subordinate ids: ${tool} ${pid} 0 ${self} 1 1 ${range.start} ${range.count} failed: ${err}; check this user's lines in /etc/subuid and /etc/subgid and that ${tool} is setuid root (apt-get install --reinstall uidmap)`,
          { path: tool },
        );
        return 1;
      }
    }
    return 0;
  });
  if (failure) throw failure;
  if (isFailure(fd)) throw new HutchError('ESETUP', `the user namespace for subordinate ids: ${errnoName(fd.errno)}`, { step: 'id_map', errno: errnoName(fd.errno) });
  return fd;
}

/** The clone's map fields for a sandbox of this source (ids: the range it leased, outer ids). */
export function cloneMaps(ids: { uid: number; gid: number }, size: number): { uidMap: string; gidMap: string; userns: number; denySetgroups: boolean } {
  const src = idSource();
  return { uidMap: `0 ${ids.uid} ${size}\n`, gidMap: `0 ${ids.gid} ${size}\n`, userns: src.userns ?? -1, denySetgroups: src.denySetgroups };
}

/**
 * Removes `parent/name` and everything beneath it, never through a symlink; where the store's
 * files belong to the holder namespace's ids, inside it (the caller could not unlink them).
 */
export function removeStoreTree(parent: string, name: string): void {
  const userns = hostMode() === 'user' && cached ? (cached.userns ?? -1) : -1;
  const r = native().removeTree(parent, name, userns);
  if (isFailure(r)) throw new HutchError('ESTORE', `could not remove ${parent}/${name}: ${errnoName(r.errno)}`, { errno: errnoName(r.errno), path: `${parent}/${name}` });
}

/** chown of a path hutch made (never followed when a symlink), inside the holder namespace when its ids are that namespace's. */
export function chownAsOwner(path: string, uid: number, gid: number): void {
  const src = idSource();
  const r = native().chownPath(path, uid, gid, src.kind === 'subordinate' ? (src.userns ?? -1) : -1);
  if (isFailure(r)) throw new HutchError('ESETUP', `chown ${path} to ${uid}:${gid}: ${errnoName(r.errno)}`, { errno: errnoName(r.errno), path });
}

/**
 * Lease files: the one way hutch claims a name on the host that several processes may want at
 * once (a store lock, an id range slot, an address slot, a sandbox id). A lease is a file
 * created with O_EXCL (whoever creates it holds it) whose text names its owner (pid and start
 * time, lib/host/liveness.ts), written whole before it appears (createLease). A lease whose
 * owner is gone is stale: the next taker or prune removes it. A lease that is empty or
 * unreadable (written by an older hutch, whose writer was killed between the create and the
 * write) counts as stale once it is older than a grace period.
 */
import { closeSync, ftruncateSync, linkSync, openSync, readdirSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { randomHex } from '../random.js';
import { basename, dirname, join } from 'node:path';
import { isAlive, ownerTag, type Owner } from './liveness.js';

/**
 * Creates `file` exclusively holding `text`, whole or not at all: the text is written to a
 * temp file beside it (`.<name>.<pid>-<start>-<random>`), which is then hard-linked to `file`
 * (link(2) fails with EEXIST when the lease is held) and removed. So a lease is never seen
 * empty or torn, even when its taker is killed half-way; a temp file a killed taker left
 * names its owner and goes with `pruneLeaseTemps`. The temp file is a spare that an earlier
 * `retireLease` in the same directory kept, when there is one (its text overwritten in place):
 * no inode is allocated.
 * @returns false when the file exists (someone holds the lease); other errors are thrown as they are.
 */
export function createLease(file: string, text: string): boolean {
  const dir = dirname(file);
  let tmp = takeSpare(dir, text);
  if (tmp === undefined) {
    tmp = tempName(dir, basename(file));
    writeFileSync(tmp, text, { flag: 'wx', mode: 0o600 });
  }
  try {
    linkSync(tmp, file);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  } finally {
    try {
      unlinkSync(tmp);
    } catch {}
  }
}

/** A temp file's name in `dir` for lease `name` (the pattern pruneLeaseTemps knows). */
function tempName(dir: string, name: string): string {
  return join(dir, `.${name}.${ownerTag()}-${randomHex(4)}`);
}

/**
 * Spare lease files of this process, by directory: the inodes of retired leases, renamed to
 * temp names, for the next createLease there. On ext4 (the host state dir is on disk where /run
 * is not a tmpfs) an inode freed and another allocated on every sandbox start cost a scan past
 * every recently freed inode of the group (find_inode_bit), the freed block's discard and the
 * inode's eviction; a rename and an overwrite cost none of it. A spare is this process's own
 * (its name carries the owner, so a prune removes it once the process is dead, as it does a
 * killed taker's temp file), holds the text of a lease that has ended, and is never read as a
 * lease (leases are listed without dot names). Cleared in a forked child, which must not
 * write the parent's files.
 */
/** What removes each kind of this process's spares (perProcessLists): dropSpares and the exit run them. */
const spareDroppers: (() => void)[] = [];
const spareList = perProcessLists((tmp) => unlinkSync(tmp));
/** Spares kept per directory: about as many as sandboxes end between two starts. */
export const MAX_SPARE_LEASES = 8;

/**
 * Removes this process's spare files of every kind now (what its exit does); the next sandboxes
 * make theirs anew. For a process that is about to be killed rather than exit (a test runner's
 * worker). @internal
 */
export function dropSpares(): void {
  for (const d of spareDroppers) d();
}

/**
 * Lists of paths by key that belong to this process: a forked child starts with none (the
 * parent's spare files are the parent's). What is in them when the process exits is removed
 * with `remove` (a process that made one sandbox, as the CLI does, would otherwise leave one
 * spare of each kind behind for every run, until a prune); a killed process's are a prune's.
 * @returns the list for a key, made empty on first use; null once the process is exiting (what
 * ends after that, in a later exit handler, is removed, not kept).
 */
export function perProcessLists(remove: (path: string) => void): (key: string) => string[] | null {
  const lists = new Map<string, string[]>();
  let pid = -1;
  let exited = false;
  const removeAll = (): void => {
    if (process.pid !== pid) return; // a forked child's copy: the parent's files
    for (const l of lists.values()) {
      for (const path of l.splice(0)) {
        try {
          remove(path);
        } catch {
          /* gone already, or a prune's to find */
        }
      }
    }
  };
  spareDroppers.push(removeAll);
  return (key) => {
    if (pid !== process.pid) {
      lists.clear();
      pid = process.pid;
      exited = false;
      process.on('exit', () => {
        exited = true;
        removeAll();
      });
    }
    if (exited) return null;
    let l = lists.get(key);
    if (!l) lists.set(key, (l = []));
    return l;
  };
}

/** A spare of `dir` holding exactly `text` now, or undefined when there is none (or it went). */
function takeSpare(dir: string, text: string): string | undefined {
  const list = spareList(dir) ?? [];
  for (let tmp = list.pop(); tmp !== undefined; tmp = list.pop()) {
    let fd = -1;
    try {
      fd = openSync(tmp, 'r+');
      const n = writeSync(fd, text, 0);
      if (n === Buffer.byteLength(text)) {
        ftruncateSync(fd, n);
        return tmp;
      }
    } catch {
      /* gone (a prune that judged this process dead cannot have: it is alive), or unwritable */
    } finally {
      if (fd >= 0) closeSync(fd);
    }
    try {
      unlinkSync(tmp);
    } catch {}
  }
  return undefined;
}

/**
 * Ends a lease this process holds (never another holder's: the caller knows it is its own) by
 * renaming it to a spare for the next createLease in its directory, or removes it when enough
 * spares are kept. One already gone is fine; other errors are thrown.
 */
export function retireLease(file: string): void {
  const dir = dirname(file);
  const list = spareList(dir);
  if (list === null || list.length >= MAX_SPARE_LEASES) return removeLease(file);
  const tmp = tempName(dir, basename(file));
  try {
    renameSync(file, tmp);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    return;
  }
  list.push(tmp);
}

/** How many spares this process keeps in `dir` (tests). @internal */
export function spareLeaseCount(dir: string): number {
  return spareList(dir)?.length ?? MAX_SPARE_LEASES;
}

/** Removes the temp files (`.<name>.<pid>-<start>-<random>`) that takers killed inside createLease left in `dir`. */
export function pruneLeaseTemps(dir: string): number {
  let n = 0;
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    return 0;
  }
  for (const name of names) {
    const m = /^\.[^/]*\.(\d+)-(\d+)-[0-9a-f]{8}$/.exec(name);
    if (!m || isAlive({ pid: Number(m[1]), start: m[2]! })) continue;
    try {
      unlinkSync(join(dir, name));
      n++;
    } catch {}
  }
  return n;
}

/** The lease's text, or undefined when it is gone. */
export function readLeaseText(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

/** Age of the lease file in ms (since its last write), or undefined when it is gone. */
export function leaseAge(file: string): number | undefined {
  try {
    return Date.now() - statSync(file).mtimeMs;
  } catch {
    return undefined;
  }
}

/**
 * True when the lease is stale: its owner (as `ownerOf` reads it from the text) is gone, or the
 * text names no owner and the file is older than `tornGraceMs`. A lease that is gone is not stale.
 */
export function leaseIsStale(file: string, ownerOf: (text: string) => Owner | undefined, tornGraceMs: number, text = readLeaseText(file)): boolean {
  if (text === undefined) return false;
  let owner: Owner | undefined;
  try {
    owner = text.length > 0 ? ownerOf(text) : undefined;
  } catch {
    owner = undefined;
  }
  if (owner) return !isAlive(owner);
  const age = leaseAge(file);
  return age !== undefined && age >= tornGraceMs;
}

/**
 * Removes the lease when it is stale, and only if it is still the same lease (a taker may have
 * replaced it meanwhile). @returns true when it was removed.
 */
export function breakIfStale(file: string, ownerOf: (text: string) => Owner | undefined, tornGraceMs: number): boolean {
  const text = readLeaseText(file);
  if (text === undefined || !leaseIsStale(file, ownerOf, tornGraceMs, text)) return false;
  try {
    if (readFileSync(file, 'utf8') !== text) return false;
    unlinkSync(file);
    return true;
  } catch {
    return false;
  }
}

/** Removes a lease; one already gone is fine, other errors are thrown. */
export function removeLease(file: string): void {
  try {
    unlinkSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

/** Removes the lease only while it still holds `text` (ours): never another holder's. */
export function releaseLease(file: string, text: string): void {
  try {
    if (readFileSync(file, 'utf8') === text) unlinkSync(file);
  } catch {
    /* gone already */
  }
}

/** Reads `{pid, start}` JSON lease text. */
export function jsonOwner(text: string): Owner | undefined {
  const v = JSON.parse(text) as Record<string, unknown>;
  return typeof v.pid === 'number' && typeof v.start === 'string' ? { pid: v.pid, start: v.start } : undefined;
}

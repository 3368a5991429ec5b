/**
 * Lease files: the one way hutch claims a name on the host that several processes may want at
 * once (a store lock, an id range slot, an address slot, a sandbox id). A lease is a file
 * created with O_EXCL (whoever creates it holds it) whose text names its owner (pid and start
 * time, lib/host/liveness.ts). A lease whose owner is gone is stale: the next taker or prune
 * removes it. A lease still empty or unreadable is one whose writer was killed between the
 * create and the write (or is writing it right now): it counts as stale only once it is older
 * than a grace period.
 */
import { closeSync, openSync, readFileSync, statSync, unlinkSync, writeSync, constants } from 'node:fs';
import { isAlive, type Owner } from './liveness.js';

/**
 * Creates `file` exclusively and writes `text` into it.
 * @returns false when the file exists (someone holds the lease); other errors are thrown as they are.
 */
export function createLease(file: string, text: string): boolean {
  let fd: number;
  try {
    fd = openSync(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
  try {
    writeSync(fd, text);
  } catch (e) {
    // A full disk: nothing half-written stays claimed.
    closeSync(fd);
    try {
      unlinkSync(file);
    } catch {}
    throw e;
  }
  closeSync(fd);
  return true;
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

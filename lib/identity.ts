import { readFileSync } from 'node:fs';
import { invalid } from './errors.js';

/** The host id range that a sandbox's ids 0..65535 map to. */
export interface IdRange {
  /** First host uid (sandbox uid 0). */
  uid: number;
  /** First host gid (sandbox gid 0). */
  gid: number;
  /** Number of ids mapped (65536). */
  size: number;
}

/** Default host range when /etc/subuid has no `hutch` entry: high, above any normal user. */
export const DEFAULT_RANGE_START = 0x40000000; // 1073741824
export const RANGE_SIZE = 65536;

function subidStart(file: string, name: string): number | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  for (const line of text.split('\n')) {
    const [who, start, count] = line.trim().split(':');
    if (who === name && Number(count) >= RANGE_SIZE && Number.isSafeInteger(Number(start)) && Number(start) > 0) {
      return Number(start);
    }
  }
  return undefined;
}

let cached: IdRange | undefined;

/**
 * The host range of hutch's sandboxes: the `hutch` entry of /etc/subuid and /etc/subgid when
 * present (at least 65536 ids), else 1073741824..+65536 — never 0, so a process that escapes
 * its namespaces is an unprivileged nobody on the host.
 */
export function hostRange(): IdRange {
  if (cached) return cached;
  const uid = subidStart('/etc/subuid', 'hutch') ?? DEFAULT_RANGE_START;
  const gid = subidStart('/etc/subgid', 'hutch') ?? DEFAULT_RANGE_START;
  cached = { uid, gid, size: RANGE_SIZE };
  return cached;
}

/** Parses `user` (a uid, or 'uid:gid') into numbers inside the sandbox. */
export function parseUser(option: string, value: number | string): { uid: number; gid: number } {
  const check = (n: number) => Number.isInteger(n) && n >= 0 && n < RANGE_SIZE;
  if (typeof value === 'number') {
    if (!check(value)) throw invalid(option, `a uid from 0 to ${RANGE_SIZE - 1}, or 'uid:gid'`, value);
    return { uid: value, gid: value };
  }
  if (typeof value === 'string') {
    const m = /^(\d+)(?::(\d+))?$/.exec(value.trim());
    if (m) {
      const uid = Number(m[1]);
      const gid = m[2] === undefined ? uid : Number(m[2]);
      if (check(uid) && check(gid)) return { uid, gid };
    }
  }
  throw invalid(option, `a uid from 0 to ${RANGE_SIZE - 1}, or 'uid:gid' with numbers`, value);
}

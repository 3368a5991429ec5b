/**
 * Liveness: is the process that wrote a record still the same process? The one check every
 * piece of host state uses (owner records, store locks, id and address leases, sandbox
 * leases, forwarding records): a pid plus its start time (field 22 of /proc/<pid>/stat, in
 * clock ticks since boot), so a recycled pid is never mistaken for the process that wrote it.
 */
import { readFileSync } from 'node:fs';

/** A process as recorded on disk. */
export interface Owner {
  pid: number;
  start: string;
}

/** Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or undefined when the process is gone. */
export function processStart(pid: number | 'self'): string | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // comm (field 2) may hold spaces and parentheses: the fields we want follow the last ')'.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]; // rest[0] is field 3
}

let self: Owner | undefined;

/** This process. */
export function selfOwner(): Owner {
  if (!self || self.pid !== process.pid) self = { pid: process.pid, start: processStart(process.pid) ?? '0' };
  return self;
}

/** True while the recorded process still runs (same pid and same start time). */
export function isAlive(owner: Owner | undefined): boolean {
  if (!owner || !Number.isInteger(owner.pid) || owner.pid <= 0) return false;
  const start = processStart(owner.pid);
  return start !== undefined && start === String(owner.start);
}

/** Parses an owner record, or undefined when it is not one. */
export function parseOwner(value: unknown): Owner | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const v = value as Record<string, unknown>;
  if (typeof v.pid !== 'number' || typeof v.start !== 'string') return undefined;
  return { pid: v.pid, start: v.start };
}

/** Owner encoded in a name: `<prefix>-<pid>-<start>-<random>`. */
export function ownerTag(): string {
  const o = selfOwner();
  return `${o.pid}-${o.start}`;
}

/** Decodes `<prefix>-<pid>-<start>-...` back into an owner. */
export function ownerFromName(name: string): Owner | undefined {
  const m = /^[a-z]+-(\d+)-(\d+)-/.exec(name);
  return m ? { pid: Number(m[1]), start: m[2]! } : undefined;
}

/**
 * Small synchronous helpers over cgroupfs shared by the v1 and v2 drivers: write a control
 * file with a useful error, read keyed files, kill and wait for the tasks of a cgroup,
 * remove a directory. Every failure keeps the kernel's error as `cause`.
 */
import { mkdirSync, readdirSync, rmdirSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { HutchError } from '../errors.js';
import { native } from '../native.js';

/** A host-side cgroup failure: code ESETUP, step 'cgroup', the kernel's errno, the path, and a hint when we know one. */
export function cgroupFailure(what: string, path: string, cause: unknown, hint?: string): HutchError {
  const e = cause as NodeJS.ErrnoException | undefined;
  const errno = typeof e?.code === 'string' ? e.code : undefined;
  const msg = `cgroup ${what} (${path}): ${errno ?? (e instanceof Error ? e.message : String(cause))}${hint ? `; ${hint}` : ''}`;
  return new HutchError('ESETUP', msg, { step: 'cgroup', errno, path, hint, cause });
}

export function errnoOf(e: unknown): string | undefined {
  const c = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof c === 'string' ? c : undefined;
}

/** Hints for errnos of mkdir/write in cgroupfs, by errno. */
export function hintFor(errno: string | undefined, file: string): string | undefined {
  switch (errno) {
    case 'EROFS':
    case 'EACCES':
    case 'EPERM':
      return 'the cgroup filesystem is not writable here (in a container, ask for a delegated cgroup, e.g. a writable /sys/fs/cgroup); or set HUTCH_CGROUP_PARENT to a cgroup this process may create children in';
    case 'ENOSPC':
      return file === 'mkdir' ? 'cgroup.max.descendants or cgroup.max.depth of an ancestor is reached' : undefined;
    default:
      return undefined;
  }
}

const ERRNO_NAMES = new Map(Object.entries(osConstants.errno).map(([name, n]) => [n, name]));

/** An Error shaped like Node's fs errors (code = errno name) from a native -errno. */
function errnoError(neg: number, syscall: string, path: string): NodeJS.ErrnoException {
  const code = ERRNO_NAMES.get(-neg) ?? `E${-neg}`;
  return Object.assign(new Error(`${code}: ${syscall} '${path}'`), { code, errno: neg, syscall, path });
}

/**
 * Writes `value` to a cgroup control file (open, one write, close: what the kernel expects).
 * Through the addon: this and readControl sit on every exec, where Node's fs calls cost
 * several times the syscalls.
 */
export function writeControl(dir: string, file: string, value: string, hint?: (errno: string | undefined) => string | undefined): void {
  const path = `${dir}/${file}`;
  const r = native().writeSmall(path, value);
  if (r < 0) {
    const e = errnoError(r, 'write', path);
    throw cgroupFailure(`write "${value.trim()}" to ${file}`, path, e, hint?.(e.code) ?? hintFor(e.code, file));
  }
}

/** Reads a control file; null when it does not exist. */
export function readControl(path: string): string | null {
  const r = native().readSmall(path);
  if (typeof r === 'string') return r;
  if (r === -osConstants.errno.ENOENT || r === -osConstants.errno.ENODEV) return null;
  throw errnoError(r, 'read', path);
}

/** "key value" lines (memory.events, cpu.stat, memory.oom_control) as a map. */
export function readKeyed(path: string): Map<string, number> {
  const out = new Map<string, number>();
  const text = readControl(path);
  if (text === null) return out;
  for (const line of text.split('\n')) {
    const [k, v] = line.trim().split(/\s+/);
    if (k && v !== undefined) out.set(k, Number(v));
  }
  return out;
}

/** A number file ('123\n' or 'max'); 0 when absent, Infinity for 'max'. */
export function readNumber(path: string): number {
  const t = readControl(path);
  if (t === null) return 0;
  const s = t.trim();
  return s === 'max' ? Infinity : Number(s) || 0;
}

/** Pids listed in a cgroup.procs file (empty when the file or cgroup is gone). */
export function readPids(procsFile: string): number[] {
  const t = readControl(procsFile);
  if (t === null) return [];
  return t.split('\n').filter(Boolean).map(Number);
}

/**
 * The largest VmHWM (a process's resident set high-water mark) of the tasks listed in
 * `procsFile`, in bytes; 0 when none can be read (a task may end between the list and the read).
 */
export function maxVmHwm(procsFile: string): number {
  let max = 0;
  for (const pid of readPids(procsFile)) {
    const t = native().readSmall(`/proc/${pid}/status`);
    if (typeof t !== 'string') continue;
    const m = /^VmHWM:\s+(\d+) kB$/m.exec(t);
    if (m) max = Math.max(max, Number(m[1]) * 1024);
  }
  return max;
}

/**
 * SIGKILLs every process listed in `procsFile`. There is a window between reading a pid
 * and killing it; the pid cannot be reused by an unrelated process while it is still
 * listed (it is not reaped yet unless it has already left the cgroup), which is why the
 * callers loop until the cgroup is empty rather than trusting one pass.
 */
export function killListed(procsFile: string): number {
  let n = 0;
  for (const pid of readPids(procsFile)) {
    try {
      process.kill(pid, 'SIGKILL');
      n++;
    } catch (e) {
      if (errnoOf(e) !== 'ESRCH') throw cgroupFailure(`kill pid ${pid}`, procsFile, e);
    }
  }
  return n;
}

/** mkdir that tolerates EEXIST (for hutch's own subtree roots); returns whether it created the directory. */
export function mkdirOwn(path: string): boolean {
  try {
    mkdirSync(path);
    return true;
  } catch (e) {
    if (errnoOf(e) === 'EEXIST') return false;
    throw cgroupFailure('mkdir', path, e, errnoOf(e) === 'ENOENT' ? 'its parent cgroup does not exist' : hintFor(errnoOf(e), 'mkdir'));
  }
}

/** hutch's subtree roots that this process made: removed at exit when they are empty. */
const madeRoots: string[] = [];

/**
 * Makes hutch's subtree root at `path` when it is missing. One this process made is removed
 * when the process exits, if no sandbox cgroup is left in it (rmdir refuses otherwise, and a
 * root in use by another process stays; that process makes it again if it must). One that
 * was there already is never touched: it may not be hutch's.
 */
export function mkdirSubtreeRoot(path: string): void {
  if (!mkdirOwn(path)) return;
  if (madeRoots.length === 0) process.on('exit', () => void madeRoots.splice(0).reverse().forEach((r) => tryRmdir(r)));
  madeRoots.push(path);
}

/** rmdir that treats a missing directory as done; returns the error code on failure (EBUSY while tasks remain). */
export function tryRmdir(path: string): string | undefined {
  try {
    rmdirSync(path);
    return undefined;
  } catch (e) {
    const errno = errnoOf(e);
    return errno === 'ENOENT' ? undefined : (errno ?? 'EIO');
  }
}

/** Child directory names of `dir` (none when it is missing). */
export function subdirs(dir: string): string[] {
  try {
    return readdirSync(dir, { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .map((d) => d.name);
  } catch {
    return [];
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** How long destroy() waits for a killed cgroup to empty before giving up. */
export const DESTROY_WAIT_MS = 10_000;

/**
 * Polls `isEmpty` with a growing delay (0.5 ms up to 20 ms) until it holds or `boundMs`
 * passes, calling `kill` again each round (a task may have forked between the kill and
 * its death). Returns whether it emptied.
 */
export async function killAndWait(kill: () => void, isEmpty: () => boolean, boundMs = DESTROY_WAIT_MS): Promise<boolean> {
  const deadline = Date.now() + boundMs;
  let delay = 0.5;
  for (;;) {
    // Empty already (init ended, or nothing ever joined): no kill needed, the common case.
    if (isEmpty()) return true;
    kill();
    if (isEmpty()) return true;
    if (Date.now() > deadline) return false;
    await sleep(delay);
    delay = Math.min(delay * 2, 20);
  }
}

/** Valid sandbox ids: they become directory names under hutch's subtree. */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** Files in a running sandbox: writeFile/readFile through an fd opened beneath its root (addon/rootio.cc). */
import { idSource } from '../host/ids.js';
import { closeSync, constants as fsc, readSync, writeSync } from 'node:fs';
import { HutchError, errnoName, invalid } from '../errors.js';
import { isFailure, native } from '../native.js';
import { setupError } from '../setup-errors.js';
import { checkInsidePath } from '../options.js';
import type { SandboxCore } from './core.js';

/**
 * Opens `p` beneath the root of host process `pid` (a sandbox's init, or a template fork's
 * task before its code runs) with the sandbox root's ids `ids` (addon/rootio.cc).
 * `sandbox` names it in errors.
 */
function openInRootOf(pid: number, ids: { uid: number; gid: number }, sandbox: string, p: string, flags: number, mode: number): number {
  const fd = native().openInRoot(pid, p, flags, mode, ids.uid, ids.gid, idSource().userns ?? -1);
  if (isFailure(fd)) {
    // A missing file is what fs users expect as ENOENT, not a setup failure (issue 14).
    if (errnoName(fd.errno) === 'ENOENT') {
      throw new HutchError('ENOENT', `no such file or directory in sandbox ${sandbox}: ${p}`, { step: 'open', errno: 'ENOENT', path: p, hint: 'create it first (writeFile, exec), or check the path' });
    }
    throw setupError({ step: 'open', errno: fd.errno, path: p });
  }
  return fd;
}

function openInside(core: SandboxCore, p: string, flags: number, mode: number): number {
  if (core.state === 'destroyed') throw core.gone();
  return openInRootOf(core.pid, core.ids, core.id, p, flags, mode);
}

/** Writes `data` to `p` (created or truncated, `mode`) beneath the root of host process `pid`, as {@link openInRootOf}. */
export function writeInRootOf(pid: number, ids: { uid: number; gid: number }, sandbox: string, p: string, data: Uint8Array, mode = 0o644): void {
  const fd = openInRootOf(pid, ids, sandbox, p, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_TRUNC, mode);
  try {
    let off = 0;
    while (off < data.length) off += writeSync(fd, data, off);
  } finally {
    closeSync(fd);
  }
}

export function writeInside(core: SandboxCore, path: string, data: string | Uint8Array, options?: { mode?: number }): void {
  const p = checkInsidePath('path', path);
  const mode = options?.mode ?? 0o644;
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw invalid('mode', 'a file mode such as 0o644', mode);
  if (core.state === 'destroyed') throw core.gone();
  writeInRootOf(core.pid, core.ids, core.id, p, typeof data === 'string' ? Buffer.from(data) : data, mode);
}

export function readInside(core: SandboxCore, path: string): Buffer {
  const p = checkInsidePath('path', path);
  const fd = openInside(core, p, fsc.O_RDONLY, 0);
  try {
    const chunks: Buffer[] = [];
    for (;;) {
      const b = Buffer.allocUnsafe(65536);
      const k = readSync(fd, b);
      if (k === 0) break;
      chunks.push(b.subarray(0, k));
    }
    return Buffer.concat(chunks);
  } finally {
    closeSync(fd);
  }
}

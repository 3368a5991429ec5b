/**
 * Finds and loads hutch's two binaries: the addon (`hutch.node`) and the static init exec'd as
 * PID 1 of every sandbox. node-gyp-build picks the file (a source build in build/Release or
 * build/Debug first, then the package's prebuilds/<platform>-<arch>/ matching this host's
 * libc); the init is the `hutch-init` next to it. Every way this can fail (no binary for this
 * platform, a binary of another architecture, a glibc older than the binary needs, a truncated
 * or corrupt file, a dynamic init) is a HutchError naming the file, this platform and the fix;
 * the dynamic loader's own message is kept as the cause.
 */
import { closeSync, existsSync, openSync, readSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { HutchError } from './errors.js';

/** ELF e_machine of each Node arch hutch can run on. */
const MACHINES: Record<string, { machine: number; name: string }> = {
  x64: { machine: 62, name: 'x86-64' },
  arm64: { machine: 183, name: 'aarch64' },
};
const MACHINE_NAMES: Record<number, string> = { 3: 'x86 (32-bit)', 40: 'arm (32-bit)', 62: 'x86-64', 183: 'aarch64', 243: 'riscv', 21: 'ppc64', 22: 's390x' };

/** This host as the messages name it: `linux-x64, glibc 2.36`. */
export function platformName(): string {
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  const libc = header?.glibcVersionRuntime ? `glibc ${header.glibcVersionRuntime}` : 'musl or another non-glibc libc';
  return `${process.platform}-${process.arch}, ${libc}`;
}

function rebuildFix(root: string): string {
  if (existsSync(join(root, 'tsconfig.json'))) return `rebuild this checkout's binaries: cd ${root} && npx node-gyp rebuild (needs g++, gcc, make, python3)`;
  return (
    `reinstall hutch (npm install hutch) on linux-x64 or linux-arm64 with glibc 2.34 or newer, where it ships prebuilt binaries; ` +
    `or build them from source in the project that installed hutch: npm rebuild hutch --build-from-source ` +
    `(needs g++, gcc with a static libc, make, python3 and node-addon-api)`
  );
}

/** The first 4 KiB of a file, or why it cannot be read. */
function head(file: string): Buffer | string {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
  try {
    const b = Buffer.alloc(4096);
    return b.subarray(0, readSync(fd, b, 0, b.length, 0));
  } finally {
    closeSync(fd);
  }
}

/**
 * Why `file` is not a 64-bit little-endian ELF `kind` for this machine, or undefined when it is.
 * `kind` 'addon' wants a shared object; 'init' wants a static executable (no PT_INTERP).
 */
export function elfMismatch(file: string, kind: 'addon' | 'init'): string | undefined {
  const b = head(file);
  if (typeof b === 'string') return `it cannot be opened (${b})`;
  if (b.length < 64 || b.toString('latin1', 0, 4) !== '\x7fELF') return `it is not an ELF file (${b.length < 64 ? `only ${b.length} bytes` : 'no ELF magic'}: truncated or corrupt)`;
  if (b[4] !== 2 || b[5] !== 1) return 'it is not a 64-bit little-endian ELF file';
  const want = MACHINES[process.arch];
  const machine = b.readUInt16LE(18);
  if (!want) return `hutch has no binaries for ${process.arch}`;
  if (machine !== want.machine) return `it was built for ${MACHINE_NAMES[machine] ?? `ELF machine ${machine}`}, and this machine is ${want.name}`;
  const type = b.readUInt16LE(16);
  if (kind === 'addon' && type !== 3) return 'it is not a shared object';
  if (kind === 'init') {
    if (type !== 2 && type !== 3) return 'it is not an executable';
    const phoff = Number(b.readBigUInt64LE(32));
    const phentsize = b.readUInt16LE(54);
    const phnum = b.readUInt16LE(56);
    for (let i = 0; i < phnum; i++) {
      const at = phoff + i * phentsize;
      if (at + 4 > b.length) return 'its program headers are cut off (truncated or corrupt)';
      if (b.readUInt32LE(at) === 3) return 'it is dynamically linked (the init must be static: it runs inside images without this libc)';
    }
  }
  return undefined;
}

/** What the dynamic loader's refusal of `file` means, in words. */
function dlopenReason(message: string): string {
  const glibc = /version `GLIBC_([0-9.]+)' not found/.exec(message);
  if (glibc) return `it needs glibc ${glibc[1]} or newer, and this host's is older`;
  if (/wrong ELF class|ELF file OS ABI|machine|architecture/i.test(message)) return 'it was built for another architecture';
  if (/cannot open shared object file|not found/i.test(message)) return `a library it needs is missing (${message.split(':').slice(-2).join(':').trim()})`;
  return 'the dynamic loader refused it (a corrupt or incompatible file)';
}

/** Where the addon is; a HutchError when there is none for this host. */
export function findAddon(root: string): string {
  const req = createRequire(import.meta.url);
  try {
    return (req('node-gyp-build') as { resolve(dir: string): string }).resolve(root);
  } catch (e) {
    throw new HutchError(
      'EUNSUPPORTED',
      `no hutch binary for this platform (${platformName()}): none in ${join(root, 'build', 'Release')} and none matching in ${join(root, 'prebuilds')}. Fix: ${rebuildFix(root)}`,
      { path: root, hint: process.platform === 'linux' ? rebuildFix(root) : 'hutch runs on Linux only', cause: e },
    );
  }
}

/** The addon at `file`, loaded; a HutchError naming the file, the platform and the fix on any failure. */
export function loadAddon<T>(file: string, root: string): T {
  const bad = (why: string, cause?: unknown): HutchError =>
    new HutchError('EUNSUPPORTED', `the hutch addon ${file} cannot be loaded on this platform (${platformName()}): ${why}. Fix: ${rebuildFix(root)}`, {
      path: file,
      hint: rebuildFix(root),
      cause,
    });
  const mismatch = elfMismatch(file, 'addon');
  if (mismatch) throw bad(mismatch);
  try {
    return createRequire(import.meta.url)(file) as T;
  } catch (e) {
    throw bad(dlopenReason(e instanceof Error ? e.message : String(e)), e);
  }
}

/** The init next to the addon at `addonFile`, checked; a HutchError when it is missing or not for this machine. */
export function findInit(addonFile: string, root: string): string {
  const init = join(dirname(addonFile), 'hutch-init');
  const why = existsSync(init) ? elfMismatch(init, 'init') : 'it is missing';
  if (why) {
    throw new HutchError('EUNSUPPORTED', `the hutch init ${init} cannot be used on this platform (${platformName()}): ${why}. Fix: ${rebuildFix(root)}`, {
      path: init,
      hint: rebuildFix(root),
    });
  }
  return init;
}

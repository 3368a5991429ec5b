import { existsSync, lstatSync, readFileSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import { HutchError, unsupported } from '../errors.js';
import { DEFAULT_PATH } from './oci.js';
import { extractLayer, rootfsImage, type PendingImage } from './import.js';
import { tarBuffer, type TarEntry } from './tarwriter.js';
import type { Op, StoreContext } from './context.js';
import { BUILTINS, type BuiltinName } from './records.js';

/**
 * The two images every store has without an import, made on first use and remade when their
 * host sources change:
 * - `busybox`: Debian's busybox-static with a symlink per applet;
 * - `host`: a curated /etc plus mount points; the host's /usr (and /bin, /lib* when they are
 *   real directories) are bound read-only over it by the sandbox (ResolvedImage.hostBinds).
 */
export { BUILTINS, type BuiltinName };

const BUSYBOX = '/bin/busybox';
const REVALIDATE_MS = 10_000;

interface BuiltinState {
  fingerprint: string;
  id: string;
}

const checked = new Map<string, { at: number; hex: string }>();
const inflight = new Map<string, Promise<string>>();

/** Makes (or confirms) a builtin image; returns its id hex. */
export async function ensureBuiltin(store: StoreContext, name: BuiltinName): Promise<string> {
  const key = `${store.root}\0${name}`;
  const c = checked.get(key);
  if (c && Date.now() - c.at < REVALIDATE_MS && existsSync(store.path('images', `${c.hex}.json`))) return c.hex;
  let p = inflight.get(key);
  if (!p) {
    p = make(store, name).finally(() => inflight.delete(key));
    inflight.set(key, p);
  }
  const hex = await p;
  checked.set(key, { at: Date.now(), hex });
  return hex;
}

async function make(store: StoreContext, name: BuiltinName): Promise<string> {
  store.ensure();
  const fp = name === 'busybox' ? busyboxFingerprint() : hostFingerprint();
  const stateFile = store.path('builtin', `${name}.json`);
  const state = await fsp.readFile(stateFile, 'utf8').then((t) => JSON.parse(t) as BuiltinState).catch(() => undefined);
  const tags = await store.readTags();
  if (state && state.fingerprint === fp && tags[name] === state.id && existsSync(store.path('images', `${state.id.slice(7)}.json`))) {
    return state.id.slice(7);
  }
  const op = await store.beginOp();
  let id: string;
  try {
    const pending = name === 'busybox' ? await busyboxImage(store, op) : await hostImage(store, op);
    pending.tags = [name];
    pending.builtin = name;
    id = (await store.commit(op, pending)).id;
  } finally {
    await op.close();
  }
  await store.writeJson(stateFile, { fingerprint: fp, id } satisfies BuiltinState);
  if (state && state.id !== id) {
    // The host changed: drop the old generation unless a sandbox still uses it.
    await store.remove(state.id).catch(() => undefined);
  }
  return id.slice(7);
}

function statKey(p: string): string {
  try {
    const s = lstatSync(p);
    return `${p}:${s.ino}:${s.size}:${s.mtimeMs}:${s.mode}`;
  } catch {
    return `${p}:-`;
  }
}

function busyboxFingerprint(): string {
  if (!existsSync(BUSYBOX)) {
    throw unsupported('the builtin image busybox', `${BUSYBOX} is missing: apt-get install busybox-static`);
  }
  const st = statSync(BUSYBOX);
  return `busybox:${st.ino}:${st.size}:${st.mtimeMs}`;
}

async function busyboxImage(store: StoreContext, op: Op): Promise<PendingImage> {
  const st = statSync(BUSYBOX);
  const mtime = Math.floor(st.mtimeMs / 1000);
  let applets: string[];
  try {
    applets = execFileSync(BUSYBOX, ['--list-full'], { encoding: 'utf8' }).split('\n').filter((l) => l.trim() !== '');
  } catch (e) {
    throw unsupported('the builtin image busybox', `${BUSYBOX} --list-full failed (a static busybox is needed): apt-get install busybox-static`, e);
  }
  const dir = (path: string, mode = 0o755): TarEntry => ({ path, type: 'dir', mode, mtime });
  const entries: TarEntry[] = [
    dir('bin'), dir('dev'), dir('etc'), dir('home'), dir('proc'), dir('root', 0o700), dir('sbin'), dir('sys'),
    dir('tmp', 0o1777), dir('usr'), dir('usr/bin'), dir('usr/sbin'), dir('var'),
    { path: 'bin/busybox', type: 'file', mode: 0o755, mtime, data: readFileSync(BUSYBOX) },
    { path: 'etc/passwd', type: 'file', mode: 0o644, mtime, data: 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' },
    { path: 'etc/group', type: 'file', mode: 0o644, mtime, data: 'root:x:0:\nnobody:x:65534:\n' },
    { path: 'etc/hosts', type: 'file', mode: 0o644, mtime, data: '127.0.0.1\tlocalhost\n::1\tlocalhost\n' },
  ];
  const seen = new Set(entries.map((e) => e.path));
  const links = [...applets, 'bin/sh'];
  for (const raw of links) {
    const path = raw.replace(/^\/+/, '');
    if (seen.has(path) || path.split('/').includes('..')) continue;
    seen.add(path);
    const parent = path.split('/').slice(0, -1).join('/');
    if (parent !== '' && !seen.has(parent)) {
      seen.add(parent);
      entries.push(dir(parent));
    }
    entries.push({ path, type: 'symlink', linkpath: '/bin/busybox', mode: 0o777, mtime });
  }
  return builtinImage(store, op, 'busybox', tarBuffer(entries), ['/bin/sh'], []);
}

async function builtinImage(store: StoreContext, op: Op, name: string, tar: Buffer, cmd: string[], hostBinds: string[]): Promise<PendingImage> {
  const layer = await extractLayer(store, op, (async function* () { yield tar; })(), { compression: 'none', label: `builtin image ${name}` });
  const img = rootfsImage(layer, { Env: [DEFAULT_PATH], Cmd: cmd });
  img.hostBinds = hostBinds;
  return img;
}

// ---- host ---------------------------------------------------------------------------------

/** /etc files copied as they are (symlinks stay symlinks). */
const ETC_FILES = ['hosts', 'nsswitch.conf', 'ld.so.cache', 'ld.so.conf', 'localtime', 'os-release', 'debian_version', 'profile'];
/** /etc trees copied whole (files and symlinks only). Never shadow, gshadow, sudoers, ssh, ssl/private. */
const ETC_TREES = ['ld.so.conf.d', 'alternatives', 'ssl/certs'];
const TOP_LINKS = ['bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32'];

function hostFingerprint(): string {
  const keys = ['passwd', 'group', ...ETC_FILES, ...ETC_TREES].map((f) => statKey(`/etc/${f}`));
  for (const t of ETC_TREES) {
    try {
      for (const n of readdirSync(`/etc/${t}`)) keys.push(statKey(`/etc/${t}/${n}`));
    } catch {
      /* absent */
    }
  }
  for (const d of TOP_LINKS) keys.push(statKey(`/${d}`));
  return keys.join('|');
}

/** Keeps system accounts only: ids below 1000, and nobody. */
function systemEntries(text: string): string {
  return text
    .split('\n')
    .filter((l) => {
      const id = Number(l.split(':')[2]);
      return l.trim() !== '' && !l.startsWith('#') && Number.isInteger(id) && (id < 1000 || id === 65534);
    })
    .map((l) => `${l}\n`)
    .join('');
}

function copyEntry(hostPath: string, path: string, out: TarEntry[]): void {
  let st;
  try {
    st = lstatSync(hostPath);
  } catch {
    return;
  }
  const mtime = Math.floor(st.mtimeMs / 1000);
  const mode = st.mode & 0o7777;
  if (st.isSymbolicLink()) out.push({ path, type: 'symlink', linkpath: readlinkSync(hostPath), mode: 0o777, mtime });
  else if (st.isFile()) out.push({ path, type: 'file', mode, mtime, data: readFileSync(hostPath) });
  else if (st.isDirectory()) {
    out.push({ path, type: 'dir', mode, mtime });
    for (const n of readdirSync(hostPath).sort()) copyEntry(`${hostPath}/${n}`, `${path}/${n}`, out);
  }
}

async function hostImage(store: StoreContext, op: Op): Promise<PendingImage> {
  const entries: TarEntry[] = [];
  const dir = (path: string, mode = 0o755) => entries.push({ path, type: 'dir', mode, mtime: 0 });
  for (const d of ['dev', 'etc', 'home', 'proc', 'run', 'sys', 'usr', 'var']) dir(d);
  dir('root', 0o700);
  dir('tmp', 0o1777);
  dir('var/tmp', 0o1777);
  dir('etc/ssl');
  const hostBinds = ['/usr'];
  for (const d of TOP_LINKS) {
    let st;
    try {
      st = lstatSync(`/${d}`);
    } catch {
      continue;
    }
    if (st.isSymbolicLink()) entries.push({ path: d, type: 'symlink', linkpath: readlinkSync(`/${d}`), mode: 0o777, mtime: 0 });
    else if (st.isDirectory()) {
      dir(d);
      hostBinds.push(`/${d}`);
    }
  }
  for (const [f, filter] of [['passwd', systemEntries], ['group', systemEntries]] as const) {
    try {
      const st = statSync(`/etc/${f}`);
      entries.push({ path: `etc/${f}`, type: 'file', mode: 0o644, mtime: Math.floor(st.mtimeMs / 1000), data: filter(readFileSync(`/etc/${f}`, 'utf8')) });
    } catch {
      /* absent */
    }
  }
  for (const f of ETC_FILES) copyEntry(`/etc/${f}`, `etc/${f}`, entries);
  for (const t of ETC_TREES) copyEntry(`/etc/${t}`, `etc/${t}`, entries);
  if (!entries.some((e) => e.path === 'etc/passwd')) throw new HutchError('EUNSUPPORTED', 'the builtin image host needs /etc/passwd on the host');
  return builtinImage(store, op, 'host', tarBuffer(entries), ['/bin/sh'], hostBinds);
}

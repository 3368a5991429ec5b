/** COPY and ADD: sources from the build context (globs, .dockerignore, confinement), their hash for the cache, their layer. */
import { seenIds } from '../../host/ids.js';
import { createHash } from 'node:crypto';
import { constants, lstatSync, readFileSync, readdirSync, readlinkSync, statSync, type Stats } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { join, posix, relative, sep } from 'node:path';
import { ID_LIMIT } from '../../conventions.js';
import { fileChunks, openBlob, sniff } from '../blob.js';
import { LayerTar, copyData } from '../commit.js';
import { buildError, jsonForm, processWord, processWords, type Instruction } from '../dockerfile.js';
import type { PendingLayer } from '../import.js';
import { entryParts, readTar } from '../tar.js';
import type { TarEntry } from '../tarwriter.js';
import { ImageView } from '../view.js';
import { type State, type Ctx, workdirOf } from './state.js';
import { ensureDirs, buildUserIds } from './view.js';

// ---- COPY and ADD ---------------------------------------------------------------------------

export interface Source {
  /** Path inside the context as written after globbing, for messages and names. */
  rel: string;
  /** The real file or directory (symlinks resolved inside the context). */
  abs: string;
  st: Stats;
}

export const GLOB = /[*?[]/;

export function globRegex(pat: string): RegExp {
  let re = '';
  for (let i = 0; i < pat.length; i++) {
    const ch = pat[i]!;
    if (ch === '*') re += '[^/]*';
    else if (ch === '?') re += '[^/]';
    else if (ch === '[') {
      const end = pat.indexOf(']', i + 1);
      if (end < 0) re += '\\[';
      else {
        let cls = pat.slice(i + 1, end).replace(/\\/g, '\\\\');
        if (cls.startsWith('^') || cls.startsWith('!')) cls = `^${cls.slice(1)}`;
        re += `[${cls}]`;
        i = end;
      }
    } else if (ch === '\\' && i + 1 < pat.length) re += pat[++i]!.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    else re += ch.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

/**
 * `.dockerignore` at the context's top: one pattern a line (`#` comments), `*`, `?`, `[...]`
 * within a component, `**` across components, `!` to take a path back; the last matching
 * pattern decides, and a pattern matching a directory covers everything under it.
 */
export function dockerignore(root: string): (rel: string) => boolean {
  let text: string;
  try {
    text = readFileSync(join(root, '.dockerignore'), 'utf8');
  } catch {
    return () => false;
  }
  const rules: { re: RegExp; negate: boolean }[] = [];
  for (let line of text.split('\n')) {
    line = line.trim();
    if (line === '' || line.startsWith('#')) continue;
    const negate = line.startsWith('!');
    const pat = posix.normalize(negate ? line.slice(1).trim() : line).replace(/^\/+|\/+$/g, '');
    if (pat === '' || pat === '.') continue;
    const parts = pat.split('/').map((seg) => (seg === '**' ? null : globRegex(seg).source.slice(1, -1)));
    let re = '';
    for (const [i, seg] of parts.entries()) {
      if (seg === null) re += i === parts.length - 1 ? '.*' : '(?:[^/]+/)*';
      else re += seg + (i < parts.length - 1 ? '/' : '');
    }
    rules.push({ re: new RegExp(`^${re}$`), negate });
  }
  if (rules.length === 0) return () => false;
  return (rel: string) => {
    const prefixes: string[] = [];
    const parts = rel.split('/');
    for (let i = 1; i <= parts.length; i++) prefixes.push(parts.slice(0, i).join('/'));
    let out = false;
    for (const r of rules) if (prefixes.some((p) => r.re.test(p))) out = !r.negate;
    return out;
  };
}

/**
 * A source path inside the context: `..` may not climb out, and a symlink on the way may
 * not lead out (its target is resolved on the host and must stay inside the context).
 * Returns the real path components below the context.
 */
export function confine(ctxRoot: string, ins: Instruction, written: string, parts: string[]): string[] {
  let todo = [...parts];
  let done: string[] = [];
  const out = () => buildError(ins, `${JSON.stringify(written)} is outside the build context`);
  for (let hops = 0; todo.length > 0; ) {
    const name = todo.shift()!;
    if (name === '' || name === '.') continue;
    if (name === '..') {
      if (done.length === 0) throw out();
      done.pop();
      continue;
    }
    const abs = join(ctxRoot, ...done, name);
    let st: Stats;
    try {
      st = lstatSync(abs);
    } catch {
      throw buildError(ins, `${JSON.stringify(written)}: no such file or directory in the build context`);
    }
    if (st.isSymbolicLink()) {
      if (++hops > 40) throw buildError(ins, `${JSON.stringify(written)}: too many symlinks`);
      const target = readlinkSync(abs);
      const host = target.startsWith('/') ? posix.normalize(target) : posix.normalize(posix.join(ctxRoot, ...done, target));
      const rel = relative(ctxRoot, host);
      if (rel === '..' || rel.startsWith(`..${sep}`) || posix.isAbsolute(rel)) {
        throw buildError(ins, `${JSON.stringify(written)} goes through the symlink ${JSON.stringify([...done, name].join('/'))} -> ${JSON.stringify(target)}, which leads out of the build context`);
      }
      done = [];
      todo = [...rel.split(sep).filter((p) => p !== ''), ...todo];
      continue;
    }
    if (todo.length > 0 && !st.isDirectory()) throw buildError(ins, `${JSON.stringify(written)}: ${[...done, name].join('/')} is not a directory`);
    done.push(name);
  }
  return done;
}

export function sources(ctx: Ctx, ins: Instruction, patterns: string[]): Source[] {
  for (const pat of patterns) {
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(pat) || /^git@/.test(pat)) throw buildError(ins, `${JSON.stringify(pat)}: remote sources (URLs, git) are not supported; only the local build context`);
  }
  if (ctx.context === null) throw buildError(ins, `${ins.keyword} needs a build context (the context option)`);
  const root = ctx.context;
  const out: Source[] = [];
  for (const pat of patterns) {
    const parts = pat.split('/').filter((p) => p !== '' && p !== '.');
    let matches: string[][] = [[]];
    for (const [i, comp] of parts.entries()) {
      if (!GLOB.test(comp)) {
        matches = matches.map((m) => [...m, comp]);
        continue;
      }
      const re = globRegex(comp);
      const next: string[][] = [];
      for (const m of matches) {
        const real = confine(root, ins, pat, m);
        let names: string[];
        try {
          names = readdirSync(join(root, ...real)).sort();
        } catch {
          continue;
        }
        for (const n of names) if (re.test(n) && !ctx.ignored([...real, n].join('/'))) next.push([...real, n]);
      }
      matches = next;
      if (matches.length === 0) throw buildError(ins, `${JSON.stringify(pat)}: no file in the build context matches ${JSON.stringify(parts.slice(0, i + 1).join('/'))}`);
    }
    for (const m of matches) {
      const real = confine(root, ins, pat, m);
      if (real.length > 0 && ctx.ignored(real.join('/'))) throw buildError(ins, `${JSON.stringify(pat)} is excluded by .dockerignore`);
      const abs = join(root, ...real);
      out.push({ rel: real.join('/') || '.', abs, st: lstatSync(abs) });
    }
  }
  return out;
}

/** sha256 over the sources' names, types, modes, link targets and content (not mtimes). */
export async function hashSources(ctx: Ctx, ins: Instruction, srcs: Source[]): Promise<string> {
  const h = createHash('sha256');
  const visit = async (abs: string, name: string): Promise<void> => {
    const st = await fsp.lstat(abs);
    h.update(`${name}\0${st.mode.toString(8)}\0`);
    if (st.isDirectory()) {
      for (const n of (await fsp.readdir(abs)).sort()) {
        if (!ctx.ignored(relative(ctx.context!, join(abs, n)).split(sep).join('/'))) await visit(join(abs, n), `${name}/${n}`);
      }
    } else if (st.isSymbolicLink()) h.update(`link\0${await fsp.readlink(abs)}\0`);
    else if (st.isFile()) {
      h.update(`${st.size}\0`);
      for await (const c of fileChunks(abs)) h.update(c as Buffer);
    } else throw buildError(ins, `${JSON.stringify(name)} in the build context is a socket, FIFO or device; ${ins.keyword} takes files, directories and symlinks`);
  };
  for (const s of srcs) {
    h.update(`src\0${s.rel}\0`);
    await visit(s.abs, s.rel);
  }
  return h.digest('hex');
}

export async function copyPlan(ctx: Ctx, ins: Instruction, state: State, vars: Map<string, string>) {
  const add = ins.keyword === 'ADD';
  let chown: string | undefined;
  let chmod: number | undefined;
  for (const f of ins.flags) {
    const value = f.value === undefined ? '' : processWord(f.value, vars, ctx.escape);
    if (f.name === 'chown' && value !== '') chown = value;
    else if (f.name === 'chmod' && /^[0-7]{3,4}$/.test(value)) chmod = Number.parseInt(value, 8);
    else if (f.name === 'from') throw buildError(ins, `--from is not supported (multi-stage builds are not)`);
    else throw buildError(ins, `the flag --${f.name}${f.value !== undefined ? `=${f.value}` : ''} is not supported`);
  }
  const json = jsonForm(ins.args);
  const words = json ? json.map((w) => processWord(w, vars, ctx.escape)) : processWords(ins.args, vars, ctx.escape, true);
  if (words.length < 2) throw buildError(ins, `expected ${ins.keyword} <src>... <dest>`);
  const dest = words[words.length - 1]!;
  const srcs = sources(ctx, ins, words.slice(0, -1));
  const hash = await hashSources(ctx, ins, srcs);
  const destAbs = posix.normalize(posix.join(dest.startsWith('/') ? '/' : workdirOf(state), dest));
  const flags = [chown !== undefined ? `--chown=${chown}` : '', chmod !== undefined ? `--chmod=${chmod.toString(8)}` : ''].filter(Boolean).join(' ');
  const createdBy = `${ins.keyword} ${flags ? `${flags} ` : ''}${srcs.map((s) => s.rel).join(' ')} ${destAbs}${dest.endsWith('/') && destAbs !== '/' ? '/' : ''}`;
  const layer = async (): Promise<PendingLayer | null> => {
    const view = ImageView.of(ctx.store, state.base.layers, 'the base image');
    const owner = chown !== undefined ? await buildUserIds(view, chown) : { uid: 0, gid: 0 };
    const tar = new LayerTar(ctx.op);
    try {
      const now = Math.floor(Date.now() / 1000);
      const outer = ctx.store.shift();
      const shift = outer && seenIds(outer); // stat shows host ids (lib/host/ids.ts)
      const destParts = await view.resolve(destAbs, true);
      const existing = await view.lookup(destParts);
      const intoDir = dest.endsWith('/') || dest === '.' || (existing !== null && existing.st.isDirectory());
      if (srcs.length > 1 && !intoDir) throw buildError(ins, `with more than one source the destination must be a directory ending in /`);
      const meta = (st: Stats) => ({ mode: chmod ?? st.mode & 0o7777, ...owner, mtime: Math.floor(st.mtimeMs / 1000) });
      noWhiteout(ins, destParts.join('/'));
      const emitTree = async (abs: string, parts: string[]): Promise<void> => {
        for (const n of (await fsp.readdir(abs)).sort()) {
          const p = join(abs, n);
          if (ctx.ignored(relative(ctx.context!, p).split(sep).join('/'))) continue;
          const st = await fsp.lstat(p);
          const rel = [...parts, n].join('/');
          noWhiteout(ins, rel);
          if (st.isDirectory()) {
            tar.add({ path: rel, type: 'dir', ...meta(st) });
            await emitTree(p, [...parts, n]);
          } else if (st.isSymbolicLink()) {
            tar.add({ path: rel, type: 'symlink', linkpath: await fsp.readlink(p), mode: 0o777, ...owner, mtime: Math.floor(st.mtimeMs / 1000) });
          } else if (st.isFile()) await emitFile(p, rel);
          else throw buildError(ins, `${JSON.stringify(rel)}: ${ins.keyword} takes files, directories and symlinks`);
        }
      };
      const emitFile = async (abs: string, rel: string) => {
        noWhiteout(ins, rel);
        const fh = await fsp.open(abs, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
        try {
          const now2 = await fh.stat();
          if (!now2.isFile()) throw buildError(ins, `${JSON.stringify(rel)} changed during the build`);
          tar.header({ path: rel, type: 'file', ...meta(now2) }, now2.size);
          await copyData(tar, fh, now2.size);
        } finally {
          await fh.close();
        }
      };
      for (const s of srcs) {
        const st = statSync(s.abs);
        if (st.isDirectory()) {
          await ensureDirs(tar, view, shift, destParts, owner, now);
          await emitTree(s.abs, destParts);
        } else if (add && (await isArchive(s.abs))) {
          await ensureDirs(tar, view, shift, destParts, owner, now);
          await addArchive(ctx, ins, tar, s, destParts, chown !== undefined ? owner : null, chmod);
        } else {
          const target = intoDir ? [...destParts, s.rel.split('/').pop()!] : await view.resolve(destAbs, false);
          if (target.length === 0) throw buildError(ins, `cannot copy the file ${JSON.stringify(s.rel)} over the root directory`);
          await ensureDirs(tar, view, shift, target.slice(0, -1), owner, now);
          await emitFile(s.abs, target.join('/'));
        }
      }
      return await tar.toLayer(ctx.store, ctx.op, `Dockerfile line ${ins.line} (${ins.keyword})`);
    } catch (e) {
      tar.discard(); // its fd closed now: a full disk gets its space back
      throw e;
    }
  };
  return { createdBy, hash, layer };
}

/**
 * A name starting with `.wh.` in a layer is a whiteout: written by COPY or ADD it would delete
 * or hide the base image's files when the layer is extracted. Refused, as in an archive ADD.
 */
export function noWhiteout(ins: Instruction, rel: string): void {
  const name = rel.split('/').find((p) => p.startsWith('.wh.'));
  if (name !== undefined) {
    throw buildError(ins, `${JSON.stringify(rel)}: the name ${JSON.stringify(name)} starts with .wh., which marks a whiteout in an image layer; rename it or exclude it in .dockerignore`);
  }
}

/** A local tar for ADD: plain, gzip or zstd (bzip2 and xz are refused when extracted). */
export async function isArchive(path: string): Promise<boolean> {
  const fh = await fsp.open(path, 'r');
  try {
    const head = Buffer.alloc(512);
    const { bytesRead } = await fh.read(head, 0, 512, 0);
    const b = head.subarray(0, bytesRead);
    if (sniff(b) !== 'none') return true;
    if (b.length >= 3 && b.toString('latin1', 0, 3) === 'BZh') return true;
    if (b.length >= 6 && b[0] === 0xfd && b.toString('latin1', 1, 6) === '7zXZ\0') return true;
    return b.length >= 263 && b.toString('latin1', 257, 262) === 'ustar';
  } finally {
    await fh.close();
  }
}

/**
 * ADD of a local archive: its entries are written into the layer under `destParts` with the
 * archive's own checks (no absolute names, no `..`, hardlinks inside the archive); the layer
 * extractor then applies the store's rules to the whole layer.
 */
export async function addArchive(ctx: Ctx, ins: Instruction, tar: LayerTar, s: Source, destParts: string[], owner: { uid: number; gid: number } | null, chmod: number | undefined): Promise<void> {
  const head = Buffer.alloc(6);
  const fh = await fsp.open(s.abs, 'r');
  await fh.read(head, 0, 6, 0).finally(() => fh.close());
  if (head.toString('latin1', 0, 3) === 'BZh' || (head[0] === 0xfd && head.toString('latin1', 1, 6) === '7zXZ\0')) {
    throw buildError(ins, `${JSON.stringify(s.rel)} is a bzip2 or xz archive; ADD extracts plain, gzip and zstd tars`);
  }
  const label = `Dockerfile line ${ins.line} (ADD ${s.rel})`;
  const reading = await openBlob(fileChunks(s.abs), { maxBytes: ctx.store.limits.maxBytes, label });
  const prefix = destParts.join('/');
  const under = (parts: string[]) => (prefix === '' ? parts.join('/') : `${prefix}/${parts.join('/')}`);
  await readTar(
    reading.plain,
    (e) => {
      const parts = entryParts(label, e.path);
      if (parts.length === 0) {
        e.resume();
        return;
      }
      if (parts.some((p) => p.startsWith('.wh.'))) throw buildError(ins, `${JSON.stringify(s.rel)}: entry ${JSON.stringify(e.path)} has a whiteout name (.wh.)`);
      const uid = owner?.uid ?? e.uid ?? 0;
      const gid = owner?.gid ?? e.gid ?? 0;
      if (uid >= ID_LIMIT || gid >= ID_LIMIT) throw buildError(ins, `${JSON.stringify(s.rel)}: entry ${JSON.stringify(e.path)} is owned by ${uid}:${gid}; ids must be below ${ID_LIMIT}`);
      const mode = chmod ?? (e.mode ?? 0o644) & 0o7777;
      const mtime = e.mtime ? Math.floor(e.mtime.getTime() / 1000) : Math.floor(Date.now() / 1000);
      const base: Omit<TarEntry, 'type'> = { path: under(parts), mode, uid, gid, mtime };
      switch (e.type) {
        case 'Directory':
          e.resume();
          tar.add({ ...base, type: 'dir' });
          return;
        case 'SymbolicLink':
          e.resume();
          tar.add({ ...base, type: 'symlink', linkpath: e.linkpath ?? '', mode: 0o777 });
          return;
        case 'Link': {
          e.resume();
          const t = entryParts(label, e.linkpath ?? '');
          tar.add({ ...base, type: 'link', linkpath: under(t) });
          return;
        }
        case 'FIFO':
          e.resume();
          tar.add({ ...base, type: 'fifo' });
          return;
        case 'File':
        case 'OldFile':
        case 'ContiguousFile': {
          const size = e.size ?? 0;
          tar.header({ ...base, type: 'file' }, size);
          let got = 0;
          e.on('data', (c: Buffer) => {
            const take = c.subarray(0, Math.max(0, size - got));
            tar.write(take);
            got += take.length;
            if (got === size) tar.pad(size);
          });
          if (size === 0) e.resume();
          return;
        }
        default:
          e.resume();
          throw buildError(ins, `${JSON.stringify(s.rel)}: entry ${JSON.stringify(e.path)} is a ${e.type}; ADD extracts files, directories, links and FIFOs`);
      }
    },
    label,
  );
}

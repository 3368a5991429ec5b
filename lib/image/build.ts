/**
 * Dockerfile builds (docs/images.md, "Build"): FROM, RUN in a hutch sandbox, COPY and ADD
 * from a local context as layers written directly (no sandbox), ENV, ARG, WORKDIR, USER,
 * CMD, ENTRYPOINT, EXPOSE, LABEL, SHELL, STOPSIGNAL, MAINTAINER. Each step is an image in the
 * store; a cache (buildcache/<key>.json → image id) keyed by the parent image, the step after
 * substitution and, for COPY/ADD, the sources' content, lets an unchanged rebuild do no work.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants, lstatSync, readFileSync, readdirSync, readlinkSync, realpathSync, statSync, type Stats } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { join, posix, relative, sep } from 'node:path';
import { HutchError, invalid } from '../errors.js';
import { ID_LIMIT, upperDirOf } from '../conventions.js';
import { resolveLimits, type Limits } from '../limits.js';
import type { NetworkOptions } from '../network/options.js';
import { storeHooks, type StepSandbox } from './hooks.js';
import { fileChunks, openBlob, sniff } from './blob.js';
import {
  LayerTar, baseOf, childImage, copyData, layerCap, scratchBase, writeUpper, type BaseImage, type OciConfig,
} from './commit.js';
import {
  buildError, jsonForm, keyValues, parseDockerfile, processWord, processWords, type Instruction,
} from './dockerfile.js';
import type { PendingLayer } from './import.js';
import { entryParts, readTar } from './tar.js';
import type { TarEntry } from './tarwriter.js';
import type { Image, Progress } from './types.js';
import type { ImageStore, Op } from './store.js';
import { ImageView, userIds } from './view.js';

/**
 * Options of {@link ImageStore.build}.
 *
 * @example
 * ```ts
 * import { readFileSync } from 'node:fs';
 * const options: BuildOptions = {
 *   dockerfile: readFileSync('./app/Dockerfile', 'utf8'),
 *   context: './app',
 *   tag: 'app:dev',
 *   buildArgs: { VERSION: '1.2.3' },
 *   onProgress: (p) => console.log(`${p.phase} ${p.current}/${p.total}`),
 * };
 * const img = await store.build(options);
 * ```
 */
export interface BuildOptions {
  /** The Dockerfile's text (not a path). */
  dockerfile: string;
  /** Directory that COPY and ADD read from (`.dockerignore` applies); nothing outside it is read. Absent: COPY and ADD fail (`EBUILD`). */
  context?: string;
  /** A name for the built image, as for {@link ImageStore.tag}. */
  tag?: string;
  /** `{ phase: 'step', current, total }` at each instruction; `{ phase: 'cached', ... }` when the cache answered it. */
  onProgress?: (p: Progress) => void;
  /** Network of the RUN sandboxes (default 'none'). */
  network?: 'none' | NetworkOptions;
  /**
   * Limits of each RUN step's sandbox, as Sandbox.create's `limits`, over the defaults for
   * untrusted code (output 16MiB, pids 1024): a step past `output` or `timeoutMs` is stopped and
   * the build fails with `EBUILD` naming it.
   */
  limits?: Limits;
  /** Values for ARG instructions, as `docker build --build-arg`. */
  buildArgs?: Record<string, string>;
  /** Ignore the cache (results are still recorded in it). */
  noCache?: boolean;
}

/** Work done by builds in this process, for tests and tools: a cached rebuild adds only to `cacheHits`. */
export const buildCounters = { steps: 0, cacheHits: 0, sandboxes: 0, layers: 0 };

const DEFAULT_SHELL = ['/bin/sh', '-c'];
const CACHE_VERSION = 1;

interface State {
  base: BaseImage;
  /** ARGs declared after FROM, with their values. */
  args: Map<string, string>;
  /** A CMD came from this Dockerfile (an ENTRYPOINT then keeps it; else it drops the base's). */
  cmdSet: boolean;
}

interface Ctx {
  store: ImageStore;
  op: Op;
  o: BuildOptions;
  escape: string;
  context: string | null;
  /** True for a context path (relative, `/`-separated) that `.dockerignore` leaves out. */
  ignored: (rel: string) => boolean;
  pinned: Set<string>;
}

/** See ImageStore.build. */
export async function build(store: ImageStore, o: BuildOptions): Promise<Image> {
  if (typeof o !== 'object' || o === null) throw invalid('options', 'an object with dockerfile', o);
  if (typeof o.dockerfile !== 'string') throw invalid('dockerfile', 'the Dockerfile text', o.dockerfile);
  if (o.tag !== undefined) store.checkTag(o.tag);
  if (o.onProgress !== undefined && typeof o.onProgress !== 'function') throw invalid('onProgress', 'a function', o.onProgress);
  if (o.buildArgs !== undefined && (typeof o.buildArgs !== 'object' || o.buildArgs === null || !Object.values(o.buildArgs).every((v) => typeof v === 'string'))) {
    throw invalid('buildArgs', 'an object of strings', o.buildArgs);
  }
  if (o.limits !== undefined) resolveLimits(o.limits, 'limits');
  let context: string | null = null;
  if (o.context !== undefined) {
    if (typeof o.context !== 'string' || o.context === '') throw invalid('context', 'a directory path', o.context);
    try {
      context = realpathSync(o.context);
      if (!statSync(context).isDirectory()) throw new Error('not a directory');
    } catch (e) {
      throw invalid('context', 'an existing directory', o.context);
    }
  }
  const df = parseDockerfile(o.dockerfile);
  const list = df.instructions;
  const froms = list.filter((i) => i.keyword === 'FROM');
  if (froms.length === 0) throw buildError(list[0]?.line ?? 1, 'no FROM instruction');
  if (froms.length > 1) throw buildError(froms[1]!, 'multi-stage builds (a second FROM) are not supported');
  const firstReal = list.find((i) => i.keyword !== 'ARG')!;
  if (firstReal.keyword !== 'FROM') throw buildError(firstReal, 'the first instruction must be FROM (only ARG may come before it)');

  store.ensure();
  await fsp.mkdir(store.path('buildcache'), { recursive: true, mode: 0o700 });
  const op = await store.beginOp();
  const ctx: Ctx = { store, op, o, escape: df.escape, context, ignored: context ? dockerignore(context) : () => false, pinned: new Set() };
  const metaArgs = new Map<string, string>();
  let state: State | null = null;
  try {
    for (const [n, ins] of list.entries()) {
      o.onProgress?.({ phase: 'step', current: n + 1, total: list.length });
      buildCounters.steps++;
      try {
        if (!state) {
          if (ins.keyword === 'ARG') {
            for (const [k, v] of keyValues(ins, metaArgs, df.escape, false)) {
              const value = o.buildArgs?.[k] ?? v;
              if (value !== undefined) metaArgs.set(k, value);
              else metaArgs.delete(k);
            }
            continue;
          }
          state = await from(ctx, ins, metaArgs);
          continue;
        }
        const next = await step(ctx, ins, state, metaArgs, () => o.onProgress?.({ phase: 'cached', current: n + 1, total: list.length }));
        if (next) state = next;
      } catch (e) {
        if (HutchError.is(e)) throw e;
        throw buildError(ins, (e as Error).message, e);
      }
    }
    let base = state!.base;
    if (base.id === null) {
      // FROM scratch and nothing else: an image with no layers.
      const img = await childImage(store, op, base, null, () => undefined, { createdBy: 'FROM scratch' }, [], ctx.pinned);
      base = await baseOf(store, img.id);
    }
    if (o.tag !== undefined) await store.tag(base.id!, o.tag);
    return await store.get(base.id!);
  } finally {
    await op.close();
  }
}

async function from(ctx: Ctx, ins: Instruction, metaArgs: Map<string, string>): Promise<State> {
  for (const f of ins.flags) throw buildError(ins, `the flag --${f.name} is not supported`);
  const words = processWords(ins.args, metaArgs, ctx.escape, true);
  if (words.length !== 1 && !(words.length === 3 && words[1]!.toLowerCase() === 'as')) throw buildError(ins, 'expected FROM <image> [AS <name>]');
  const ref = words[0]!;
  if (ref === 'scratch') return { base: scratchBase(), args: new Map(), cmdSet: false };
  try {
    return { base: await baseOf(ctx.store, ref), args: new Map(), cmdSet: false };
  } catch (e) {
    if (HutchError.is(e) && e.code === 'ENOIMAGE') throw buildError(ins, `no image ${JSON.stringify(ref)} in the store (import or pull it first; builtins: busybox, host)`, e);
    throw e;
  }
}

// ---- the cache -------------------------------------------------------------------------------

function cacheKey(parent: string | null, step: string, extra: unknown): string {
  return createHash('sha256').update(JSON.stringify({ v: CACHE_VERSION, parent: parent ?? 'scratch', step, extra })).digest('hex');
}

async function cacheGet(ctx: Ctx, key: string): Promise<BaseImage | null> {
  if (ctx.o.noCache) return null;
  let id: string;
  try {
    id = (JSON.parse(await fsp.readFile(ctx.store.path('buildcache', `${key}.json`), 'utf8')) as { image: string }).image;
  } catch {
    return null;
  }
  if (typeof id !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(id) || !(await ctx.store.readRecord(id.slice(7)))) return null;
  const base = await baseOf(ctx.store, id).catch(() => null);
  if (!base || !base.layers.every((d) => ctx.store.hasLayer(d.slice(7)))) return null;
  return base;
}

async function cachePut(ctx: Ctx, key: string, id: string): Promise<void> {
  await ctx.store.writeJson(ctx.store.path('buildcache', `${key}.json`), { image: id, created: new Date().toISOString() });
}

// ---- one step ------------------------------------------------------------------------------

/** Variables for substitution: ARGs, overridden by the image's ENV (as Docker). */
function varsOf(state: State): Map<string, string> {
  const vars = new Map(state.args);
  for (const kv of envList(state.base.config)) {
    const i = kv.indexOf('=');
    if (i > 0) vars.set(kv.slice(0, i), kv.slice(i + 1));
  }
  return vars;
}

function envList(c: OciConfig): string[] {
  const e = c.config?.Env;
  return Array.isArray(e) ? (e.filter((s) => typeof s === 'string') as string[]) : [];
}

function setEnv(c: Record<string, unknown>, name: string, value: string): void {
  const env = (Array.isArray(c.Env) ? c.Env : []).filter((kv: unknown) => typeof kv === 'string' && !kv.startsWith(`${name}=`)) as string[];
  env.push(`${name}=${value}`);
  c.Env = env;
}

function shellOf(state: State): string[] {
  const s = state.base.config.config?.Shell;
  return Array.isArray(s) && s.length > 0 && s.every((x) => typeof x === 'string') ? (s as string[]) : DEFAULT_SHELL;
}

function workdirOf(state: State): string {
  const w = state.base.config.config?.WorkingDir;
  return typeof w === 'string' && w !== '' ? w : '/';
}

const UNSUPPORTED: Record<string, string> = {
  HEALTHCHECK: 'HEALTHCHECK is not supported (hutch runs no health checks)',
  ONBUILD: 'ONBUILD is not supported',
  VOLUME: 'VOLUME is not supported (use the mounts option of Sandbox.create)',
};

/** Runs one instruction after FROM; returns the new state (null: nothing changed). */
async function step(ctx: Ctx, ins: Instruction, state: State, metaArgs: Map<string, string>, onCached: () => void): Promise<State | null> {
  const kw = ins.keyword;
  if (UNSUPPORTED[kw]) throw buildError(ins, UNSUPPORTED[kw]!);
  if (kw === 'FROM') throw buildError(ins, 'multi-stage builds are not supported');
  if (kw !== 'RUN' && kw !== 'COPY' && kw !== 'ADD' && ins.flags.length > 0) throw buildError(ins, `the flag --${ins.flags[0]!.name} is not supported`);
  const vars = varsOf(state);
  const esc = ctx.escape;

  if (kw === 'ARG') {
    const args = new Map(state.args);
    for (const [k, v] of keyValues(ins, vars, esc, false)) {
      const value = ctx.o.buildArgs?.[k] ?? v ?? metaArgs.get(k);
      if (value !== undefined) args.set(k, value);
      else args.delete(k);
    }
    return { base: state.base, args, cmdSet: state.cmdSet };
  }

  // Everything else makes an image, possibly from the cache.
  const meta = (createdBy: string, edit: (c: Record<string, unknown>, full: OciConfig) => void) => ({ createdBy, edit, layer: null as null | (() => Promise<PendingLayer | null>), extra: null as unknown });
  let plan: ReturnType<typeof meta>;
  switch (kw) {
    case 'ENV': {
      const pairs = keyValues(ins, vars, esc, true) as [string, string][];
      plan = meta(`ENV ${pairs.map(([k, v]) => `${k}=${v}`).join(' ')}`, (c) => {
        for (const [k, v] of pairs) setEnv(c, k, v);
      });
      break;
    }
    case 'LABEL': {
      const pairs = keyValues(ins, vars, esc, false) as [string, string][];
      plan = meta(`LABEL ${pairs.map(([k, v]) => `${k}=${v}`).join(' ')}`, (c) => {
        const labels = (typeof c.Labels === 'object' && c.Labels !== null ? c.Labels : {}) as Record<string, string>;
        for (const [k, v] of pairs) labels[k] = v;
        c.Labels = labels;
      });
      break;
    }
    case 'MAINTAINER': {
      const who = processWord(ins.args, null, esc);
      plan = meta(`MAINTAINER ${who}`, (_c, full) => void (full.author = who));
      break;
    }
    case 'USER': {
      const user = processWord(ins.args, vars, esc);
      if (user === '' || /\s/.test(user)) throw buildError(ins, 'expected USER <user>[:<group>]');
      plan = meta(`USER ${user}`, (c) => void (c.User = user));
      break;
    }
    case 'STOPSIGNAL': {
      const sig = processWord(ins.args, vars, esc);
      if (!/^(SIG[A-Z0-9+-]+|[0-9]+)$/i.test(sig)) throw buildError(ins, `${JSON.stringify(sig)} is not a signal`);
      plan = meta(`STOPSIGNAL ${sig}`, (c) => void (c.StopSignal = sig));
      break;
    }
    case 'EXPOSE': {
      const ports = processWords(ins.args, vars, esc, true).flatMap((w) => exposed(ins, w));
      if (ports.length === 0) throw buildError(ins, 'EXPOSE needs a port');
      plan = meta(`EXPOSE ${ports.join(' ')}`, (c) => {
        const ex = (typeof c.ExposedPorts === 'object' && c.ExposedPorts !== null ? c.ExposedPorts : {}) as Record<string, object>;
        for (const p of ports) ex[p] = {};
        c.ExposedPorts = ex;
      });
      break;
    }
    case 'CMD':
    case 'ENTRYPOINT':
    case 'SHELL': {
      const json = jsonForm(ins.args);
      if (kw === 'SHELL' && !json) throw buildError(ins, 'SHELL takes the JSON form, e.g. SHELL ["/bin/bash", "-c"]');
      if (json === null && ins.args.trim() === '') throw buildError(ins, `${kw} needs a command`);
      const argv = json ?? [...shellOf(state), ins.args];
      const field = kw === 'CMD' ? 'Cmd' : kw === 'ENTRYPOINT' ? 'Entrypoint' : 'Shell';
      plan = meta(`${kw} ${JSON.stringify(argv)}`, (c) => {
        c[field] = argv;
        // Docker: an ENTRYPOINT set in the Dockerfile drops the CMD inherited from the base.
        if (kw === 'ENTRYPOINT' && !state.cmdSet) delete c.Cmd;
      });
      break;
    }
    case 'WORKDIR': {
      const raw = processWord(ins.args, vars, esc);
      if (raw === '') throw buildError(ins, 'WORKDIR needs a path');
      const dir = posix.normalize(posix.join(raw.startsWith('/') ? '/' : workdirOf(state), raw));
      plan = meta(`WORKDIR ${dir}`, (c) => void (c.WorkingDir = dir));
      plan.layer = () => workdirLayer(ctx, state, dir);
      break;
    }
    case 'RUN': {
      for (const f of ins.flags) if (!(f.name === 'network' && f.value === 'none')) throw buildError(ins, `the flag --${f.name}${f.value !== undefined ? `=${f.value}` : ''} is not supported`);
      const json = jsonForm(ins.args);
      if (json === null && ins.args.trim() === '') throw buildError(ins, 'RUN needs a command');
      const argv = json ?? [...shellOf(state), ins.args];
      const own = new Set(envList(state.base.config).map((kv) => kv.slice(0, kv.indexOf('='))));
      const argEnv = Object.fromEntries([...state.args].filter(([k]) => !own.has(k)).sort());
      const network = ins.flags.length > 0 ? 'none' : (ctx.o.network ?? 'none');
      plan = meta(`RUN ${argv.join(' ')}`, () => undefined);
      plan.extra = { argEnv, network: typeof network === 'string' ? network : network.mode };
      plan.layer = () => runLayer(ctx, ins, state, argv, argEnv, network);
      break;
    }
    case 'COPY':
    case 'ADD': {
      const c = await copyPlan(ctx, ins, state, vars);
      plan = meta(c.createdBy, () => undefined);
      plan.extra = c.hash;
      plan.layer = c.layer;
      break;
    }
    default:
      throw buildError(ins, `${kw} is not supported`);
  }

  const cmdSet = state.cmdSet || kw === 'CMD';
  const key = cacheKey(state.base.id, plan.createdBy, plan.extra);
  const hit = await cacheGet(ctx, key);
  if (hit) {
    buildCounters.cacheHits++;
    onCached();
    return { base: hit, args: state.args, cmdSet };
  }
  const layer = plan.layer ? await plan.layer() : null;
  if (layer) buildCounters.layers++;
  const img = await childImage(ctx.store, ctx.op, state.base, layer, plan.edit, { createdBy: plan.createdBy }, [], ctx.pinned);
  await cachePut(ctx, key, img.id);
  return { base: await baseOf(ctx.store, img.id), args: state.args, cmdSet };
}

function exposed(ins: Instruction, w: string): string[] {
  const m = /^(\d+)(?:-(\d+))?(?:\/(tcp|udp|sctp))?$/i.exec(w);
  if (!m) throw buildError(ins, `${JSON.stringify(w)} is not a port, port/protocol or range`);
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  const proto = (m[3] ?? 'tcp').toLowerCase();
  if (lo < 1 || hi > 65535 || hi < lo || hi - lo > 10000) throw buildError(ins, `${JSON.stringify(w)} is not a valid port or range`);
  const out: string[] = [];
  for (let p = lo; p <= hi; p++) out.push(`${p}/${proto}`);
  return out;
}

// ---- RUN -----------------------------------------------------------------------------------

async function runLayer(ctx: Ctx, ins: Instruction, state: State, argv: string[], argEnv: Record<string, string>, network: 'none' | NetworkOptions): Promise<PendingLayer | null> {
  if (state.base.id === null || state.base.layers.length === 0) throw buildError(ins, 'RUN needs a base image with a shell; FROM scratch has none');
  let sb: StepSandbox;
  try {
    if (!storeHooks.runStep) throw new HutchError('EUNSUPPORTED', 'no sandbox runtime is loaded to run the step: import hutch (lib/index.ts), not lib/image/store.ts alone');
    sb = await storeHooks.runStep({ image: state.base.id, store: ctx.store, network, limits: ctx.o.limits }); // unset: the sandbox defaults (output 16MiB, pids 1024)
  } catch (e) {
    throw buildError(ins, `could not start the step's sandbox: ${(e as Error).message}`, e);
  }
  buildCounters.sandboxes++;
  try {
    const upper = upperDirOf(sb.pid);
    // With a network the sandbox code writes /etc/hosts itself; that file is not the step's.
    const own = new Map<string, Stats>();
    for (const rel of ['etc/hosts']) {
      try {
        own.set(rel, lstatSync(join(upper, rel)));
      } catch {
        /* not written */
      }
    }
    let r;
    try {
      r = await sb.exec(argv, { env: argEnv });
    } catch (e) {
      throw buildError(ins, `could not run ${JSON.stringify(argv)}: ${(e as Error).message}`, e);
    }
    if (r.exitCode !== 0) {
      const how =
        r.reason === 'output-limit'
          ? `was stopped: it printed more than the output limit (limits.output of the build, default 16MiB)`
          : r.reason === 'timeout'
            ? `was stopped: it ran longer than limits.timeoutMs`
            : r.exitCode === null
              ? `was killed (${r.reason}${r.signal ? `, ${r.signal}` : ''})`
              : `exited with code ${r.exitCode}`;
      const tail = tailOf(r.stderr) || tailOf(r.stdout);
      throw new HutchError('EBUILD', `Dockerfile line ${ins.line} (RUN): ${JSON.stringify(ins.args.length > 200 ? `${ins.args.slice(0, 200)}...` : ins.args)} ${how}${tail ? `:\n${tail}` : ''}`, {
        path: `Dockerfile:${ins.line}`,
      });
    }
    // Nothing of the step may run while its layer is read: a background process it left
    // could otherwise swap a directory for a symlink under the walk. Every process is killed
    // (the sandbox with it) and the layer read through an fd opened before.
    const held = await sb.stopKeepingUpper();
    const tar = new LayerTar(ctx.op);
    try {
      await writeUpper(ctx.store, tar, held.fd, {
        skip: (rel, st) => {
          const was = own.get(rel);
          return was !== undefined && was.ino === st.ino && was.mtimeMs === st.mtimeMs && was.size === st.size;
        },
        cap: layerCap(ctx.store, ctx.o.limits?.disk !== undefined ? resolveLimits(ctx.o.limits).diskBytes : null),
      });
    } catch (e) {
      tar.discard();
      throw e;
    } finally {
      closeSync(held.fd);
      held.release();
    }
    return await tar.toLayer(ctx.store, ctx.op, `Dockerfile line ${ins.line} (RUN)`);
  } finally {
    await sb.destroy();
  }
}

function tailOf(out: Buffer | string): string {
  const s = (typeof out === 'string' ? out : out.toString('utf8')).trimEnd();
  const lines = s.split('\n');
  const t = lines.slice(-20).join('\n');
  return t.length > 2000 ? t.slice(-2000) : t;
}

// ---- the image's own tree -------------------------------------------------------------------

/** `user[:group]` to ids through the image view; a bad user is the build's error (EBUILD). */
async function buildUserIds(view: ImageView, spec: string): Promise<{ uid: number; gid: number }> {
  let ids: { uid: number; gid: number };
  try {
    ids = await userIds(view, spec);
  } catch (e) {
    throw new Error((e as Error).message, { cause: e });
  }
  if (!(ids.uid < ID_LIMIT && ids.gid < ID_LIMIT)) throw new Error(`${spec}: ids must be below ${ID_LIMIT}`);
  return ids;
}

/**
 * Emits directory entries for `parts` and each of its parents that this layer has not
 * written yet: an image directory keeps its metadata (else the new layer would change it),
 * a new one is 0755 and owned by `owner`.
 */
async function ensureDirs(tar: LayerTar, view: ImageView, shift: { uid: number; gid: number } | null, parts: string[], owner: { uid: number; gid: number }, now: number): Promise<void> {
  for (let i = 1; i <= parts.length; i++) {
    const rel = parts.slice(0, i).join('/');
    if (tar.hasDir(rel)) continue;
    const f = await view.lookup(parts.slice(0, i));
    if (f && f.st.isDirectory()) {
      tar.add({ path: rel, type: 'dir', mode: f.st.mode & 0o7777, uid: shift ? f.st.uid - shift.uid : 0, gid: shift ? f.st.gid - shift.gid : 0, mtime: Math.floor(f.st.mtimeMs / 1000) });
    } else {
      tar.add({ path: rel, type: 'dir', mode: 0o755, ...owner, mtime: now });
    }
  }
}

async function userOwner(view: ImageView, state: State): Promise<{ uid: number; gid: number }> {
  const u = state.base.config.config?.User;
  if (typeof u !== 'string' || u === '') return { uid: 0, gid: 0 };
  try {
    return await buildUserIds(view, u);
  } catch {
    return { uid: 0, gid: 0 };
  }
}

async function workdirLayer(ctx: Ctx, state: State, dir: string): Promise<PendingLayer | null> {
  const view = ImageView.of(ctx.store, state.base.layers, 'the base image');
  const parts = await view.resolve(dir, true);
  const f = await view.lookup(parts);
  if (f && f.st.isDirectory()) return null;
  if (f) throw new Error(`WORKDIR ${dir} exists in the image and is not a directory`);
  const tar = new LayerTar(ctx.op);
  try {
    await ensureDirs(tar, view, ctx.store.shift(), parts, await userOwner(view, state), Math.floor(Date.now() / 1000));
    return await tar.toLayer(ctx.store, ctx.op, `WORKDIR ${dir}`);
  } catch (e) {
    tar.discard(); // its fd closed now: a full disk gets its space back
    throw e;
  }
}

// ---- COPY and ADD ---------------------------------------------------------------------------

interface Source {
  /** Path inside the context as written after globbing, for messages and names. */
  rel: string;
  /** The real file or directory (symlinks resolved inside the context). */
  abs: string;
  st: Stats;
}

const GLOB = /[*?[]/;

function globRegex(pat: string): RegExp {
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
function dockerignore(root: string): (rel: string) => boolean {
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
function confine(ctxRoot: string, ins: Instruction, written: string, parts: string[]): string[] {
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

function sources(ctx: Ctx, ins: Instruction, patterns: string[]): Source[] {
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
async function hashSources(ctx: Ctx, ins: Instruction, srcs: Source[]): Promise<string> {
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

async function copyPlan(ctx: Ctx, ins: Instruction, state: State, vars: Map<string, string>) {
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
      const shift = ctx.store.shift();
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
function noWhiteout(ins: Instruction, rel: string): void {
  const name = rel.split('/').find((p) => p.startsWith('.wh.'));
  if (name !== undefined) {
    throw buildError(ins, `${JSON.stringify(rel)}: the name ${JSON.stringify(name)} starts with .wh., which marks a whiteout in an image layer; rename it or exclude it in .dockerignore`);
  }
}

/** A local tar for ADD: plain, gzip or zstd (bzip2 and xz are refused when extracted). */
async function isArchive(path: string): Promise<boolean> {
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
async function addArchive(ctx: Ctx, ins: Instruction, tar: LayerTar, s: Source, destParts: string[], owner: { uid: number; gid: number } | null, chmod: number | undefined): Promise<void> {
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

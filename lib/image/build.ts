/**
 * Dockerfile builds (docs/images.md, "Build"): FROM, RUN in a hutch sandbox, COPY and ADD
 * from a local context as layers written directly (no sandbox), ENV, ARG, WORKDIR, USER,
 * CMD, ENTRYPOINT, EXPOSE, LABEL, SHELL, STOPSIGNAL, MAINTAINER. Each step is an image in the
 * store; a cache (buildcache/<key>.json → image id) keyed by the parent image, the step after
 * substitution and, for COPY/ADD, the sources' content, lets an unchanged rebuild do no work.
 */
import { createHash } from 'node:crypto';
import { realpathSync, statSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { join, posix } from 'node:path';
import { HutchError, invalid } from '../errors.js';
import { resolveLimits } from '../limits.js';
import { baseOf, childImage, scratchBase, type BaseImage, type OciConfig } from './commit.js';
import { buildError, jsonForm, keyValues, parseDockerfile, processWord, processWords, type Instruction } from './dockerfile.js';
import type { PendingLayer } from './import.js';
import type { Image } from './types.js';
import type { StoreContext } from './context.js';
import { type BuildOptions, buildCounters, CACHE_VERSION, type State, type Ctx, varsOf, envList, setEnv, shellOf, workdirOf } from './build/state.js';
import { runLayer } from './build/run.js';
import { workdirLayer } from './build/view.js';
import { storeHooks } from './hooks.js';
import { copyPlan, dockerignore } from './build/context.js';

export { buildCounters, type BuildOptions } from './build/state.js';

/** See ImageStore.build. */
export async function build(store: StoreContext, o: BuildOptions): Promise<Image> {
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

storeHooks.build = build;

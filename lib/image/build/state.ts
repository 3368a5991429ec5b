/** A build's options and state, shared by its steps (lib/image/build.ts and lib/image/build/). */
import type { BaseImage, OciConfig } from '../commit.js';
import type { BuildOptions } from '../build-options.js';
import type { Op, StoreContext } from '../context.js';

export type { BuildOptions } from '../build-options.js';

/** Work done by builds in this process, for tests and tools: a cached rebuild adds only to `cacheHits`. */
export const buildCounters = { steps: 0, cacheHits: 0, sandboxes: 0, layers: 0 };

export const DEFAULT_SHELL = ['/bin/sh', '-c'];
export const CACHE_VERSION = 1;

export interface State {
  base: BaseImage;
  /** ARGs declared after FROM, with their values. */
  args: Map<string, string>;
  /** A CMD came from this Dockerfile (an ENTRYPOINT then keeps it; else it drops the base's). */
  cmdSet: boolean;
}

export interface Ctx {
  store: StoreContext;
  op: Op;
  o: BuildOptions;
  escape: string;
  context: string | null;
  /** True for a context path (relative, `/`-separated) that `.dockerignore` leaves out. */
  ignored: (rel: string) => boolean;
  pinned: Set<string>;
}


/** Variables for substitution: ARGs, overridden by the image's ENV (as Docker). */
export function varsOf(state: State): Map<string, string> {
  const vars = new Map(state.args);
  for (const kv of envList(state.base.config)) {
    const i = kv.indexOf('=');
    if (i > 0) vars.set(kv.slice(0, i), kv.slice(i + 1));
  }
  return vars;
}

export function envList(c: OciConfig): string[] {
  const e = c.config?.Env;
  return Array.isArray(e) ? (e.filter((s) => typeof s === 'string') as string[]) : [];
}

export function setEnv(c: Record<string, unknown>, name: string, value: string): void {
  const env = (Array.isArray(c.Env) ? c.Env : []).filter((kv: unknown) => typeof kv === 'string' && !kv.startsWith(`${name}=`)) as string[];
  env.push(`${name}=${value}`);
  c.Env = env;
}

export function shellOf(state: State): string[] {
  const s = state.base.config.config?.Shell;
  return Array.isArray(s) && s.length > 0 && s.every((x) => typeof x === 'string') ? (s as string[]) : DEFAULT_SHELL;
}

export function workdirOf(state: State): string {
  const w = state.base.config.config?.WorkingDir;
  return typeof w === 'string' && w !== '' ? w : '/';
}

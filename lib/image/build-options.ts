/** The options of ImageStore.build, apart from the builder (lib/image/build.ts, above the runtime). */
import type { Limits } from '../limit-types.js';
import type { NetworkOptions } from '../network/options.js';
import type { Progress } from './types.js';

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

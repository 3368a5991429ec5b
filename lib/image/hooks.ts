/**
 * What the image layer needs from the runtime above it, registered by the runtime
 * (lib/sandbox.ts) when it loads: the store never imports the runtime, so no import cycle and
 * no `import()` to dodge one.
 */
import type { NetworkOptions } from '../network/options.js';
import type { BuildOptions } from './build-options.js';
import type { StoreContext } from './context.js';
import type { Image } from './types.js';

/** How a RUN step's command ended, as much of Sandbox.exec's ExecResult as a build reads. */
export interface StepResult {
  exitCode: number | null;
  reason: string;
  signal: string | null;
  stdout: Buffer | string;
  stderr: Buffer | string;
}

/** A RUN step's sandbox (a Sandbox), as much of it as a build uses. */
export interface StepSandbox {
  readonly pid: number;
  exec(argv: string[], options: { env: Record<string, string> }): Promise<StepResult>;
  stopKeepingUpper(): Promise<{ fd: number; release: () => void }>;
  destroy(): Promise<void>;
}

/** Starts a RUN step's sandbox (Sandbox.create with these options; `limits` is the build's `Limits`). */
export type StepRunner = (options: { image: string; store: unknown; network: 'none' | NetworkOptions; limits?: unknown }) => Promise<StepSandbox>;

export const storeHooks: {
  /** Drops this process's warm blanks (lib/warm.ts), which hold image layers, before a gc. */
  dropBlanks: () => Promise<void>;
  /** Runs a build's RUN step; unset until the runtime loads. */
  runStep: StepRunner | null;
  /** ImageStore.build's builder (lib/image/build.ts, which needs the runtime); set when it loads (lib/index.ts loads it). */
  build: ((store: StoreContext, options: BuildOptions) => Promise<Image>) | null;
} = {
  dropBlanks: async () => undefined,
  runStep: null,
  build: null,
};

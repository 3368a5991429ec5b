/** A RUN step: the command in a sandbox (from the runtime's hook, lib/image/hooks.ts), its writable layer as the step's layer. */
import { closeSync, lstatSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import { HutchError } from '../../errors.js';
import { upperDirOf } from '../../conventions.js';
import { resolveLimits } from '../../limits.js';
import type { NetworkOptions } from '../../network/options.js';
import { storeHooks, type StepSandbox } from '../hooks.js';
import { LayerTar, layerCap, writeUpper } from '../commit.js';
import { buildError, type Instruction } from '../dockerfile.js';
import type { PendingLayer } from '../import.js';
import { buildCounters, type State, type Ctx } from './state.js';

// ---- RUN -----------------------------------------------------------------------------------

export async function runLayer(ctx: Ctx, ins: Instruction, state: State, argv: string[], argEnv: Record<string, string>, network: 'none' | NetworkOptions): Promise<PendingLayer | null> {
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
    // Stopped for a limit fails the step also when the command exited 0 first (its output
    // past the cap was still in the pipe: the cap is reached as it is read).
    if (r.exitCode !== 0 || r.reason === 'output-limit' || r.reason === 'timeout') {
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

export function tailOf(out: Buffer | string): string {
  const s = (typeof out === 'string' ? out : out.toString('utf8')).trimEnd();
  const lines = s.split('\n');
  const t = lines.slice(-20).join('\n');
  return t.length > 2000 ? t.slice(-2000) : t;
}

/**
 * The first sandbox a process creates starts, in the background, the cleanup of what dead
 * hutch processes left on the host (lib/host/prune.ts): their cgroups, links, nftables state,
 * leases, and the records and loop-mounted disks of their sandboxes in whichever store. It
 * runs at most once per process, never delays the create, and a failure is emitted as a
 * process warning ('HutchPruneWarning'), never thrown into the create. Unused layers stay:
 * collecting those is `ImageStore.prune()`'s. `Sandbox.settle()` waits for it.
 */
import { HutchError } from '../errors.js';
import { DEFAULT_PRUNE_GRACE_MS, pruneHost, type HostPruneResult } from '../host/prune.js';
import { inBackground } from '../teardowns.js';
import { storeSide } from './gc.js';
import type { StoreContext } from './context.js';

let started: Promise<HostPruneResult | undefined> | undefined;

/** Starts the background cleanup unless this process started it already (or HUTCH_BACKGROUND_PRUNE=0). */
export function startBackgroundPrune(store: StoreContext): void {
  if (started || process.env.HUTCH_BACKGROUND_PRUNE === '0') return;
  started = new Promise<void>((r) => setImmediate(r))
    .then(() => pruneHost(storeSide(store, false, DEFAULT_PRUNE_GRACE_MS)))
    .catch((e: unknown) => {
      const err = HutchError.is(e) ? e : new HutchError('ECLEANUP', `background prune: ${String(e)}`, { cause: e });
      process.emitWarning(`hutch could not clean up after dead processes: ${err.message}`, { type: 'HutchPruneWarning', code: err.code, detail: err.hint });
      return undefined;
    });
  inBackground(started.then(() => undefined));
}

/** The background cleanup's result once it ended (undefined when it failed or never started). @internal */
export function backgroundPrune(): Promise<HostPruneResult | undefined> | undefined {
  return started;
}

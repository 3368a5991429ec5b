/**
 * @internal Tests only, not part of the API (not exported by lib/index.ts, not in the docs):
 * makes the next sandbox start in this process fail at `step` as if that step's call had
 * returned `errno`, once. Parent-side steps (clone, id_map) fail in the addon; the others in
 * the setup child, at the step's first op or its fixed place (addon/child.cc maybe_fail). The
 * error must come out of the ordinary path: ESETUP with the step, errno, path and hint, and
 * everything made for the sandbox undone.
 */
import { constants } from 'node:os';
import { HutchError } from '../errors.js';
import { SETUP_STEPS, type SetupStep } from '../setup-errors.js';

let next: { step: SetupStep; errno: string } | null = null;

export function failSetupOnce(step: (typeof SETUP_STEPS)[number], errno: string): void {
  if (!SETUP_STEPS.includes(step)) throw new HutchError('EINVAL', `failSetupOnce: ${String(step)} is not a setup step`);
  if (!((constants.errno as Record<string, number>)[errno]! > 0)) throw new HutchError('EINVAL', `failSetupOnce: ${errno} is not an errno name`);
  next = { step, errno };
}

/** The failure to inject into the plan being encoded, once. */
export function takeInjectedFailure(): { step: SetupStep; errno: string } | null {
  const f = next;
  next = null;
  return f;
}

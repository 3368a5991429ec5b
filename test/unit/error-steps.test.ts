// HutchError.step is a closed union (lib/errors.ts HutchErrorStep): the lists it is made of
// must agree with the C sides that report them (addon/steps.h is checked in errors.test.ts).
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { EXEC_STEPS as EXEC_STEP_NAMES, HutchError, SETUP_STEPS, type HutchErrorStep } from '../../lib/errors.js';
import { EXEC_STEPS } from '../../lib/protocol.js';
import { setupError } from '../../lib/setup-errors.js';

describe('HutchError.step', () => {
  it("init's exec steps (addon/init/protocol.h XSTEP_*) are the numbers lib/protocol.ts decodes", () => {
    const h = readFileSync(new URL('../../addon/init/protocol.h', import.meta.url), 'utf8');
    const fromC = [...h.matchAll(/XSTEP_([A-Z_]+)\s*=\s*(\d+)/g)].map((m) => [Number(m[2]), m[1]!.toLowerCase()] as const);
    expect(fromC.length).toBe(EXEC_STEP_NAMES.length);
    for (const [n, name] of fromC) expect(EXEC_STEPS[n]).toBe(name);
  });

  it('a setup failure carries its step as given, and the union holds every listed step', () => {
    const all: HutchErrorStep[] = [...SETUP_STEPS, ...EXEC_STEP_NAMES, 'network', 'open', 'destroy'];
    for (const step of all) {
      const e = setupError({ errno: 22, step });
      expect(HutchError.is(e)).toBe(true);
      expect(e.step).toBe(step);
      expect(e.message).toContain(`failed at ${step}`);
    }
  });
});

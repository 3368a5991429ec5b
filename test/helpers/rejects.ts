import { expect } from 'vitest';
import { HutchError } from '../../lib/errors.js';

/** The HutchError a promise rejects with; fails the test when it resolves or rejects with anything else. */
export async function hutchFailure(p: Promise<unknown>): Promise<HutchError> {
  try {
    await p;
  } catch (e) {
    expect(HutchError.is(e), String(e)).toBe(true);
    return e as HutchError;
  }
  throw new Error('expected a rejection');
}

/** Asserts that `f` throws EINVAL naming `field` (sync validation). */
export function einval(f: () => unknown, field: string): void {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err, `expected EINVAL naming ${field}`).toMatchObject({ code: 'EINVAL' });
  expect((err as Error).message).toContain(field);
}

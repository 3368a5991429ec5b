/**
 * A test that needs a host feature skips with the reason; with HUTCH_REQUIRE_ALL=1 (CI sets
 * it) the missing feature fails the test instead, so CI never goes green by skipping.
 */
export const REQUIRE_ALL = process.env.HUTCH_REQUIRE_ALL === '1';

/** Returns undefined when `ok`, else the reason; throws when HUTCH_REQUIRE_ALL=1. */
export function needs(ok: boolean, reason: string): string | undefined {
  if (ok) return undefined;
  if (REQUIRE_ALL) throw new Error(`HUTCH_REQUIRE_ALL=1 but a test needs what this host lacks: ${reason}`);
  return reason;
}

export const isRoot = process.getuid?.() === 0;

// Shared by the crash and chaos children (test/helpers/*-child.mjs).

/** The lease slot (8 hex) of a bridged sandbox: its /30's network address; null without a bridge. */
export function slotOf(sb) {
  const a = sb.network?.address;
  if (!a) return null;
  const n = a.split('.').reduce((x, p) => x * 256 + Number(p), 0) - 2;
  return (n >>> 0).toString(16).padStart(8, '0');
}

/** mulberry32: a small seeded PRNG, so that a seed replays the same schedule. */
export function seeded(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

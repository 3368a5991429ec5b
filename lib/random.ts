/**
 * Random hex names for the hot path (sandbox ids, lease temp files): taken from a pool of
 * CSPRNG bytes refilled 4 KiB at a time, not a `randomBytes` call each (7–16 µs of CPU each
 * here, several per start; a pooled name costs under a microsecond). The bytes are the same
 * quality: `randomFillSync` is `randomBytes` into our buffer. A process that inherited the pool
 * through a fork (a different pid) refills it first, so two processes never hand out the same
 * names.
 */
import { randomFillSync } from 'node:crypto';

const pool = Buffer.alloc(4096);
let offset = pool.length;
let owner = 0;

/** `bytes` random bytes as 2×`bytes` hex digits. */
export function randomHex(bytes: number): string {
  if (offset + bytes > pool.length || owner !== process.pid) {
    randomFillSync(pool);
    offset = 0;
    owner = process.pid;
  }
  const s = pool.toString('hex', offset, offset + bytes);
  // Never handed out twice: the used bytes are wiped.
  pool.fill(0, offset, offset + bytes);
  offset += bytes;
  return s;
}

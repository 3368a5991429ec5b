/**
 * The plan a template's fork receives (lib/template/plan.ts) writes its rlimit records with
 * the exec request's writer (lib/protocol.ts writeRlimits): an unlimited value is
 * RLIM_INFINITY there too (it was BigInt(Infinity), a RangeError, before they shared it).
 */
import { describe, expect, it } from 'vitest';
import { encodePlan } from '../../lib/template/plan.js';

const RLIM_INFINITY = 0xffffffffffffffffn;

describe('template fork plan', () => {
  it('encodes rlimits as the exec request does, unlimited included', () => {
    const buf = encodePlan({
      uid: 0, gid: 0, caps: 0n, seccomp: null, scratchSize: '1m', shmSize: '1m', hostname: 'h',
      masked: [], readonly: [], skip: [], readonlyRoot: false,
      rlimits: [{ resource: 7, soft: 64, hard: Infinity }, { resource: 3, soft: -1, hard: 8 * 1024 * 1024 }],
    });
    const at = 56; // after the fixed header (struct hz_plan)
    expect(buf.readUInt32LE(12)).toBe(2);
    expect(buf.readUInt32LE(at)).toBe(7);
    expect(buf.readBigUInt64LE(at + 8)).toBe(64n);
    expect(buf.readBigUInt64LE(at + 16)).toBe(RLIM_INFINITY);
    expect(buf.readUInt32LE(at + 24)).toBe(3);
    expect(buf.readBigUInt64LE(at + 32)).toBe(RLIM_INFINITY);
    expect(buf.readBigUInt64LE(at + 40)).toBe(8n * 1024n * 1024n);
  });
});

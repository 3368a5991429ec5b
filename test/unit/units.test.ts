// Pure TypeScript: runs anywhere, no kernel features needed.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { HutchError } from '../../lib/errors.js';
import { MAX_DURATION_MS, parseByteSize, parseCount, parseDurationMs, parseRate } from '../../lib/units.js';

function einval(fn: () => unknown, ...mustMention: string[]): HutchError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(HutchError.is(err), `expected a HutchError, got ${String(err)}`).toBe(true);
  const he = err as HutchError;
  expect(he.code).toBe('EINVAL');
  for (const m of mustMention) expect(he.message).toContain(m);
  return he;
}

describe('parseByteSize', () => {
  it.each([
    [512, 512],
    ['512', 512],
    ['64k', 65536],
    ['64K', 65536],
    ['64KiB', 65536],
    ['64kib', 65536],
    ['64Ki', 65536],
    ['1.5G', 1610612736],
    ['256MiB', 268435456],
    ['256m', 268435456],
    ['10MB', 10_000_000],
    ['10kB', 10_000],
    ['2TB', 2e12],
    ['1T', 1024 ** 4],
    [' 7 MiB ', 7 * 1024 ** 2],
    ['100b', 100],
    ['.5k', 512],
  ])('%j is %d bytes', (input, bytes) => {
    expect(parseByteSize('limits.memory', input)).toBe(bytes);
  });

  it.each([
    [-1],
    [0],
    [1.5],
    [NaN],
    [Infinity],
    [-Infinity],
    [''],
    ['  '],
    ['-5M'],
    ['+5M'],
    ['5 MBs'],
    ['5X'],
    ['1e9'],
    ['0x10'],
    ['five'],
    ['5M5'],
    [null],
    [true],
    [{}],
    [[1]],
    [2 ** 53],
    ['99999999T'],
  ])('rejects %j with EINVAL naming the field and the forms', (input) => {
    einval(() => parseByteSize('limits.memory', input), 'limits.memory', "'256MiB'");
  });

  it('honours min and max, naming the range', () => {
    expect(parseByteSize('f', 0, { min: 0 })).toBe(0);
    expect(parseByteSize('f', '0', { min: 0 })).toBe(0);
    einval(() => parseByteSize('limits.memory', '512k', { min: 1024 * 1024 }), 'at least 1MiB');
    einval(() => parseByteSize('f', '2G', { min: 1, max: 1024 ** 3 }), 'to 1GiB');
  });

  it('rounds fractional strings to the nearest byte', () => {
    expect(parseByteSize('f', '0.3k')).toBe(307);
    expect(parseByteSize('f', '1.5')).toBe(2);
  });

  it('property: every safe positive integer round-trips, as a number and as a string', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }), (n) => {
        expect(parseByteSize('f', n)).toBe(n);
        expect(parseByteSize('f', String(n))).toBe(n);
      }),
    );
  });

  it('property: N<unit> is N times the unit for every binary and decimal unit', () => {
    const units: [string, number][] = [
      ['k', 1024], ['KiB', 1024], ['M', 1024 ** 2], ['MiB', 1024 ** 2], ['G', 1024 ** 3], ['GiB', 1024 ** 3],
      ['kB', 1000], ['MB', 1e6], ['GB', 1e9], ['TB', 1e12], ['T', 1024 ** 4],
    ];
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 4096 }), fc.constantFrom(...units), (n, [u, m]) => {
        expect(parseByteSize('f', `${n}${u}`)).toBe(n * m);
      }),
    );
  });

  it('property: arbitrary strings either parse to a safe positive integer or throw EINVAL', () => {
    fc.assert(
      fc.property(fc.string(), (s) => {
        try {
          const v = parseByteSize('f', s);
          expect(Number.isSafeInteger(v) && v >= 1).toBe(true);
        } catch (e) {
          expect(HutchError.is(e) && e.code === 'EINVAL').toBe(true);
        }
      }),
    );
  });
});

describe('parseRate', () => {
  it.each([
    [1000, 1000],
    ['1000', 1000],
    ['500kbit', 500_000],
    ['10mbit', 10_000_000],
    ['10Mbit', 10_000_000],
    ['1gbit', 1e9],
    ['1kibit', 1024],
    ['2MBps', 16_000_000],
    ['1kBps', 8000],
    ['3Bps', 24],
    ['1KiBps', 8192],
    ['12bit', 12],
    ['1.5mbit', 1_500_000],
  ])('%j is %d bit/s', (input, bits) => {
    expect(parseRate('network.egress', input)).toBe(bits);
  });

  it.each([[0], [-1], [NaN], [Infinity], [''], ['10'.repeat(20)], ['10m'], ['10 mb'], ['fast'], ['1e6bit'], [null], [{}], ['10kbitx'], ['0bit']])(
    'rejects %j with EINVAL naming the field',
    (input) => {
      einval(() => parseRate('network.egress', input), 'network.egress', "'10mbit'");
    },
  );

  it("asks which was meant for a lower-case 'bps' (tc reads bytes, people mean bits)", () => {
    einval(() => parseRate('network.ingress', '10mbps'), 'network.ingress', "'10mbit'", "'10mBps'");
  });
});

describe('parseCount and parseDurationMs', () => {
  it('parseCount takes whole numbers in range only', () => {
    expect(parseCount('limits.pids', 64)).toBe(64);
    for (const bad of [0, -1, 1.5, NaN, Infinity, '64', null]) einval(() => parseCount('limits.pids', bad), 'limits.pids', 'whole number');
    einval(() => parseCount('limits.pids', 10, 1, 5), 'from 1 to 5');
  });

  it('parseDurationMs takes positive finite ms up to the timer maximum, rounded up', () => {
    expect(parseDurationMs('limits.timeoutMs', 2000)).toBe(2000);
    expect(parseDurationMs('limits.timeoutMs', 0.2)).toBe(1);
    expect(parseDurationMs('limits.timeoutMs', MAX_DURATION_MS)).toBe(MAX_DURATION_MS);
    for (const bad of [0, -5, NaN, Infinity, MAX_DURATION_MS + 1, '2s', null]) {
      einval(() => parseDurationMs('limits.timeoutMs', bad), 'limits.timeoutMs', 'milliseconds');
    }
  });
});

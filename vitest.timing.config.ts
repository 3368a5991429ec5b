import { defineConfig } from 'vitest/config';

// Tests that measure rates against the clock (CPU quota shares, tc shaping): `npm test` runs
// them after the rest, one file at a time, so that 200-sandbox neighbours or fork bombs in
// another worker do not steal the CPU they measure.
export const TIMING_FILES = ['test/network-shaping.test.ts', 'test/limits.test.ts', 'test/cgroup-v1.test.ts'];

export default defineConfig({
  test: {
    include: TIMING_FILES,
    globalSetup: ['test/helpers/global-setup.ts'],
    setupFiles: ['test/helpers/settle.ts'],
    env: { HUTCH_ROOT: process.env.HUTCH_ROOT ?? '/var/tmp/hutch-test-store' },
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    maxWorkers: 1,
    fileParallelism: false,
  },
});

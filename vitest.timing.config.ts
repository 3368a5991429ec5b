import { defineConfig } from 'vitest/config';

// `npm test` runs these files after the rest, one file at a time (vitest.config.ts leaves
// them out, so each runs exactly once):
// - tests that measure rates against the clock (CPU quota shares, tc shaping), so that
//   200-sandbox neighbours or fork bombs in another worker do not steal the CPU they measure;
export const TIMING_FILES = ['test/network/shaping.test.ts', 'test/kernel/limits.test.ts', 'test/kernel/cgroup-v1.test.ts', 'test/network/userspace.test.ts'];
// - tests that count host-wide state (every mount of the host, every hutch link), so that
//   another file's sandboxes, starting or ending meanwhile, do not change the count.
//   A test that counts only what it made itself (its own ids, cgroup parent, address range)
//   stays in the parallel part.
export const HOST_WIDE_FILES = ['test/reliability/soak.test.ts', 'test/network/netlink.test.ts', 'test/runtime/template-soak.test.ts', 'test/reliability/chaos.test.ts',
  // Asserts that its pruners removed nothing: prune is host-wide now (every dead sandbox's
  // leftovers, whichever store), so a crash test running beside it would give it work.
  'test/reliability/concurrency.test.ts',
  // Leaves dead sandboxes' leftovers (a broken store among them) for its own prunes to find:
  // every other process's background prune would meet them too and warn.
  'test/kernel/host-prune.test.ts'];
export const SERIAL_FILES = [...TIMING_FILES, ...HOST_WIDE_FILES];

export default defineConfig({
  test: {
    include: SERIAL_FILES,
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

import { defineConfig } from 'vitest/config';

// The files .ci/run runs a second time under ../shared/tools/v2vm: a pure cgroup v2 host on
// Debian's 6.1 kernel (the LTS most distributions ship), which also has the quota support
// this project's CI host kernel lacks.
export default defineConfig({
  test: {
    include: ['test/kernel/cgroup-v2.test.ts', 'test/vm/**/*.test.ts', 'test/image/layers.test.ts', 'test/kernel/namespaces.test.ts', 'test/kernel/limits.test.ts', 'test/runtime/errors-steps.test.ts', 'test/runtime/plan.test.ts', 'test/kernel/mounts.test.ts', 'test/runtime/rootless.test.ts', 'test/runtime/memory-accounting.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    setupFiles: ['test/helpers/settle.ts'],
    env: { HUTCH_ROOT: process.env.HUTCH_ROOT ?? '/tmp/hutch-v2-store' },
    testTimeout: 600_000,
    hookTimeout: 600_000,
    pool: 'forks',
    maxWorkers: 1,
  },
});

import { defineConfig } from 'vitest/config';
import { SERIAL_FILES } from './vitest.timing.config.js';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // test/vm/ needs a kernel this host lacks: .ci/run runs it under ../shared/tools/v2vm.
    // Clock-measuring tests and tests that count host-wide state run after, alone:
    // vitest.timing.config.ts.
    exclude: ['test/vm/**', '**/node_modules/**', ...SERIAL_FILES],
    // The suite ends by checking that no hutch cgroup, mount, netns, veth or process is left.
    globalSetup: ['test/helpers/global-setup.ts'],
    setupFiles: ['test/helpers/settle.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // One store for the whole suite (tests that need their own make a temp one).
    env: { HUTCH_ROOT: process.env.HUTCH_ROOT ?? '/var/tmp/hutch-test-store' },
    pool: 'forks',
    maxWorkers: 2,
  },
});

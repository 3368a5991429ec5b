import { defineConfig } from 'vitest/config';

// Templates on a pure cgroup v2 host with Debian's 6.1 kernel (.ci/run, under
// ../shared/tools/v2vm; scripts/v2vm-templates.sh puts the store on an XFS image first): before
// 6.6 a fork's writable layer is a directory on the store's disk (docs/templates.md, "Older
// kernels"), and before 6.8 its layers go to overlay as one list. As vitest.vm.config.ts.
export default defineConfig({
  test: {
    include: ['test/runtime/template.test.ts', 'test/network/template.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    setupFiles: ['test/helpers/settle.ts'],
    testTimeout: 600_000,
    hookTimeout: 600_000,
    pool: 'forks',
    maxWorkers: 1,
  },
});

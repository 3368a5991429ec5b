// The tests that are not root-specific, run as an ordinary user (.ci/run: scripts/rootless-ci.sh):
// the same files as in the root suite, with a store and caches of the user's own. A plain .mjs
// config: vite would write a bundled .ts config into node_modules, which the user may not write.
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineConfig } from 'vitest/config';

const uid = process.getuid?.() ?? 0;
export const ROOTLESS_FILES = (process.env.HUTCH_ROOTLESS_FILES ?? '').split(/\s+/).filter(Boolean);

export default defineConfig({
  cacheDir: join(tmpdir(), `hutch-vitest-${uid}`),
  test: {
    include: ROOTLESS_FILES.length > 0 ? ROOTLESS_FILES : ['test/rootless/**/*.test.ts'],
    exclude: ['test/vm/**', '**/node_modules/**'],
    globalSetup: ['test/helpers/global-setup.ts'],
    setupFiles: ['test/helpers/settle.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    env: { HUTCH_ROOT: process.env.HUTCH_ROOT ?? join(tmpdir(), `hutch-test-store-${uid}`) },
    pool: 'forks',
    // One file at a time: the list includes clock-measuring files (limits: CPU shares).
    maxWorkers: 1,
    fileParallelism: false,
  },
});

import { defineConfig } from 'vitest/config';

// Run with: npx vitest run --root examples/test-harness
export default defineConfig({
  test: {
    include: ['*.test.ts'],
    // Each test makes and destroys a sandbox (a few tens of ms; with a network link ~100 ms).
    testTimeout: 30_000,
    hookTimeout: 30_000,
    pool: 'forks',
    fileParallelism: false,
  },
});

/**
 * Per test file (vitest setupFiles): Sandbox.run tears its sandbox down in the background
 * once the command has ended; wait for those teardowns, and fail the file if one failed.
 */
import { afterAll } from 'vitest';
import { Sandbox } from '../../lib/index.js';

afterAll(async () => {
  await Sandbox.settle();
});

/**
 * Per test file (vitest setupFiles): Sandbox.run tears its sandbox down in the background
 * once the command has ended; wait for those teardowns, and fail the file if one failed.
 * Then this worker's spare lease files and owner records go: vitest ends its workers with a
 * signal, so the exit handler that removes them would not run.
 */
import { afterAll } from 'vitest';
import { Sandbox } from '../../lib/index.js';
import { dropSpares } from '../../lib/host/lease.js';

afterAll(async () => {
  await Sandbox.settle();
  dropSpares();
});

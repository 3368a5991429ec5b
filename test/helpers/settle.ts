/**
 * Per test file (vitest setupFiles): Sandbox.run tears its sandbox down in the background
 * once the command has ended; wait for those teardowns, and fail the file if one failed.
 * Then this worker's spare lease files and owner records go, and its pins in the shared
 * memory cgroup: vitest ends its workers with a signal, so the exit handler that removes them
 * would not run.
 */
import { afterAll } from 'vitest';
import { Sandbox } from '../../lib/index.js';
import { dropSpares } from '../../lib/host/lease.js';
import { dropSharedPins } from '../../lib/cgroup/v1.js';

afterAll(async () => {
  await Sandbox.settle();
  dropSpares();
  dropSharedPins(); // and its pins in the shared memory cgroup (v1/hybrid), for the same reason
});

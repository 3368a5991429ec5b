// The output cap reached by what a process wrote just before it exited: its last output sits in
// the pipe's buffer and is read at (or after) init's exit report. The reason is 'output-limit'
// whichever comes first, the read or the report; a build's RUN step decides on it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../lib/index.js';

describe('output cap at the exit', () => {
  let sb: Sandbox;
  beforeAll(async () => {
    sb = await Sandbox.create({ image: 'busybox' });
  });
  afterAll(() => sb.destroy());

  it("says 'output-limit' when the output over the cap was written right before the exit", async () => {
    const reasons = new Set<string>();
    for (let i = 0; i < 40; i++) {
      // 16 KiB at once, then exit: it all fits in the pipe's buffer, so the process never
      // waits for the reader and has often exited before hutch reads past the 1 KiB cap.
      const r = await sb.exec(['sh', '-c', 'head -c 16384 /dev/zero'], { output: 1024 });
      expect(r.truncated).toBe(true);
      expect(r.stdout.length).toBe(1024);
      reasons.add(r.reason);
    }
    expect([...reasons]).toEqual(['output-limit']);
  });
});

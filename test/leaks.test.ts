import { readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Sandbox } from '../lib/index.js';
import { leftovers } from './helpers/leaks.js';

const fdCount = () => readdirSync('/proc/self/fd').length;

describe('leaks', () => {
  it('200 create/exec/destroy cycles leave no fd, cgroup, mount or process behind', async () => {
    // Warm up: the addon, the init memfd and the builtin image are made once per process.
    await Sandbox.run({ image: 'busybox', command: ['true'] });
    // ... and a burst, so that caches bounded by design (id-range namespaces) are full already.
    await Promise.all(Array.from({ length: 20 }, () => Sandbox.run({ image: 'busybox', command: 'echo hi' })));
    await Sandbox.settle();
    const fds = fdCount();
    // Other test files run at the same time: look only for what this test's sandboxes left.
    const ids: string[] = [];
    for (let i = 0; i < 200; i++) {
      const sb = await Sandbox.create({ image: 'busybox', limits: { pids: 32 } });
      ids.push(sb.id);
      if (i % 20 === 0) expect((await sb.exec(['true'])).exitCode).toBe(0);
      await sb.destroy();
      // Its init is gone: the kernel has no such process any more.
      expect(() => process.kill(sb.pid, 0)).toThrow();
    }
    // Concurrent ones too.
    await Promise.all(Array.from({ length: 20 }, () => Sandbox.run({ image: 'busybox', command: 'echo hi' })));
    await Sandbox.settle();
    expect(fdCount()).toBe(fds);
    const pids = new Set<number>();
    const left = (await leftovers()).filter((l) => ids.some((id) => l.includes(id)));
    expect(left).toEqual([]);
    expect(pids.size).toBe(0);
  }, 120_000);
});

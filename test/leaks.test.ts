import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Sandbox } from '../lib/index.js';
import { leftovers } from './helpers/leaks.js';

const fdCount = () => readdirSync('/proc/self/fd').length;

/** A process's start time (clock ticks since boot), or undefined once it is gone or a zombie. */
function startTime(pid: number): string | undefined {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    return f[0] === 'Z' || f[0] === 'X' ? undefined : f[19];
  } catch {
    return undefined;
  }
}

/** Direct children of every thread of this process. */
function children(): number[] {
  const out: number[] = [];
  for (const t of readdirSync('/proc/self/task')) {
    try {
      for (const c of readFileSync(`/proc/self/task/${t}/children`, 'utf8').trim().split(/\s+/)) if (c) out.push(Number(c));
    } catch {}
  }
  return out;
}

describe('leaks', () => {
  it('200 create/exec/destroy cycles leave no fd, cgroup, mount or process behind', async () => {
    // Warm up: the addon, the init memfd and the builtin image are made once per process.
    await Sandbox.run({ image: 'busybox', command: ['true'] });
    // ... and a burst, so that caches bounded by design (id-range namespaces) are full already.
    await Promise.all(Array.from({ length: 20 }, () => Sandbox.run({ image: 'busybox', command: 'echo hi' })));
    await Sandbox.settle();
    const fds = fdCount();
    const kids = children().sort();
    // Other test files run at the same time: look only for what this test's sandboxes left.
    // The processes it started: each sandbox's init, by pid and start time (a pid the kernel
    // hands to someone else later is not ours).
    const ids: string[] = [];
    const pids = new Map<number, string>();
    const started = (sb: Sandbox): void => {
      ids.push(sb.id);
      const t = startTime(sb.pid);
      expect(t, `sandbox ${sb.id}'s init ${sb.pid} runs`).toBeTypeOf('string');
      pids.set(sb.pid, t!);
    };
    for (let i = 0; i < 200; i++) {
      const sb = await Sandbox.create({ image: 'busybox', limits: { pids: 32 } });
      started(sb);
      if (i % 20 === 0) expect((await sb.exec(['true'])).exitCode).toBe(0);
      await sb.destroy();
      // Its init is gone as destroy returns.
      expect(startTime(sb.pid)).not.toBe(pids.get(sb.pid));
    }
    // Concurrent ones too.
    await Promise.all(
      Array.from({ length: 20 }, async () => {
        const sb = await Sandbox.create({ image: 'busybox' });
        started(sb);
        expect((await sb.exec('echo hi', { encoding: 'utf8' })).stdout).toBe('hi\n');
        await sb.destroy();
      }),
    );
    await Sandbox.settle();
    expect(pids.size).toBe(220);
    expect(fdCount()).toBe(fds);
    const left = (await leftovers()).filter((l) => ids.some((id) => l.includes(id)));
    expect(left).toEqual([]);
    // No process this test started still runs, and this process has no child it had not before.
    expect([...pids].filter(([pid, t]) => startTime(pid) === t).map(([pid]) => pid)).toEqual([]);
    expect(children().sort()).toEqual(kids);
  }, 120_000);
});

import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Sandbox } from '../../lib/index.js';
import { leftovers } from '../helpers/leaks.js';

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

  it('1000 tty spawns leave no fd, pty or process behind', async () => {
    // Counts only its own: this process's fds, and the ptys and processes of its sandbox (ptys
    // come from the sandbox's own devpts), so it needs no serial run.
    const sb = await Sandbox.create({ image: 'busybox' });
    try {
      const warm = sb.spawn(['true'], { tty: true });
      warm.stdout.resume();
      await warm.result;
      const fds = fdCount();
      const kids = children().sort();
      for (let i = 0; i < 1000; i += 20) {
        await Promise.all(
          Array.from({ length: 20 }, async (_, j) => {
            // Three ways to end: on its own, killed while its stdin is open, and after EOF.
            const k = (i + j) % 3;
            const p = sb.spawn(k === 2 ? ['cat'] : ['sh', '-c', k === 0 ? 'echo x' : 'read x'], { tty: { columns: 40 + j, rows: 10 } });
            p.stdout.resume();
            if (k === 1) setTimeout(() => p.kill('SIGKILL'), 5);
            if (k === 2) p.stdin.end();
            const r = await p.result;
            expect(r.reason).toBe(k === 1 ? 'killed' : 'exit');
          }),
        );
      }
      expect(fdCount()).toBe(fds);
      expect(children().sort()).toEqual(kids);
      const inside = await sb.exec(['sh', '-c', 'ls /dev/pts; ls -d /proc/[0-9]* | wc -l'], { encoding: 'utf8' });
      // ptmx only, no pty left; init, the sh and its ls/wc children at most.
      const lines = (inside.stdout as string).trim().split('\n');
      expect(lines.slice(0, -1)).toEqual(['ptmx']);
      expect(Number(lines.at(-1))).toBeLessThanOrEqual(4);
      expect((await sb.stats()).pids).toBeLessThanOrEqual(1);
    } finally {
      await sb.destroy();
    }
  }, 300_000);
});

/**
 * Issue 18's changes to init's exec path (addon/init/init.c): each exec's child is cloned with
 * CLONE_VM | CLONE_VFORK on one static stack, and resets only the signals init ignores. What
 * the command gets must be what a forked child got: checked from inside the sandbox.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../lib/index.js';

function statusField(status: string, field: string): string {
  const m = new RegExp(`^${field}:\\s*(\\S+)`, 'm').exec(status);
  if (!m) throw new Error(`no ${field} in /proc/<pid>/status`);
  return m[1]!;
}

describe('init execs without copying itself', () => {
  let sb: Sandbox;
  beforeAll(async () => {
    sb = await Sandbox.create({ image: 'busybox' });
  });
  afterAll(() => sb.destroy());

  it('starts the command with no signal ignored, though init ignores some', async () => {
    // cat is exec'd straight from init's child: its own status shows what it inherited.
    const cmd = await sb.exec(['cat', '/proc/self/status'], { encoding: 'utf8' });
    const init = await sb.exec(['cat', '/proc/1/status'], { encoding: 'utf8' });
    expect(cmd.exitCode).toBe(0);
    // init ignores SIGPIPE (bit 12) at least: the reset has something to undo.
    expect(BigInt(`0x${statusField(init.stdout as string, 'SigIgn')}`) & (1n << 12n)).not.toBe(0n);
    expect(statusField(cmd.stdout as string, 'SigIgn')).toBe('0000000000000000');
    expect(statusField(cmd.stdout as string, 'SigBlk')).toBe('0000000000000000');
    expect(statusField(cmd.stdout as string, 'SigCgt')).toBe('0000000000000000');
  });

  it('gives every exec its own process, limits and seccomp, also many at once', async () => {
    // Concurrent requests: init serves them one after another on its single exec stack;
    // each child must still get its own argv, rlimit and credentials.
    const rs = await Promise.all(
      Array.from({ length: 24 }, (_, i) =>
        sb.exec(['sh', '-c', `echo ${i} $$ $(ulimit -n); grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status`], {
          encoding: 'utf8',
          ...(i % 2 === 0 ? { user: '1000:1000' } : {}),
        }),
      ),
    );
    const pids = new Set<string>();
    rs.forEach((r, i) => {
      expect(r.exitCode).toBe(0);
      const [first, ...rest] = (r.stdout as string).trim().split('\n');
      const [n, pid] = first!.split(' ');
      expect(n).toBe(String(i));
      pids.add(pid!);
      expect(rest.join('\n')).toMatch(/Seccomp:\s+2/);
    });
    expect(pids.size).toBe(24);
    const ids = await Promise.all([sb.exec(['id', '-u'], { encoding: 'utf8', user: '1000:1000' }), sb.exec(['id', '-u'], { encoding: 'utf8' })]);
    expect(ids.map((r) => (r.stdout as string).trim())).toEqual(['1000', '0']);
  });

  it('reports a failed exec step from the shared-memory child, and init goes on', async () => {
    await expect(sb.exec(['/no/such/program'])).rejects.toMatchObject({ code: 'ESETUP' });
    await expect(sb.exec(['true'], { cwd: '/no/such/dir' })).rejects.toMatchObject({ code: 'ESETUP' });
    // init's memory is intact after children that failed on its stack.
    const r = await sb.exec(['echo', 'still here'], { encoding: 'utf8' });
    expect(r.stdout).toBe('still here\n');
  });
});

describe('Sandbox.run counts OOM kills from its own command', () => {
  // The first exec of a new sandbox takes 0 as the cgroup's count before it, unread
  // (lib/runtime/control.ts execResolved): each run reports its own kill, once.
  it('reports reason oom and exactly one kill, run after run (blanks included)', async () => {
    for (let i = 0; i < 3; i++) {
      const r = await Sandbox.run({ image: 'host', limits: { memory: '64MiB' }, command: ['python3', '-c', 'x = bytearray(256 << 20)'] });
      expect(r.reason).toBe('oom');
      expect(r.signal).toBe('SIGKILL');
      expect(r.usage.oomKills).toBe(1);
    }
    const fine = await Sandbox.run({ image: 'host', limits: { memory: '64MiB' }, command: ['true'] });
    expect(fine.reason).toBe('exit');
    expect(fine.usage.oomKills).toBe(0);
  });
});

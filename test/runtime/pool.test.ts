import { describe, expect, it } from 'vitest';
import { Sandbox } from '../../lib/index.js';

describe('pool', () => {
  it('hands out fresh, never-used sandboxes that show nothing of a previous run', async () => {
    await using pool = Sandbox.pool({ image: 'busybox', size: 2, limits: { pids: 32 } });
    const first = await pool.run('echo secret > /tmp/mine; touch /root/x; echo $$', { encoding: 'utf8' });
    expect(first.exitCode).toBe(0);
    const ids = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const r = await pool.run('ls /tmp /root; cat /proc/self/cgroup | head -1; ps | wc -l', { encoding: 'utf8' });
      expect(r.exitCode).toBe(0);
      expect(r.stdout).not.toContain('mine');
      expect(r.stdout).not.toMatch(/^x$/m);
    }
    const a = await pool.acquire();
    const b = await pool.acquire();
    ids.add(a.id).add(b.id);
    expect(ids.size).toBe(2);
    expect(a.state).toBe('running');
    // The pool's limits apply to what it hands out.
    const lim = await a.exec('cat /proc/self/limits >/dev/null; i=0; while [ $i -lt 64 ]; do sleep 3 </dev/null >/dev/null 2>&1 & i=$((i+1)); done 2>/dev/null; set -- /proc/[0-9]*; echo $#', { encoding: 'utf8' });
    expect(Number((lim.stdout as string).trim())).toBeLessThanOrEqual(32);
    await a.destroy();
    await b.destroy();
  });

  it('destroys its ready sandboxes on close and refuses work after', async () => {
    const pool = Sandbox.pool({ image: 'busybox', size: 3 });
    const sb = await pool.acquire();
    const pid = sb.pid;
    await pool.close();
    expect(() => process.kill(pid, 0)).not.toThrow(); // acquired ones belong to the caller
    await sb.destroy();
    expect(() => process.kill(pid, 0)).toThrow();
    await expect(pool.acquire()).rejects.toMatchObject({ code: 'EDESTROYED' });
  });

  it('rejects bad pool options', () => {
    expect(() => Sandbox.pool({ size: -1 })).toThrow(/size/);
    expect(() => Sandbox.pool({ size: 1, imagee: 'x' } as never)).toThrow(/did you mean 'image'/);
  });
});

import { describe, expect, it } from 'vitest';
import { existsSync, readFileSync } from 'node:fs';
import { DEFAULT_OUTPUT_BYTES, DEFAULT_PIDS, Sandbox } from '../../lib/index.js';

// The host-side cost of a sandbox that asked for no limits is bounded (Security issue, hole 9):
// its captured output stops at 16 MiB and its task count at 1024. Each default asserted by its
// effect: the bytes Node received, the cgroup's own pids.max, the tasks the kernel let it make.

/** pids.max of the sandbox's cgroup, found from its init's /proc/<pid>/cgroup (v1 pids, else v2). */
function pidsMax(initPid: number): string {
  const lines = readFileSync(`/proc/${initPid}/cgroup`, 'utf8').trim().split('\n');
  const v1 = lines.find((l) => l.split(':')[1]!.split(',').includes('pids'));
  const candidates = v1 ? [`/sys/fs/cgroup/pids${v1.split(':')[2]}`] : [];
  const v2 = lines.find((l) => l.startsWith('0::'));
  if (v2) candidates.push(`/sys/fs/cgroup${v2.slice(3)}`, `/sys/fs/cgroup/unified${v2.slice(3)}`);
  const dir = candidates.find((d) => existsSync(`${d}/pids.max`));
  if (!dir) throw new Error(`no pids.max for pid ${initPid} in ${candidates.join(', ')}`);
  return readFileSync(`${dir}/pids.max`, 'utf8').trim();
}

/** Starts sleepers until fork fails (at most `tries`), then prints how many tasks the sandbox has. */
const FORK_BOMB = (tries: number) =>
  `(i=0; while [ $i -lt ${tries} ]; do sleep 30 </dev/null >/dev/null 2>&1 & i=$((i+1)); done) 2>/dev/null; set -- /proc/[0-9]*; echo $#`;

describe('limits: the defaults for untrusted code', () => {
  it('a default sandbox printing endlessly ends with output-limit after 16 MiB captured', async () => {
    await using sb = await Sandbox.create({ image: 'busybox' });
    const r = await sb.exec(['sh', '-c', 'yes xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx & yes yyyyyyyyyyy >&2'], { timeoutMs: 60_000 });
    expect(r.reason).toBe('output-limit');
    expect(r.truncated).toBe(true);
    expect(r.stdout.length + r.stderr.length).toBe(DEFAULT_OUTPUT_BYTES);
    expect(DEFAULT_OUTPUT_BYTES).toBe(16 * 1024 * 1024);
    // The sandbox is usable afterwards.
    expect((await sb.exec(['echo', 'ok'], { encoding: 'utf8' })).stdout).toBe('ok\n');
  });

  it('an explicit output cap wins, larger or per exec', async () => {
    await using sb = await Sandbox.create({ image: 'busybox', limits: { output: '24MiB' } });
    const r = await sb.exec(['yes'], { timeoutMs: 60_000 });
    expect(r).toMatchObject({ reason: 'output-limit', truncated: true });
    expect(r.stdout.length).toBe(24 * 1024 * 1024);
    // 20 MiB in full under a per-exec cap of 32 MiB.
    const full = await sb.exec('head -c 20971520 /dev/zero', { output: '32MiB', timeoutMs: 60_000 });
    expect(full).toMatchObject({ reason: 'exit', exitCode: 0, truncated: false });
    expect(full.stdout.length).toBe(20 * 1024 * 1024);
  });

  it('spawn streams past the cap: nothing is captured, nothing is cut', async () => {
    await using sb = await Sandbox.create({ image: 'busybox' });
    const p = sb.spawn('head -c 25165824 /dev/zero');
    let n = 0;
    p.stdout.on('data', (d: Buffer) => (n += d.length));
    const r = await p.result;
    expect(r).toMatchObject({ reason: 'exit', exitCode: 0, truncated: false });
    expect(n).toBe(24 * 1024 * 1024);
  });

  it('a fork bomb in a default sandbox tops out at 1024 tasks (pids.max of its cgroup)', async () => {
    await using sb = await Sandbox.create({ image: 'busybox' });
    expect(pidsMax(sb.pid)).toBe(String(DEFAULT_PIDS));
    const r = await sb.exec(FORK_BOMB(1200), { encoding: 'utf8', timeoutMs: 120_000 });
    const tasks = Number((r.stdout as string).trim());
    expect(tasks).toBeLessThanOrEqual(DEFAULT_PIDS);
    // It did reach the limit: the loop ran out of forks, not of tries.
    expect(tasks).toBeGreaterThan(DEFAULT_PIDS - 16);
    expect((await sb.stats()).pids).toBeLessThanOrEqual(DEFAULT_PIDS);
  }, 180_000);

  it('an explicit pids limit wins, larger too', async () => {
    await using big = await Sandbox.create({ image: 'busybox', limits: { pids: 2048 } });
    expect(pidsMax(big.pid)).toBe('2048');
    const r = await big.exec(FORK_BOMB(1100), { encoding: 'utf8', timeoutMs: 120_000 });
    // Past the default: every sleeper started.
    expect(Number((r.stdout as string).trim())).toBeGreaterThan(1100);
    await using small = await Sandbox.create({ image: 'busybox', limits: { pids: 64 } });
    expect(pidsMax(small.pid)).toBe('64');
  }, 180_000);
});

import { describe, expect, it } from 'vitest';
import { Sandbox } from '../../lib/index.js';

// Each limit asserted by its effect, from inside the sandbox (the kernel's view).
describe('limits through a sandbox', () => {
  it('OOM-kills a memory hog with reason oom, emits oom, and leaves the neighbour alone', async () => {
    await using sb = await Sandbox.create({ image: 'host', limits: { memory: '64MiB' } });
    await using neighbour = await Sandbox.create({ image: 'busybox' });
    const events: number[] = [];
    sb.on('oom', (u) => events.push(u.oomKills));
    const r = await sb.exec(['python3', '-c', 'x = bytearray(256 << 20); print(len(x))']);
    expect(r.reason).toBe('oom');
    expect(r.signal).toBe('SIGKILL');
    expect(r.usage.oomKills).toBeGreaterThanOrEqual(1);
    expect((await neighbour.exec(['echo', 'fine'], { encoding: 'utf8' })).stdout).toBe('fine\n');
    await new Promise((res) => setTimeout(res, 50));
    expect(events.length).toBeGreaterThanOrEqual(1);
    // swap stays off: the limit is the limit
    const again = await sb.exec(['python3', '-c', 'x = bytearray(32 << 20); print("ok")'], { encoding: 'utf8' });
    expect(again.stdout).toBe('ok\n');
  });

  it('reports a peak between the allocation and the limit', async () => {
    await using sb = await Sandbox.create({ image: 'host', limits: { memory: '128MiB' } });
    const r = await sb.exec(['python3', '-c', 'x = bytearray(16 << 20); x[::4096] = b"1" * len(x[::4096])']);
    expect(r.exitCode).toBe(0);
    expect(r.usage.memoryPeakBytes).toBeGreaterThan(16 * 1024 * 1024);
    expect(r.usage.memoryPeakBytes).toBeLessThanOrEqual(128 * 1024 * 1024);
    const st = await sb.stats();
    expect(st.memoryPeakBytes).toBeGreaterThan(0);
  });

  it('holds a fork bomb at the pids limit and the host keeps working', async () => {
    await using sb = await Sandbox.create({ image: 'busybox', limits: { pids: 16 } });
    const r = await sb.exec('(i=0; while [ $i -lt 200 ]; do sleep 5 </dev/null >/dev/null 2>&1 & i=$((i+1)); done) 2>/dev/null; set -- /proc/[0-9]*; echo $#', { encoding: 'utf8', timeoutMs: 10_000 });
    expect(Number((r.stdout as string).trim())).toBeLessThanOrEqual(16);
    expect(Number((r.stdout as string).trim())).toBeGreaterThanOrEqual(10);
    const st = await sb.stats();
    expect(st.pids).toBeLessThanOrEqual(16);
    expect((await Sandbox.run({ image: 'busybox', command: ['true'] })).exitCode).toBe(0);
  });

  it('cpus 0.5 gives about half a core', async () => {
    await using sb = await Sandbox.create({ image: 'busybox', limits: { cpus: 0.5 } });
    const r = await sb.exec('end=$(($(date +%s) + 2)); while [ $(date +%s) -lt $end ]; do :; done');
    const cpu = r.usage.cpuUserMs + r.usage.cpuSystemMs;
    const share = cpu / r.usage.wallMs;
    expect(share).toBeGreaterThan(0.35);
    expect(share).toBeLessThan(0.65);
  }, 20_000);

  it('applies every rlimit, read back from /proc/self/limits', async () => {
    await using sb = await Sandbox.create({
      image: 'busybox',
      limits: { nofile: 64, nproc: 100, fileSize: '1MiB', stack: '4MiB', cpuTimeMs: 1500 },
    });
    const r = await sb.exec(['cat', '/proc/self/limits'], { encoding: 'utf8' });
    const lim = r.stdout as string;
    expect(lim).toMatch(/Max open files\s+64\s+64/);
    expect(lim).toMatch(/Max processes\s+100\s+100/);
    expect(lim).toMatch(/Max file size\s+1048576\s+1048576/);
    expect(lim).toMatch(/Max stack size\s+4194304\s+4194304/);
    expect(lim).toMatch(/Max cpu time\s+2\s+2/);
    // and they bite: a file past fileSize fails with SIGXFSZ / EFBIG
    const big = await sb.exec('dd if=/dev/zero of=/tmp/f bs=1M count=2 2>&1; ls -l /tmp/f', { encoding: 'utf8' });
    expect(big.stdout).toMatch(/1048576/);
  });

  it('rejects an rlimit above the hard limit of this process, naming it', async () => {
    await expect(Sandbox.create({ image: 'busybox', limits: { nofile: 1e9 } })).rejects.toMatchObject({
      code: 'EINVAL',
      message: expect.stringMatching(/nofile/),
    });
  });

  it('pins to a cpuset, seen in /proc/self/status', async () => {
    await using sb = await Sandbox.create({ image: 'busybox', limits: { cpuset: '0' } });
    const r = await sb.exec('grep Cpus_allowed_list /proc/self/status', { encoding: 'utf8' });
    expect(r.stdout).toMatch(/Cpus_allowed_list:\s+0\n/);
  });

  it('per-exec timeoutMs and output override the sandbox ones', async () => {
    await using sb = await Sandbox.create({ image: 'busybox', limits: { timeoutMs: 100, output: 10 } });
    expect((await sb.exec(['sleep', '1'])).reason).toBe('timeout');
    const r = await sb.exec('sleep 0.3; echo 0123456789abcdef', { timeoutMs: 5000, output: 1000, encoding: 'utf8' });
    expect(r).toMatchObject({ reason: 'exit', truncated: false, stdout: '0123456789abcdef\n' });
    const cut = await sb.exec('echo 0123456789abcdef', { timeoutMs: 5000, encoding: 'utf8' });
    expect(cut).toMatchObject({ truncated: true, stdout: '0123456789' });
  });
});

import { readdirSync } from 'node:fs';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HutchError, Sandbox } from '../../lib/index.js';

describe('processes', () => {
  let sb: Sandbox;
  beforeAll(async () => {
    sb = await Sandbox.create({ image: 'busybox' });
  });
  afterAll(() => sb.destroy());

  it('reports exit codes, including non-zero, without rejecting', async () => {
    expect((await sb.exec('exit 0')).exitCode).toBe(0);
    const r = await sb.exec('exit 42');
    expect(r).toMatchObject({ exitCode: 42, signal: null, reason: 'exit', truncated: false });
  });

  it('reports a signal from inside as reason signal', async () => {
    const r = await sb.exec('kill -SEGV $$');
    expect(r).toMatchObject({ exitCode: null, signal: 'SIGSEGV', reason: 'signal' });
  });

  it('feeds stdin from a string, a Uint8Array and a stream', async () => {
    expect((await sb.exec(['cat'], { stdin: 'abc', encoding: 'utf8' })).stdout).toBe('abc');
    expect((await sb.exec(['wc', '-c'], { stdin: new Uint8Array(1000), encoding: 'utf8' })).stdout).toMatch(/1000/);
    const big = Buffer.alloc(3 * 1024 * 1024, 'x');
    const r = await sb.exec(['wc', '-c'], { stdin: Readable.from([big.subarray(0, 1e6), big.subarray(1e6)]), encoding: 'utf8' });
    expect((r.stdout as string).trim()).toBe(String(big.length));
  });

  it('keeps stdout and stderr apart and returns Buffers without encoding', async () => {
    const r = await sb.exec('echo out; echo err >&2');
    expect(Buffer.isBuffer(r.stdout)).toBe(true);
    expect(r.stdout.toString()).toBe('out\n');
    expect(r.stderr.toString()).toBe('err\n');
  });

  it('streams output from spawn while the process runs', async () => {
    const p = sb.spawn('for i in 1 2 3; do echo line$i; sleep 0.1; done');
    const seen: number[] = [];
    const t0 = Date.now();
    p.stdout.on('data', () => seen.push(Date.now() - t0));
    p.stderr.resume();
    const r = await p.result;
    expect(r.exitCode).toBe(0);
    expect(r.stdout.length).toBe(0);
    expect(seen.length).toBeGreaterThanOrEqual(2); // arrived in pieces, not at the end
    expect(p.pid).toBeGreaterThan(1);
  });

  it('takes stdin through spawn', async () => {
    const p = sb.spawn(['cat']);
    let out = '';
    p.stdout.on('data', (b: Buffer) => (out += b.toString()));
    p.stderr.resume();
    p.stdin.end('through a pipe');
    await p.result;
    expect(out).toBe('through a pipe');
  });

  it('spawn holds no fd once a process whose stdin the caller never ended has exited', async () => {
    const fds = () => readdirSync('/proc/self/fd').length;
    const spawnAll = async (n: number) => {
      const ps = Array.from({ length: n }, (_, i) => sb.spawn(i % 2 ? ['true'] : ['sh', '-c', 'read x; exit 3']));
      for (const p of ps) {
        p.stdout.resume();
        p.stderr.resume();
      }
      // Half of them wait for input that never comes: killed, the rest exit on their own.
      setTimeout(() => ps.forEach((p, i) => i % 2 || p.kill('SIGKILL')), 50);
      return Promise.all(ps.map((p) => p.result));
    };
    await spawnAll(2); // warm-up: the addon's and libuv's own fds
    // A closed handle's fd goes back in libuv's close callback: one loop turn after the result.
    await new Promise((r) => setImmediate(r));
    const before = fds();
    const rs = await spawnAll(20);
    expect(rs.map((r) => r.reason)).toEqual(Array.from({ length: 20 }, (_, i) => (i % 2 ? 'exit' : 'killed')));
    await new Promise((r) => setImmediate(r));
    expect(fds()).toBe(before);
  });

  it('kills on abort with reason killed', async () => {
    const ac = new AbortController();
    const pr = sb.exec(['sleep', '30'], { signal: ac.signal });
    setTimeout(() => ac.abort(), 100);
    const r = await pr;
    expect(r).toMatchObject({ reason: 'killed', signal: 'SIGKILL' });
    expect(r.usage.wallMs).toBeLessThan(10_000);
  });

  it('kills the whole tree of an exec on timeout', async () => {
    const r = await sb.exec('sleep 30 & sleep 30 & wait', { timeoutMs: 200 });
    expect(r.reason).toBe('timeout');
    const ps = await sb.exec('ps -o pid,args | grep "sleep 30" | grep -v grep | wc -l', { encoding: 'utf8' });
    expect((ps.stdout as string).trim()).toBe('0');
  });

  it('cuts output at the cap, keeps the prefix and kills', async () => {
    const r = await sb.exec('yes', { output: '64KiB' });
    expect(r.reason).toBe('output-limit');
    expect(r.truncated).toBe(true);
    expect(r.stdout.length + r.stderr.length).toBe(64 * 1024);
    expect(r.stdout.toString().startsWith('y\ny\n')).toBe(true);
  });

  it('captures large output on both pipes whole and in order, and stdin given as a string', async () => {
    // 3 MiB on stdout (more than the addon reads per turn of the event loop), 1 MiB on stderr.
    const r = await sb.exec('head -c 3145728 /dev/urandom | od -An -tx1 -v | head -c 3145728; head -c 1048576 /dev/zero >&2');
    expect(r.exitCode).toBe(0);
    expect(r.stdout.length).toBe(3145728);
    expect(r.stderr.length).toBe(1048576);
    expect(r.stdout.toString('latin1')).toMatch(/^( [0-9a-f]{2}){16}\n/);
    expect((r.stderr as Buffer).every((b) => b === 0)).toBe(true);
    const echo = await sb.exec(['cat'], { stdin: 'fed\n', encoding: 'utf8' });
    expect(echo.stdout).toBe('fed\n');
  });

  it('SandboxProcess.kill gives reason killed', async () => {
    const p = sb.spawn(['sleep', '30']);
    p.stdout.resume();
    p.stderr.resume();
    setTimeout(() => p.kill('SIGTERM'), 100);
    const r = await p.result;
    expect(r).toMatchObject({ reason: 'killed', signal: 'SIGTERM' });
  });

  it('passes env, cwd and user, and not the Node process environment', async () => {
    process.env.HUTCH_LEAK_CHECK = 'leaked';
    const r = await sb.exec('env; pwd; id -u; id -g', { env: { FOO: 'bar' }, cwd: '/tmp', user: '1000:1001', encoding: 'utf8' });
    const out = r.stdout as string;
    expect(out).toContain('FOO=bar');
    expect(out).toContain('PATH=');
    expect(out).not.toContain('HUTCH_LEAK_CHECK');
    expect(out).toMatch(/\/tmp\n1000\n1001\n$/);
  });

  it('reports rusage CPU time', async () => {
    const r = await sb.exec('i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done');
    expect(r.usage.cpuUserMs + r.usage.cpuSystemMs).toBeGreaterThan(10);
    expect(r.usage.wallMs).toBeGreaterThanOrEqual(r.usage.cpuUserMs * 0.5);
  });

  it('resolves a running exec as killed when the sandbox is destroyed', async () => {
    const other = await Sandbox.create({ image: 'busybox' });
    const pr = other.exec(['sleep', '30']);
    setTimeout(() => void other.destroy(), 100);
    const r = await pr;
    expect(r.reason).toBe('killed');
    await expect(other.exec(['true'])).rejects.toMatchObject({ code: 'EDESTROYED' });
    await other.destroy(); // idempotent
    expect(other.state).toBe('destroyed');
  });

  it('runs many execs concurrently in one sandbox', async () => {
    const rs = await Promise.all(Array.from({ length: 20 }, (_, i) => sb.exec(`echo ${i}`, { encoding: 'utf8' })));
    rs.forEach((r, i) => expect(r.stdout).toBe(`${i}\n`));
  });

  it('works with await using and Sandbox.run', async () => {
    const r = await Sandbox.run({ image: 'busybox', command: ['echo', 'run'], encoding: 'utf8' });
    expect(r.stdout).toBe('run\n');
    {
      await using s2 = await Sandbox.create({ image: 'busybox' });
      expect((await s2.exec('true')).exitCode).toBe(0);
      var kept = s2;
    }
    expect(kept.state).toBe('destroyed');
  });

  it('emits destroyed and exit events', async () => {
    const s = await Sandbox.create({ image: 'busybox' });
    const events: string[] = [];
    s.on('exit', () => events.push('exit'));
    s.on('destroyed', () => events.push('destroyed'));
    // init dies unexpectedly: kill it from the host
    process.kill(s.pid, 'SIGKILL');
    await new Promise<void>((r) => s.once('destroyed', () => r()));
    expect(events).toEqual(['exit', 'destroyed']);
    expect(s.state).toBe('destroyed');
  });

  it('create honours an AbortSignal', async () => {
    const ac = new AbortController();
    ac.abort();
    await expect(Sandbox.create({ image: 'busybox', signal: ac.signal })).rejects.toBeInstanceOf(HutchError);
    const ac2 = new AbortController();
    const s = await Sandbox.create({ image: 'busybox', signal: ac2.signal });
    ac2.abort();
    await new Promise((r) => setTimeout(r, 50));
    expect(s.state).toBe('destroyed');
  });
  // The output cap reached by what a process wrote just before it exited: its last output sits
  // in the pipe's buffer and is read at (or after) init's exit report. The reason is
  // 'output-limit' whichever comes first; a build's RUN step decides on it.
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

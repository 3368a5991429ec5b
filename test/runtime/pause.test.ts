// Sandbox.pause/resume on the real kernel: the cgroup freezer (the cgroup2 leaf's
// cgroup.freeze on this hybrid host, freezer.state where the sandbox has only the v1 freezer)
// stops every process; exec timeouts stop counting while paused and count on after; stats(),
// commit() and destroy() work on a paused sandbox; both calls are idempotent, EDESTROYED after
// destroy.
import { existsSync, readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../lib/index.js';
import type { SandboxCgroup } from '../../lib/cgroup/driver.js';
import { isRoot, needs } from '../helpers/require.js';
import { hutchFailure } from '../helpers/rejects.js';

const skip = needs(isRoot, 'sandboxes need root');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

afterAll(async () => {
  await Sandbox.settle();
});

const cgroupOf = (sb: Sandbox) => (sb as unknown as { cgroup: SandboxCgroup }).cgroup;

/** What the kernel says of the sandbox's freezer: what the driver uses (lib/cgroup/v1.ts freezer()). */
function kernelFrozen(sb: Sandbox): boolean {
  const cg = cgroupOf(sb);
  const v2 = cg.dirs.find((d) => existsSync(`${d}/cgroup.freeze`));
  if (v2) return /^frozen 1$/m.test(readFileSync(`${v2}/cgroup.events`, 'utf8'));
  const v1 = cg.dirs.find((d) => existsSync(`${d}/freezer.state`));
  if (!v1) throw new Error(`no freezer among ${cg.dirs.join(', ')}`);
  return readFileSync(`${v1}/freezer.state`, 'utf8').trim() === 'FROZEN';
}

/** A loop inside that counts into /tmp/c as fast as it can. */
const COUNTER = 'i=0; while true; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/c; done';
const counter = async (sb: Sandbox) => Number((await sb.readFile('/tmp/c')).toString().trim() || '-1');
const cpuMs = async (sb: Sandbox) => {
  const u = await sb.stats();
  return u.cpuUserMs + u.cpuSystemMs;
};

describe.skipIf(skip)('Sandbox.pause/resume', () => {
  it('freezes every process (the cgroup says frozen, no CPU, no progress); resume goes on; both idempotent', async () => {
    const sb = await Sandbox.create({ image: 'busybox' });
    try {
      sb.spawn(COUNTER);
      await expect.poll(() => counter(sb), { timeout: 10_000 }).toBeGreaterThan(10);
      expect(sb.paused).toBe(false);
      await sb.pause();
      await sb.pause(); // idempotent
      expect(sb.paused).toBe(true);
      expect(kernelFrozen(sb)).toBe(true);
      // stats() works while paused, and shows no CPU used; the file shows no progress.
      const [c0, cpu0] = [await counter(sb), await cpuMs(sb)];
      expect((await sb.stats()).pids).toBeGreaterThanOrEqual(2);
      await sleep(500);
      expect(await counter(sb)).toBe(c0);
      expect(await cpuMs(sb)).toBe(cpu0);
      await sb.resume();
      await sb.resume(); // idempotent
      expect(sb.paused).toBe(false);
      expect(kernelFrozen(sb)).toBe(false);
      await expect.poll(() => counter(sb), { timeout: 10_000 }).toBeGreaterThan(c0);
      expect(await cpuMs(sb)).toBeGreaterThan(cpu0);
    } finally {
      await sb.destroy();
    }
  });

  it('exec timeouts stop counting while paused and count on after resume', async () => {
    const sb = await Sandbox.create({ image: 'busybox' });
    try {
      const started = (p: ReturnType<Sandbox['spawn']>) =>
        new Promise<void>((res) => p.stdout.on('data', (b: Buffer) => b.toString().includes('go') && res()));
      // Ends by itself 0.5 s in; its 1 s timeout would pass during a 2 s pause if it counted.
      const short = sb.spawn('echo go; sleep 0.5', { timeoutMs: 1000 });
      // Would run 10 s: its timeout must still end it, 1 s of running time in.
      const long = sb.spawn('echo go; sleep 10', { timeoutMs: 1000 });
      let longDone = false;
      void long.result.then(() => (longDone = true));
      await Promise.all([started(short), started(long)]);
      await sb.pause();
      // An exec asked for while paused waits, its timeout not counting either.
      const during = sb.exec('echo hi', { timeoutMs: 500, encoding: 'utf8' });
      await sleep(2000);
      expect(longDone).toBe(false);
      await sb.resume();
      const s = await short.result;
      expect(s.reason).toBe('exit');
      expect(s.exitCode).toBe(0);
      const d = await during;
      expect([d.reason, d.stdout]).toEqual(['exit', 'hi\n']);
      const l = await long.result;
      expect(l.reason).toBe('timeout');
      // 2 s paused + 1 s of running time before its timeout fired.
      expect(l.usage.wallMs).toBeGreaterThanOrEqual(2900);
      expect(l.usage.wallMs).toBeLessThan(9000);
    } finally {
      await sb.destroy();
    }
  });

  it('a commit of a paused sandbox leaves it paused; resume after it thaws', async () => {
    const sb = await Sandbox.create({ image: 'busybox' });
    try {
      sb.spawn(COUNTER);
      await expect.poll(() => counter(sb), { timeout: 10_000 }).toBeGreaterThan(10);
      await sb.pause();
      const c0 = await counter(sb);
      const img = await sb.commit();
      expect(img.id).toMatch(/^sha256:/);
      expect(sb.paused).toBe(true);
      expect(kernelFrozen(sb)).toBe(true);
      await sleep(300);
      expect(await counter(sb)).toBe(c0);
      await sb.resume();
      expect(kernelFrozen(sb)).toBe(false);
      await expect.poll(() => counter(sb), { timeout: 10_000 }).toBeGreaterThan(c0);
      // A resume while a commit runs: both done, the sandbox runs (whichever took the freezer last thaws it).
      await sb.pause();
      const committing = sb.commit();
      await sb.resume();
      await committing;
      expect(sb.paused).toBe(false);
      expect(kernelFrozen(sb)).toBe(false);
      const c1 = await counter(sb);
      await expect.poll(() => counter(sb), { timeout: 10_000 }).toBeGreaterThan(c1);
    } finally {
      await sb.destroy();
    }
  });

  it('destroy() of a paused sandbox kills everything and frees its cgroups; pause/resume then reject EDESTROYED', async () => {
    const sb = await Sandbox.create({ image: 'busybox' });
    sb.spawn(COUNTER);
    await expect.poll(() => counter(sb), { timeout: 10_000 }).toBeGreaterThan(0);
    const pending = sb.exec('sleep 100');
    await sb.pause();
    const dirs = [...cgroupOf(sb).dirs];
    expect(dirs.every((d) => existsSync(d))).toBe(true);
    await sb.destroy();
    expect((await pending).reason).toBe('killed');
    for (const d of dirs) expect(existsSync(d)).toBe(false);
    expect(existsSync(`/proc/${sb.pid}`)).toBe(false);
    expect((await hutchFailure(sb.pause())).code).toBe('EDESTROYED');
    expect((await hutchFailure(sb.resume())).code).toBe('EDESTROYED');
  });
});

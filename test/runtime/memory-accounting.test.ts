// limits.memoryAccounting (issue 18): a sandbox gets a memory cgroup of its own only with a
// memory limit or 'sandbox'; the others are charged to one memory cgroup hutch shares
// (lib/cgroup/types.ts SHARED_MEMCG), and report the largest resident set of their processes.
// Asserted from the host's view of the kernel (/proc/<pid>/cgroup, cgroupfs), on hybrid here
// and on pure v2 under v2vm (vitest.vm.config.ts).
import { existsSync, readFileSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../lib/index.js';
import { cgroupDriver, detectCgroups } from '../../lib/cgroup/driver.js';
import { NoCgroupDriver } from '../../lib/cgroup/none.js';
import { SHARED_MEMCG, SHARED_PIN } from '../../lib/cgroup/types.js';
import { HutchError } from '../../lib/errors.js';
import { resolveLimits } from '../../lib/limits.js';
import { newId, spawnSleep } from '../helpers/cgroup.js';
import { rmdirSubtreeRoot } from '../helpers/leaks.js';
import { isRoot, needs } from '../helpers/require.js';

const host = detectCgroups();
const v2 = host.kind === 'v2';
const skip = needs(isRoot && (v2 ? host.unified !== null : host.v1.has('memory')), 'memory accounting tests need root and a memory controller');
const MiB = 2 ** 20;

/** The host directory of `pid`'s memory cgroup: its v1 memory cgroup, or on v2 its cgroup (which may have no memory controller). */
function memoryDirOf(pid: number): string {
  const lines = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n');
  if (v2) {
    const path = lines.find((l) => l.startsWith('0::'))!.slice(3);
    return host.unified!.mount + path.slice(host.unified!.mountRoot === '/' ? 0 : host.unified!.mountRoot.length);
  }
  const h = host.v1.get('memory')!;
  const path = lines.find((l) => /^\d+:[^:]*\bmemory\b[^:]*:/.test(l))!.split(':')[2]!;
  return h.mount + path.slice(h.mountRoot === '/' ? 0 : h.mountRoot.length);
}

/** Whether `dir` is a memory cgroup (v1 always; v2 only with the controller enabled for it). */
const isMemcg = (dir: string) => existsSync(`${dir}/${v2 ? 'memory.current' : 'memory.usage_in_bytes'}`);
const peakFile = v2 ? 'memory.peak' : 'memory.max_usage_in_bytes';
const chargeFile = v2 ? 'memory.current' : 'memory.usage_in_bytes';
const readNum = (f: string) => Number(readFileSync(f, 'utf8').trim());

// 64 MiB held by busybox tail (one line, no newline), written to as it is read: resident.
const HOLD_64MIB = ['sh', '-c', 'head -c 67108864 /dev/zero | tail > /dev/null'];

describe.skipIf(skip)('memoryAccounting', () => {
  it("a default sandbox has no memory cgroup of its own: its tasks are charged to hutch's shared one", async () => {
    await using sb = await Sandbox.create({ image: 'busybox' });
    await using other = await Sandbox.create({ image: 'busybox' });
    const dir = memoryDirOf(sb.pid);
    // v1/hybrid: the task is in the shared memory cgroup; v2: its leaf is below it, and has no memory controller.
    const shared = v2 ? dir.slice(0, dir.lastIndexOf('/')) : dir;
    expect(shared.endsWith(`/${SHARED_MEMCG}`)).toBe(true);
    expect(isMemcg(shared)).toBe(true);
    if (v2) expect(isMemcg(dir)).toBe(false);
    expect(memoryDirOf(other.pid).startsWith(shared)).toBe(true);
    // What a sandbox allocates is charged there while it holds it.
    const before = readNum(`${shared}/${chargeFile}`);
    const p = sb.spawn(['sh', '-c', 'x=$(head -c 33554432 /dev/zero | tr "\\0" a); echo held; read y']);
    const held = new Promise<void>((res) => p.stdout!.on('data', (d: Buffer) => d.toString().includes('held') && res()));
    await held;
    // (The shared cgroup is every default sandbox's, other test files' included, whose frees
    // meanwhile lower it: a full run saw 8 KiB less than the 32 MiB. Three quarters of it, at least.)
    expect(readNum(`${shared}/${chargeFile}`) - before).toBeGreaterThanOrEqual(24 * MiB);
    // stats(): the largest resident set of a live process (this shell holds 32 MiB).
    const st = await sb.stats();
    expect(st.memoryPeakBytes).toBeGreaterThanOrEqual(32 * MiB);
    expect(st.oomKills).toBe(0);
    p.kill('SIGKILL');
    await p.result;
  });

  it('a memory limit, or memoryAccounting "sandbox", gets a memory cgroup of its own', async () => {
    for (const limits of [{ memory: '256MiB' }, { memoryAccounting: 'sandbox' as const }]) {
      await using sb = await Sandbox.create({ image: 'busybox', limits });
      const dir = memoryDirOf(sb.pid);
      expect(isMemcg(dir)).toBe(true);
      expect(dir.includes(`/${SHARED_MEMCG}`)).toBe(false);
      expect(dir.endsWith(`/${sb.id}`)).toBe(true);
    }
  });

  it("'shared' with memory or memorySwap is EINVAL before anything is made", async () => {
    for (const limits of [{ memory: '64MiB', memoryAccounting: 'shared' as const }, { memorySwap: 0, memoryAccounting: 'shared' as const }]) {
      const e = await Sandbox.create({ image: 'busybox', limits }).then(() => null, (x: unknown) => x);
      expect(HutchError.is(e)).toBe(true);
      expect(e).toMatchObject({ code: 'EINVAL' });
      expect((e as Error).message).toMatch(/limits\.memoryAccounting: 'shared' cannot go with limits\.memory or limits\.memorySwap: a memory limit needs a memory cgroup/);
    }
  });

  it("'shared': an exec's peak is its processes' largest resident set (ru_maxrss), per exec; stats() the largest so far", async () => {
    await using sb = await Sandbox.create({ image: 'busybox' });
    const r = await sb.exec(HOLD_64MIB);
    expect(r.exitCode).toBe(0);
    expect(r.usage.memoryPeakBytes).toBeGreaterThanOrEqual(64 * MiB);
    expect(r.usage.memoryPeakBytes).toBeLessThan(256 * MiB);
    expect(r.usage.oomKills).toBe(0);
    // The next exec's peak is its own.
    const small = await sb.exec(['true']);
    expect(small.usage.memoryPeakBytes).toBeGreaterThan(0);
    expect(small.usage.memoryPeakBytes).toBeLessThan(16 * MiB);
    expect((await sb.stats()).memoryPeakBytes).toBeGreaterThanOrEqual(64 * MiB);
    // Sandbox.run, the one-shot path, too.
    const run = await Sandbox.run({ image: 'busybox', command: HOLD_64MIB });
    expect(run.usage.memoryPeakBytes).toBeGreaterThanOrEqual(64 * MiB);
  });

  it("'sandbox' without a limit reports its cgroup's peak, which counts more than one process", async () => {
    await using sb = await Sandbox.create({ image: 'busybox', limits: { memoryAccounting: 'sandbox' } });
    const dir = memoryDirOf(sb.pid);
    const r = await sb.exec(HOLD_64MIB);
    expect(r.usage.memoryPeakBytes).toBeGreaterThanOrEqual(64 * MiB);
    const st = await sb.stats();
    // The cgroup's own counter (v2 before 6.12 has no per-exec reset: the peak since creation).
    expect(st.memoryPeakBytes).toBe(readNum(`${dir}/${peakFile}`));
    expect(st.memoryPeakBytes).toBeGreaterThanOrEqual(64 * MiB);
  });

  it('destroy leaves nothing of the sandbox; the shared memory cgroup stays, and prune never takes it', async () => {
    const parent = `/hutch-test-macct-${process.pid}`;
    const d = cgroupDriver(v2 ? { kind: 'v2', parent: `${host.unified!.mount}${parent}` } : { parent });
    privateRoots.push(...d.subtreeRoots);
    const shared = d.create(newId('sh'), resolveLimits({}).cgroup);
    const own = d.create(newId('own'), resolveLimits({ memory: '64MiB' }).cgroup);
    const live = d.create(newId('live'), resolveLimits({}).cgroup);
    const s = spawnSleep(60);
    try {
      expect(shared.ownMemory).toBe(false);
      expect(own.ownMemory).toBe(true);
      expect(shared.usage().memoryPeakBytes).toBeUndefined();
      expect(shared.usage().oomKills).toBe(0);
      expect(shared.resetPeak()).toBe(false);
      // The shared memory cgroup is among the live sandbox's join dirs, never among the dirs kill and destroy take.
      const sharedDir = live.joinDirs.find((j) => j.includes(`/${SHARED_MEMCG}`))!;
      if (v2) expect(sharedDir.endsWith(`/${SHARED_MEMCG}/${live.id}`)).toBe(true);
      else expect(live.dirs.some((x) => x.includes(SHARED_MEMCG))).toBe(false);
      for (const j of live.joinDirs) writeFileSync(`${j}/cgroup.procs`, `${s.child.pid}`);
      expect(memoryDirOf(s.child.pid!).includes(`/${SHARED_MEMCG}`)).toBe(true);
      const removed = await d.prune((id) => id === live.id);
      expect(removed.sort()).toEqual([own.id, shared.id].sort());
      for (const x of [...shared.dirs, ...own.dirs]) expect(existsSync(x)).toBe(false);
      // The live one and its task are untouched, and so is the shared memory cgroup.
      expect(s.child.exitCode).toBe(null);
      expect(live.liveRssPeak()).toBeGreaterThan(0);
      for (const root of d.subtreeRoots) if (!v2 && existsSync(`${root}/${SHARED_MEMCG}`)) expect(isMemcg(`${root}/${SHARED_MEMCG}`)).toBe(true);
    } finally {
      await live.destroy();
      await shared.destroy();
      await own.destroy();
    }
    expect(await s.exited).toBe('SIGKILL');
    for (const x of live.dirs) expect(existsSync(x)).toBe(false);
    // Removed while empty (by hand, or on v2 by another process's exit; on v1 our pin in it
    // goes first): made again, and pinned again, by the next create.
    for (const r of d.subtreeRoots) {
      if (!existsSync(`${r}/${SHARED_MEMCG}`)) continue;
      for (const n of readdirSync(`${r}/${SHARED_MEMCG}`)) if (n.startsWith(SHARED_PIN)) rmdirSync(`${r}/${SHARED_MEMCG}/${n}`);
      rmdirSync(`${r}/${SHARED_MEMCG}`);
    }
    const again = d.create(newId('again'), resolveLimits({}).cgroup);
    try {
      expect(again.joinDirs.some((j) => j.includes(`/${SHARED_MEMCG}`))).toBe(true);
      for (const j of again.joinDirs) expect(existsSync(j)).toBe(true);
    } finally {
      await again.destroy();
    }
  });

  // Not in the v2 VM (V2VM=1): a template fork's overlay fails there (EINVAL on its 6.1 kernel),
  // which is why no template test is in vitest.vm.config.ts; this host runs it.
  it.skipIf(process.env.V2VM === '1')("a template's runs: 'shared' reports the task's largest resident set (the zygote's wait4), 'sandbox' the cgroup's peak", async () => {
    for (const limits of [{}, { memoryAccounting: 'sandbox' as const }]) {
      const t = await Sandbox.template({ zygote: 'python', limits, size: 0 });
      try {
        const r = await t.run(['python3', '-c', "b = b'x' * (64 << 20)"]);
        expect(r.exitCode).toBe(0);
        expect(r.usage.memoryPeakBytes).toBeGreaterThanOrEqual(64 * MiB);
        expect(r.usage.memoryPeakBytes).toBeLessThan(512 * MiB);
      } finally {
        await t.close();
      }
    }
  });

  it("without cgroups, 'sandbox' is EUNSUPPORTED and 'shared' (the default) runs", () => {
    const none = new NoCgroupDriver('test: no delegated cgroup');
    expect(() => none.create('x1', resolveLimits({ memoryAccounting: 'sandbox' }).cgroup)).toThrow(/limits\.memoryAccounting/);
    expect(none.create('x2', resolveLimits({}).cgroup).ownMemory).toBe(false);
  });
});

const privateRoots: string[] = [];

afterAll(async () => {
  await Sandbox.settle();
  // The private parent of the driver test, empty by now (or a test leaked: then rmdir throws).
  for (const r of privateRoots) if (existsSync(r)) rmdirSubtreeRoot(r);
});

// Noisy neighbours: 200 idle sandboxes at once while one fork-bombs, one OOMs, one fills its
// disk, one spins every CPU and one floods stdout. Every neighbour's exec keeps working, each
// offender ends with the right reason, and hutch's event loop keeps turning (its lag is
// printed; the latency comparison is bench/neighbours.ts, not a test).
import { readFileSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { afterAll, describe, expect, it } from 'vitest';
import { ImageStore, Sandbox, type ExecResult } from '../../lib/index.js';
import { isRoot, needs } from '../helpers/require.js';
import { cgroupsUnder, privateCgroupParent, removeCgroupParent, rmRoot, tempRoot } from '../helpers/reliability.js';

const skip = needs(isRoot && readFileSync('/proc/self/mountinfo', 'utf8').includes('cgroup'), 'root and cgroups are needed');
const NEIGHBOURS = Number(process.env.HUTCH_NEIGHBOURS ?? 200);
const parent = privateCgroupParent('nb');
const root = tempRoot('nb');
const store = new ImageStore({ root });
const all: Sandbox[] = [];

afterAll(async () => {
  await Promise.all(all.map((s) => s.destroy().catch(() => undefined)));
  rmRoot(root);
  removeCgroupParent(parent);
});

async function inBatches<T>(n: number, width: number, f: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(n);
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < n) {
      const i = next++;
      out[i] = await f(i);
    }
  }));
  return out;
}

describe.skipIf(skip)(`${NEIGHBOURS} sandboxes next to five bad ones`, () => {
  it('neighbours keep working and every offender ends with its reason', async () => {
    const neighbours = await inBatches(NEIGHBOURS, 4, async () => {
      const sb = await Sandbox.create({ image: 'busybox', store, limits: { memory: '32MiB', pids: 16 } });
      all.push(sb);
      return sb;
    });
    const mk = async (limits: NonNullable<Parameters<typeof Sandbox.create>[0]>['limits']) => {
      const sb = await Sandbox.create({ image: 'busybox', store, limits });
      all.push(sb);
      return sb;
    };
    const [bomber, hog, filler, spinner, flooder] = await Promise.all([
      mk({ pids: 32 }),
      mk({ memory: '32MiB' }),
      mk({ disk: '4MiB' }),
      mk({}),
      mk({ output: '1MiB' }),
    ]);
    expect(cgroupsUnder(parent).length).toBeGreaterThanOrEqual(NEIGHBOURS + 5);

    const lag = monitorEventLoopDelay({ resolution: 10 });
    lag.enable();
    const offenders: Record<string, Promise<ExecResult>> = {
      forkBomb: bomber.exec('f() { f | f & }; f; sleep 10', { timeoutMs: 3000 }),
      oom: hog.exec(['tail', '/dev/zero'], { timeoutMs: 20_000 }),
      diskFull: filler.exec('dd if=/dev/zero of=/fill bs=64k; echo "dd=$?"', { timeoutMs: 20_000, encoding: 'utf8' }),
      cpuSpin: spinner.exec('for i in 1 2 3 4; do (while :; do :; done) & done; wait', { timeoutMs: 3000 }),
      flood: flooder.exec(['yes', 'flood']),
    };
    let done = false;
    const settled = Promise.allSettled(Object.values(offenders)).then(() => (done = true));
    // Every neighbour execs, round after round, while the offenders run (at least two rounds).
    let rounds = 0;
    let execs = 0;
    const failures: string[] = [];
    while (!done || rounds < 2) {
      await inBatches(neighbours.length, 8, async (i) => {
        const r = await neighbours[i]!.exec(['echo', 'ok'], { encoding: 'utf8', timeoutMs: 30_000 });
        execs++;
        if (r.stdout !== 'ok\n' || r.reason !== 'exit') failures.push(`${neighbours[i]!.id}: ${JSON.stringify({ ...r, usage: undefined })}`);
      });
      rounds++;
    }
    await settled;
    lag.disable();
    expect(failures).toEqual([]);

    const r = Object.fromEntries(await Promise.all(Object.entries(offenders).map(async ([k, p]) => [k, await p] as const)));
    expect(r.forkBomb!.reason).toBe('timeout');
    expect(r.oom!.reason).toBe('oom');
    expect(r.oom!.usage.oomKills).toBeGreaterThan(0);
    expect(r.diskFull!.reason).toBe('exit');
    expect(r.diskFull!.stdout).toContain('dd=1');
    expect(String(r.diskFull!.stderr)).toMatch(/No space left on device/);
    expect(r.cpuSpin!.reason).toBe('timeout');
    expect(r.flood!.reason).toBe('output-limit');
    expect(r.flood!.truncated).toBe(true);
    expect(r.flood!.stdout.length).toBe(1024 * 1024);
    // The fork bomb never had more than its 32 tasks; the offenders are usable afterwards.
    for (const sb of [bomber, hog, filler, spinner, flooder]) {
      const again = await sb.exec(['echo', 'alive'], { encoding: 'utf8', timeoutMs: 10_000 });
      expect(again.stdout).toBe('alive\n');
    }
    console.log(
      `neighbours: ${NEIGHBOURS} sandboxes, ${rounds} rounds, ${execs} execs, all ok; event-loop lag p50 ${(lag.percentile(50) / 1e6).toFixed(1)} ms, ` +
        `p99 ${(lag.percentile(99) / 1e6).toFixed(1)} ms, max ${(lag.max / 1e6).toFixed(1)} ms; offenders: ` +
        Object.entries(r).map(([k, v]) => `${k}=${v.reason} in ${v.usage.wallMs.toFixed(0)} ms`).join(', '),
    );
  }, 120_000);
});

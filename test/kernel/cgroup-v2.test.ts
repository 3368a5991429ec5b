// The cgroup v2 driver on the real kernel. Where it runs:
//  - "cgroup2 hierarchy": on every host with cgroup2 mounted. On a hybrid host (this
//    project's CI machine) that is /sys/fs/cgroup/unified, which has no controllers:
//    grouping, CLONE_INTO_CGROUP, cgroup.kill, cgroup.events, prune, and the refusal of
//    limits it cannot enforce.
//  - "controller limits": only on a pure cgroup v2 host; elsewhere skipped (the v1/hybrid
//    driver that such hosts use is covered by test/kernel/cgroup-v1.test.ts). CI runs this file
//    in a pure v2 VM as its own step:
//      ../shared/tools/v2vm --timeout 900 -- env HUTCH_REQUIRE_ALL=1 npx vitest run test/kernel/cgroup-v2.test.ts
//
// Only processes this file starts are put in sandbox cgroups; the test process itself is
// never moved, and every cgroup made is removed.
import { existsSync, mkdirSync, readFileSync, readlinkSync, rmdirSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { resolveLimits, type Limits } from '../../lib/limits.js';
import { cgroupDriver, detectCgroups, type CgroupDriver, type SandboxCgroup } from '../../lib/cgroup/driver.js';
import { V2Cgroup } from '../../lib/cgroup/v2.js';
import { busyLoopHeld, clonedInto, expectError, forkBombHeld, hogOomKilled, killThenDestroy, newId, peakOf16MiB, read, spawnSleep, writesThrottled } from '../helpers/cgroup.js';
import { isRoot, needs } from '../helpers/require.js';
import { rmdirSubtreeRoot } from '../helpers/leaks.js';

const host = detectCgroups();
const unified = host.unified;
const skipRoot = needs(isRoot, 'cgroup tests need root');
const skipUnified = skipRoot ?? needs(unified !== null && unified.callerDir !== null, 'a cgroup2 mount that shows this process\'s cgroup');
const mount = unified?.mount ?? '/sys/fs/cgroup';
const madeRoots = new Set<string>();

function v2driver(parentDir: string): CgroupDriver {
  const d = cgroupDriver({ kind: 'v2', parent: parentDir });
  for (const r of d.subtreeRoots) madeRoots.add(r);
  return d;
}

/** Stands in for CLONE_INTO_CGROUP where the test starts the process with spawn(): write the pid through the leaf's fd. */
function join(cg: SandboxCgroup, pid: number): void {
  expect(cg.procsFiles).toEqual([]);
  writeFileSync(`/proc/self/fd/${cg.cloneIntoFd}/cgroup.procs`, `${pid}`);
}

afterAll(() => {
  for (const r of madeRoots) if (r.includes('hutch-test-v2-') && existsSync(r)) rmdirSubtreeRoot(r);
});

describe.skipIf(skipUnified !== undefined)(`cgroup v2 driver: cgroup2 hierarchy (${host.kind} host, ${mount})`, () => {
  const parentDir = `${mount}/hutch-test-v2-${process.pid}`;

  it('takes its parent from HUTCH_CGROUP_PARENT and creates one leaf per sandbox below it', async () => {
    process.env.HUTCH_CGROUP_PARENT = parentDir;
    let d: CgroupDriver;
    try {
      d = cgroupDriver({ kind: 'v2' });
    } finally {
      delete process.env.HUTCH_CGROUP_PARENT;
    }
    madeRoots.add(parentDir);
    expect(d.kind).toBe('v2');
    expect(d.subtreeRoots).toEqual([parentDir]);
    const cg = d.create(newId('leaf'), resolveLimits({}).cgroup);
    try {
      // No memory limit: below the shared memory cgroup (memoryAccounting 'shared'), where the root has memory to account.
      const shared = read(parentDir, 'cgroup.subtree_control').split(' ').includes('memory');
      expect(cg.dirs).toEqual([shared ? `${parentDir}/.shared/${cg.id}` : `${parentDir}/${cg.id}`]);
      expect(cg.procsFiles).toEqual([]);
      expect(readlinkSync(`/proc/self/fd/${cg.cloneIntoFd}`)).toBe(cg.dirs[0]);
      expect(read(cg.dirs[0]!, 'cgroup.events')).toContain('populated 0');
    } finally {
      await cg.destroy();
    }
    expect(existsSync(cg.dirs[0]!)).toBe(false);
  });

  it('places a child race-free with clone3(CLONE_INTO_CGROUP), sees it in cgroup.events, counts its CPU and kills it with cgroup.kill', async () => {
    const cg = v2driver(parentDir).create(newId('clone'), resolveLimits({}).cgroup);
    await clonedInto(cg, ['/bin/sh', '-c', 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo spun; exec sleep 60'], async (line) => {
      expect(await line()).toBe('spun');
      const u = cg.usage();
      expect(u.cpuUserMs! + u.cpuSystemMs!).toBeGreaterThan(0);
    });
  });

  it('kill() ends every task, destroy() leaves nothing and is idempotent', () =>
    killThenDestroy({ join }, v2driver(parentDir).create(newId('kill'), resolveLimits({}).cgroup), (cg) => read(cg.dirs[0]!, 'cgroup.procs').split('\n').length));

  it('kills by pid where the kernel has no cgroup.kill (before 5.14)', async () => {
    const made = v2driver(parentDir).create(newId('nokill'), resolveLimits({}).cgroup);
    // The same leaf, seen by a handle that believes cgroup.kill is missing.
    const cg = new V2Cgroup(made.id, made.dirs[0]!, null, { enabled: new Set(), swapFile: false, killFile: false }, false);
    const sleeps = [spawnSleep(60), spawnSleep(60)];
    for (const s of sleeps) join(made, s.child.pid!);
    cg.kill();
    expect(await Promise.all(sleeps.map((s) => s.exited))).toEqual(['SIGKILL', 'SIGKILL']);
    await cg.destroy();
    expect(existsSync(made.dirs[0]!)).toBe(false);
    await made.destroy(); // idempotent even when another handle removed it
  });

  it('prune removes a leftover sandbox cgroup and keeps live ones', async () => {
    const d = v2driver(`${parentDir}-prune`);
    const leftover = d.create('leftover-a', resolveLimits({}).cgroup);
    const live = d.create('live-b', resolveLimits({}).cgroup);
    const s = spawnSleep(60);
    join(leftover, s.child.pid!);
    expect(await d.prune((id) => id === 'live-b')).toEqual(['leftover-a']);
    expect(await s.exited).toBe('SIGKILL');
    expect(existsSync(leftover.dirs[0]!)).toBe(false);
    expect(existsSync(live.dirs[0]!)).toBe(true);
    await live.destroy();
  });

  it('never takes the caller\'s own cgroup or an ancestor as its subtree', () => {
    const own = unified!.callerDir!;
    // In the root cgroup (hybrid hosts, the v2vm) the caller's cgroup is the mount itself.
    const why = own === unified!.mount ? 'not /' : 'does not contain the calling process';
    expectError(() => cgroupDriver({ kind: 'v2', parent: own }), 'EINVAL', 'parent', why.startsWith('not') ? `not ${own} itself` : why);
    expectError(() => cgroupDriver({ kind: 'v2', parent: unified!.mount }), 'EINVAL', 'parent');
    expectError(() => cgroupDriver({ kind: 'v2', parent: `${unified!.mount}/../etc` }), 'EINVAL', 'parent');
  });

  it('refuses a limit whose controller is not delegated with EUNSUPPORTED explaining delegation', async (ctx) => {
    const controllers = read(parentDir, 'cgroup.controllers');
    if (controllers.includes('memory')) return ctx.skip(); // a pure v2 host: the limits block below covers it
    const d = v2driver(parentDir);
    const e = expectError(() => d.create(newId('nomem'), resolveLimits({ memory: '64MiB' }).cgroup), 'EUNSUPPORTED', 'memory', 'cgroup.subtree_control', 'HUTCH_CGROUP_PARENT');
    expect(e.message).toContain(mount);
  });
});

describe.skipIf(host.kind !== 'v2' || skipUnified !== undefined)('cgroup v2 driver: controller limits (pure cgroup v2 host)', () => {
  const parentDir = `${mount}/hutch-test-v2-${process.pid}-limits`;
  const skipCtl = (() => {
    if (host.kind !== 'v2' || skipUnified !== undefined) return 'not a pure v2 host';
    // The private parent sits directly below the mount: the root must pass the controllers down.
    const have = read(mount, 'cgroup.subtree_control');
    return needs(['memory', 'pids', 'cpu', 'cpuset'].every((c) => have.includes(c)), `the memory, pids, cpu and cpuset controllers enabled in ${mount}/cgroup.subtree_control (have: ${have})`);
  })();
  const make = (limits: Limits) => v2driver(parentDir).create(newId('s'), resolveLimits(limits).cgroup);
  const subject = { make, join };

  it.skipIf(skipCtl !== undefined)('enables the controllers in its own subtree root and writes every limit', async () => {
    const cpu0 = readFileSync('/sys/devices/system/cpu/online', 'utf8').trim().split(/[-,]/)[0]!;
    const cg = make({ memory: '64MiB', pids: 16, cpus: 0.5, cpuset: cpu0 });
    try {
      // memory and pids for every sandbox; cpu and cpuset enabled on first use.
      expect(read(parentDir, 'cgroup.subtree_control').split(' ')).toEqual(expect.arrayContaining(['memory', 'pids', 'cpu', 'cpuset']));
      const dir = cg.dirs[0]!;
      expect(read(dir, 'memory.max')).toBe(`${64 * 2 ** 20}`);
      // memorySwap defaults to 0; with no active swap on the host the write is skipped.
      if (existsSync(`${dir}/memory.swap.max`)) expect(read(dir, 'memory.swap.max')).toBe(host.swapActive ? '0' : 'max');
      expect(read(dir, 'pids.max')).toBe('16');
      expect(read(dir, 'cpu.max')).toBe('50000 100000');
      expect(read(dir, 'cpuset.cpus')).toBe(cpu0);
    } finally {
      await cg.destroy();
    }
    const swap = make({ memory: '64MiB', memorySwap: '32MiB' });
    try {
      if (existsSync(`${swap.dirs[0]}/memory.swap.max`)) expect(read(swap.dirs[0]!, 'memory.swap.max')).toBe(`${32 * 2 ** 20}`);
    } finally {
      await swap.destroy();
    }
  });

  it.skipIf(skipCtl !== undefined)('holds a fork bomb at the pids limit; the host keeps working', () =>
    forkBombHeld(subject, (cg) => expect(read(cg.dirs[0]!, 'pids.events')).toMatch(/max [1-9]/)));

  it.skipIf(skipCtl !== undefined)('OOM-kills a hog at the memory limit and counts it in memory.events', () => hogOomKilled(subject));

  it.skipIf(skipCtl !== undefined)('reports a plausible peak for a 16 MiB allocation; resetPeak() where the kernel allows it', () =>
    peakOf16MiB(subject, (cg) => {
      if (cg.resetPeak()) {
        // 6.12+: the peak since the reset, through hutch's own fd of memory.peak.
        expect(cg.usage().memoryPeakBytes).toBeLessThan(8 * 2 ** 20);
      } else {
        expect(cg.usage().memoryPeakBytes).toBeGreaterThanOrEqual(16 * 2 ** 20);
      }
    }));

  it.skipIf(skipCtl !== undefined)('holds a busy loop to 0.35-0.65 of a CPU at cpus: 0.5', () => busyLoopHeld(subject));

  it.skipIf(skipCtl !== undefined)('throttles writes to the writable layer\'s block device (io.max)', (ctx) =>
    writesThrottled(
      subject,
      (limits, ioDevice) => v2driver(parentDir).create(newId('io'), limits, { ioDevice }),
      (cg, majmin) => expect(read(cg.dirs[0]!, 'io.max')).toContain(`${majmin} rbps=max wbps=${2 ** 20} riops=1000 wiops=max`),
      () => ctx.skip(),
    ));

  it.skipIf(skipCtl !== undefined)('makes its subtree root again, with the controllers a limit needs, when it vanishes', async () => {
    const root = `${mount}/hutch-test-v2-${process.pid}-again`;
    const d = v2driver(root);
    await d.create(newId('a'), resolveLimits({ cpus: 0.5 }).cgroup).destroy();
    rmdirSubtreeRoot(root);
    const cg = d.create(newId('b'), resolveLimits({ memory: '64MiB', cpus: 0.5 }).cgroup);
    try {
      expect(read(cg.dirs[0]!, 'cpu.max')).toBe('50000 100000');
      expect(read(cg.dirs[0]!, 'memory.max')).toBe(`${64 * 2 ** 20}`);
    } finally {
      await cg.destroy();
    }
  });

  it.skipIf(skipCtl !== undefined)('explains the "no internal processes" rule when its subtree root holds a process', async () => {
    const root = `${mount}/hutch-test-v2-${process.pid}-nip`;
    mkdirSync(root);
    const s = spawnSleep(60);
    try {
      writeFileSync(`${root}/cgroup.procs`, `${s.child.pid}`);
      const d = cgroupDriver({ kind: 'v2', parent: root });
      const e = expectError(() => d.create(newId('nip'), resolveLimits({ memory: '64MiB' }).cgroup), 'ESETUP', 'no internal processes', root);
      expect(e.errno).toBe('EBUSY');
    } finally {
      s.child.kill('SIGKILL');
      await s.exited;
      rmdirSync(root);
    }
  });

  it.skipIf(skipCtl !== undefined)('default placement: <caller>/hutch when the caller\'s cgroup delegates, else EUNSUPPORTED naming the way out', async () => {
    const d = cgroupDriver({ kind: 'v2' });
    expect(d.subtreeRoots).toEqual([`${unified!.callerDir}/hutch`]);
    const delegates = read(unified!.callerDir!, 'cgroup.subtree_control').includes('memory');
    if (delegates) {
      const cg = d.create(newId('default'), resolveLimits({ memory: '64MiB' }).cgroup);
      expect(read(cg.dirs[0]!, 'memory.max')).toBe(`${64 * 2 ** 20}`);
      await cg.destroy();
    } else {
      expectError(() => d.create(newId('default'), resolveLimits({ memory: '64MiB' }).cgroup), 'EUNSUPPORTED', 'no internal processes', 'DelegateSubgroup', 'HUTCH_CGROUP_PARENT');
    }
    // Make sure the subtree root is left empty.
    expect(existsSync(`${unified!.callerDir}/hutch`) ? readFileSync(`${unified!.callerDir}/hutch/cgroup.procs`, 'utf8') : '').toBe('');
  });
});

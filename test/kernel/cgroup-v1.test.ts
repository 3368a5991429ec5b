// The cgroup v1/hybrid driver on the real kernel. Runs on hosts with v1 controllers (pure v1
// or hybrid, like this project's CI host); on a pure cgroup v2 host the whole file is
// skipped, and test/kernel/cgroup-v2.test.ts (run there through ../shared/tools/v2vm) covers it.
//
// Only processes this file starts are put in sandbox cgroups (their pids written into
// procsFiles); the test process itself is never moved, and every cgroup made is removed.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, readlinkSync, rmdirSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { resolveLimits, type Limits } from '../../lib/limits.js';
import { cgroupDriver, detectCgroups, pruneCgroups, type SandboxCgroup } from '../../lib/cgroup/driver.js';
import { V1Driver } from '../../lib/cgroup/v1.js';
import { busyLoopHeld, clonedInto, expectError, forkBombHeld, hogOomKilled, killThenDestroy, newId, peakOf16MiB, read, spawnSleep, startPython, writesThrottled } from '../helpers/cgroup.js';
import { isRoot, needs } from '../helpers/require.js';
import { rmdirSubtreeRoot } from '../helpers/leaks.js';

const host = detectCgroups();
const hasV1 = host.kind !== 'v2';
const skipRoot = needs(isRoot, 'cgroup tests need root');
const privateParent = `/hutch-test-v1-${process.pid}`;
const usedDrivers = new Set<{ subtreeRoots: readonly string[] }>();

function driver(parent: string = privateParent) {
  const d = cgroupDriver({ parent });
  usedDrivers.add(d);
  return d;
}

/** What the parent does after clone on v1/hybrid: the pid into each procsFiles entry, in order (and the cgroup2 leaf, as CLONE_INTO_CGROUP would). */
function join(cg: SandboxCgroup, pid: number): void {
  for (const f of cg.procsFiles) writeFileSync(f, `${pid}`);
  if (cg.cloneIntoFd !== null) writeFileSync(`/proc/self/fd/${cg.cloneIntoFd}/cgroup.procs`, `${pid}`);
}

function make(limits: Limits, d = driver()): SandboxCgroup {
  return d.create(newId('s'), resolveLimits(limits).cgroup);
}
const subject = { make: (limits: Limits) => make(limits), join };

/** The driver's subtree root in the memory hierarchy. */
const memRootOf = (d: { subtreeRoots: readonly string[] }): string => d.subtreeRoots.find((r) => r.startsWith(host.v1.get('memory')!.mount))!;
/** The pids whose pins are in the shared memory cgroup below `memRoot`, sorted. */
const pinsIn = (memRoot: string): string[] => readdirSync(`${memRoot}/.shared`).filter((n) => n.startsWith('.pin-')).map((n) => n.split('-')[1]!).sort();

/** What the setup child does for `cg` (each of joinFiles, the shared memory cgroup's among them), done for a sleep: it is then in `.shared`. */
async function expectSharedJoin(cg: SandboxCgroup, memRoot: string): Promise<void> {
  const s = spawnSleep(30);
  try {
    for (const f of cg.joinFiles) writeFileSync(f, `${s.child.pid}`);
    expect(read(`${memRoot}/.shared`, 'tasks').split('\n')).toContain(`${s.child.pid}`);
  } finally {
    s.child.kill('SIGKILL');
    await s.exited;
  }
}

/**
 * Another process that makes (or joins) the subtree roots and the shared memory cgroup below
 * `parent`, and its pin there, through a 'shared' cgroup it makes and destroys; it prints that
 * cgroup's joinFiles and exits normally once it reads from its stdin.
 */
async function pinningProcess(parent: string): Promise<{ child: ChildProcess; exited: Promise<unknown>; joinFiles: string }> {
  const script = `
    const { cgroupDriver } = await import(${JSON.stringify(new URL('../../dist/lib/cgroup/driver.js', import.meta.url).pathname)});
    const { resolveLimits } = await import(${JSON.stringify(new URL('../../dist/lib/limits.js', import.meta.url).pathname)});
    const cg = cgroupDriver({ parent: ${JSON.stringify(parent)} }).create('pin' + process.pid, resolveLimits({}).cgroup);
    await cg.destroy();
    console.log(cg.joinFiles.join(' '));
    process.stdin.once('data', () => process.exit(0));
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise((r) => child.on('exit', r));
  const joinFiles = await new Promise<string>((r) => child.stdout!.once('data', (b: Buffer) => r(b.toString())));
  return { child, exited, joinFiles };
}

afterAll(() => {
  // The private subtree roots: empty by now, or a test leaked.
  for (const d of usedDrivers) {
    for (const r of d.subtreeRoots) {
      if (r.includes('hutch-test-v1-') && existsSync(r)) rmdirSubtreeRoot(r);
    }
  }
});

describe.skipIf(!hasV1 || skipRoot !== undefined)(`cgroup v1/hybrid driver (${host.kind} host)`, () => {
  it('detects the layout once', () => {
    expect(['v1', 'hybrid']).toContain(host.kind);
    expect(detectCgroups()).toBe(host);
    expect(host.v1.has('memory') && host.v1.has('pids')).toBe(true);
    expect(driver().kind).toBe(host.kind);
  });

  it('places sandboxes below the caller\'s cgroup in each hierarchy by default, and writes every limit', async () => {
    const d = cgroupDriver();
    const mem = host.v1.get('memory')!;
    expect(d.subtreeRoots).toContain(`${mem.callerDir}/hutch`);
    if (host.unified) expect(d.subtreeRoots).toContain(`${host.unified.callerDir === host.unified.mount ? host.unified.mount : host.unified.callerDir}/hutch`);
    const cpu0 = readFileSync('/sys/devices/system/cpu/online', 'utf8').trim().split(/[-,]/)[0];
    const id = newId('default');
    const cg = d.create(id, resolveLimits({ memory: '64MiB', pids: 16, cpus: 0.5, cpuset: cpu0 }).cgroup);
    try {
      const dirOf = (c: string) => `${host.v1.get(c)!.callerDir}/hutch/${id}`;
      // Join order: cpuset, memory, pids, cpu (cpuacct only on pure v1).
      const expected = ['cpuset', 'memory', 'pids', 'cpu'].map((c) => `${dirOf(c)}/cgroup.procs`);
      expect(cg.procsFiles.slice(0, 4)).toEqual(expected);
      expect(cg.joinFiles.slice(0, 4)).toEqual(expected.map((f) => f.replace(/cgroup\.procs$/, 'tasks')));
      expect(read(dirOf('memory'), 'memory.limit_in_bytes')).toBe(`${64 * 2 ** 20}`);
      if (existsSync(`${dirOf('memory')}/memory.memsw.limit_in_bytes`) && host.swapActive) {
        // memorySwap defaults to 0: memory + swap = memory. (With no active swap the write is skipped.)
        expect(read(dirOf('memory'), 'memory.memsw.limit_in_bytes')).toBe(`${64 * 2 ** 20}`);
      }
      expect(read(dirOf('pids'), 'pids.max')).toBe('16');
      expect(read(dirOf('cpu'), 'cpu.cfs_quota_us')).toBe('50000');
      expect(read(dirOf('cpu'), 'cpu.cfs_period_us')).toBe('100000');
      expect(read(dirOf('cpuset'), 'cpuset.cpus')).toBe(cpu0);
      expect(read(dirOf('cpuset'), 'cpuset.mems')).not.toBe('');
      if (host.kind === 'hybrid') {
        expect(cg.cloneIntoFd).toBeTypeOf('number');
        expect(readlinkSync(`/proc/self/fd/${cg.cloneIntoFd}`)).toBe(cg.dirs[cg.dirs.length - 1]);
      } else {
        expect(cg.cloneIntoFd).toBeNull();
      }
    } finally {
      await cg.destroy();
    }
    for (const dir of cg.dirs) expect(existsSync(dir)).toBe(false);
  });

  it('writes memory + memorySwap to memsw when swap is allowed', async () => {
    const cg = make({ memory: '64MiB', memorySwap: '32MiB' });
    try {
      const mem = cg.procsFiles.find((f) => f.includes('/memory/'))!.replace('/cgroup.procs', '');
      if (existsSync(`${mem}/memory.memsw.limit_in_bytes`)) expect(read(mem, 'memory.memsw.limit_in_bytes')).toBe(`${96 * 2 ** 20}`);
    } finally {
      await cg.destroy();
    }
  });

  it('holds a fork bomb at the pids limit; the host keeps working', () => forkBombHeld(subject));

  it('OOM-kills a hog at the memory limit and counts it; swap stays off', () => hogOomKilled(subject));

  it('reports a plausible peak for a 16 MiB allocation, and resetPeak() restarts it', () =>
    peakOf16MiB(subject, (cg) => {
      expect(cg.resetPeak()).toBe(true);
      expect(cg.usage().memoryPeakBytes).toBeLessThan(8 * 2 ** 20);
    }));

  it('holds a busy loop to 0.35-0.65 of a CPU at cpus: 0.5', () =>
    // hybrid: cpu.stat of the cgroup2 leaf; pure v1: cpuacct.
    busyLoopHeld(subject, (u, _cpu, wall) => expect(u.cpuUserMs! + u.cpuSystemMs!).toBeLessThan(wall * 1000 * 0.7)));

  it('throttles writes to the writable layer\'s block device (io.writeBps via blkio)', (ctx) =>
    writesThrottled(
      subject,
      (limits, ioDevice) => driver().create(newId('io'), limits, { ioDevice }),
      (cg, majmin) => {
        const blk = cg.procsFiles.find((f) => f.includes('/blkio/'))!.replace('/cgroup.procs', '');
        expect(read(blk, 'blkio.throttle.write_bps_device')).toBe(`${majmin} ${2 ** 20}`);
        expect(read(blk, 'blkio.throttle.read_iops_device')).toBe(`${majmin} 1000`);
      },
      () => ctx.skip(),
    ));

  it('kill() ends every task, destroy() leaves nothing and is idempotent', () =>
    killThenDestroy(subject, make({ memory: '64MiB', pids: 32 }), (cg) => cg.usage().pids));

  it('places a child race-free with clone3(CLONE_INTO_CGROUP) into the cgroup2 leaf (hybrid)', async (ctx) => {
    if (host.kind !== 'hybrid') return ctx.skip();
    await clonedInto(make({}), ['/bin/sleep', '30']);
  });

  it('works without a cgroup2 leaf, as on a pure v1 host: joins by procsFiles, kills by pid, CPU from cpuacct', async () => {
    // The same driver with the cgroup2 mount hidden from it: the pure-v1 code paths, for real.
    const d = new V1Driver({ ...host, kind: 'v1', unified: null }, `${privateParent}-purev1`, 'parent');
    usedDrivers.add(d);
    expect(d.kind).toBe('v1');
    const cg = d.create(newId('v1'), resolveLimits({ memory: '64MiB', pids: 16 }).cgroup);
    expect(cg.cloneIntoFd).toBeNull();
    if (host.v1.has('cpuacct')) expect(cg.procsFiles.some((f) => f.includes('cpuacct'))).toBe(true);
    const p = startPython(['import time', 't0 = time.monotonic(); c0 = time.process_time()', 'while time.monotonic() - t0 < 0.3: pass', 'print(time.process_time() - c0, flush=True)', 'time.sleep(60)'].join('\n'));
    const s = spawnSleep(30);
    try {
      join(cg, p.child.pid!);
      join(cg, s.child.pid!);
      p.send();
      const spun = Number(await p.line()) * 1000;
      const u = cg.usage();
      expect(u.pids).toBe(2);
      // At least what python itself measured (the host may be busy: no absolute figure).
      if (host.v1.has('cpuacct')) expect(u.cpuUserMs! + u.cpuSystemMs!).toBeGreaterThan(spun * 0.9);
      cg.kill();
      expect((await p.exited).signal).toBe('SIGKILL');
      expect(await s.exited).toBe('SIGKILL');
    } finally {
      await cg.destroy();
    }
    for (const dir of cg.dirs) expect(existsSync(dir)).toBe(false);
  });

  it('makes its subtree roots again when they vanish between sandboxes', async () => {
    const d = driver(`${privateParent}-again`);
    await d.create(newId('a'), resolveLimits({}).cgroup).destroy();
    for (const r of d.subtreeRoots) if (existsSync(r)) rmdirSubtreeRoot(r);
    const cpu0 = readFileSync('/sys/devices/system/cpu/online', 'utf8').trim().split(/[-,]/)[0]!;
    const cg = d.create(newId('b'), resolveLimits({ memory: '64MiB', pids: 8, cpus: 1, cpuset: cpu0 }).cgroup);
    try {
      expect(read(cg.procsFiles[0]!.replace('/cgroup.procs', ''), 'cpuset.cpus')).toBe(cpu0);
    } finally {
      await cg.destroy();
    }
  });

  it('makes the shared memory cgroup and its subtree root again when both vanish between sandboxes (another process\'s exit)', async () => {
    const d = driver(`${privateParent}-again-shared`);
    const first = d.create(newId('a'), resolveLimits({}).cgroup);
    expect(first.dirs.some((dir) => dir.endsWith('/.shared'))).toBe(false);
    await first.destroy();
    for (const r of d.subtreeRoots) if (existsSync(r)) rmdirSubtreeRoot(r);
    const cg = d.create(newId('b'), resolveLimits({}).cgroup);
    try {
      await expectSharedJoin(cg, memRootOf(d));
    } finally {
      await cg.destroy();
    }
  });

  it("a process's exit leaves the shared memory cgroup it made while another process has pinned it, and its join works on", async () => {
    const parent = `${privateParent}-exit`;
    const d = driver(parent);
    const memRoot = memRootOf(d);
    expect(existsSync(memRoot)).toBe(false); // the other process makes it
    const { child, exited, joinFiles } = await pinningProcess(parent);
    expect(joinFiles).toContain(`${memRoot}/.shared/tasks`);
    // This process joins the same shared cgroup: its first 'shared' sandbox pins it.
    const cg = d.create(newId('p'), resolveLimits({}).cgroup);
    try {
      const before = pinsIn(memRoot);
      child.stdin!.write('go');
      expect(await exited).toBe(0);
      // The shared cgroup it made stayed (our pin holds it), so our join works; its pin went.
      expect(existsSync(`${memRoot}/.shared`)).toBe(true);
      await expectSharedJoin(cg, memRoot);
      expect(before).toEqual([`${child.pid}`, `${process.pid}`].sort());
      expect(pinsIn(memRoot)).toEqual([`${process.pid}`]);
    } finally {
      await cg.destroy();
    }
  });

  it("a killed process's pin stays until a prune removes it (a live one's never)", async () => {
    const parent = `${privateParent}-killed`;
    const d = driver(parent);
    const memRoot = memRootOf(d);
    const { child, exited } = await pinningProcess(parent);
    const cg = d.create(newId('k'), resolveLimits({}).cgroup); // ours, live
    try {
      expect(pinsIn(memRoot)).toEqual([`${child.pid}`, `${process.pid}`].sort());
      child.kill('SIGKILL');
      await exited;
      expect(pinsIn(memRoot)).toEqual([`${child.pid}`, `${process.pid}`].sort()); // no exit hook ran
      await d.prune(() => true);
      expect(pinsIn(memRoot)).toEqual([`${process.pid}`]);
    } finally {
      await cg.destroy();
    }
  });

  it('a sandbox\'s init is in its v1 cgroups when create() resolves, and what it starts follows', async () => {
    const { Sandbox } = await import('../../lib/index.js');
    const sb = await Sandbox.create({ image: 'busybox', limits: { memory: '64MiB', pids: 16 } });
    try {
      const inHost = (pid: number, ctrl: string) =>
        readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.split(':')[1]!.split(',').includes(ctrl))!.split(':')[2];
      for (const ctrl of ['memory', 'pids']) {
        const mine = inHost(process.pid, ctrl)!.replace(/\/$/, '');
        expect(inHost(sb.pid, ctrl)).toBe(`${mine}/hutch/${sb.id}`);
        // The leaf's own accounting sees the sandbox's tasks: init, and a child it started.
        const leaf = `${host.v1.get(ctrl)!.mount}${mine}/hutch/${sb.id}`;
        const p = sb.spawn(['sleep', '30']);
        await new Promise((r) => setTimeout(r, 50));
        expect(read(leaf, 'tasks').split('\n').length).toBeGreaterThanOrEqual(2);
        p.kill();
        await p.result;
      }
    } finally {
      await sb.destroy();
    }
  });

  it('prune removes a leftover sandbox cgroup and keeps live ones', async () => {
    const parent = `${privateParent}-prune`;
    const d = driver(parent);
    const leftover = d.create('leftover-a', resolveLimits({ memory: '64MiB' }).cgroup);
    const live = d.create('live-b', resolveLimits({}).cgroup);
    const s = spawnSleep(30);
    join(leftover, s.child.pid!);
    // The process that made `leftover` "crashed": only the directories remain.
    expect(await pruneCgroups((id) => id === 'live-b', { parent })).toEqual(['leftover-a']);
    expect(await s.exited).toBe('SIGKILL');
    for (const dir of leftover.dirs) expect(existsSync(dir)).toBe(false);
    for (const dir of live.dirs) expect(existsSync(dir)).toBe(true);
    await live.destroy();
    expect(await d.prune(() => false)).toEqual([]);
  });

  it('refuses what it cannot enforce (EUNSUPPORTED) and bad input (EINVAL)', () => {
    const d = driver();
    expectError(() => d.create(newId('io'), resolveLimits({ io: { readBps: '1M' } }).cgroup), 'EUNSUPPORTED', 'limits.io', 'block device');
    expectError(() => d.create(newId('io'), resolveLimits({ io: { readBps: '1M' } }).cgroup, { ioDevice: 'sda' }), 'EINVAL', 'major:minor');
    expectError(() => d.create(newId('swap'), resolveLimits({ memorySwap: '1G' }).cgroup), 'EUNSUPPORTED', 'memorySwap', 'memsw');
    expectError(() => d.create('../escape', resolveLimits({}).cgroup), 'EINVAL', 'id');
    expectError(() => d.create('', resolveLimits({}).cgroup), 'EINVAL', 'id');
    // The caller's own cgroup, or an ancestor of it, is never hutch's subtree.
    const mine = host.v1.get('memory')!.callerPath!;
    expectError(() => cgroupDriver({ parent: mine }), 'EINVAL', 'does not contain the calling process');
    expectError(() => cgroupDriver({ parent: '/' }), 'EINVAL', 'parent');
    expectError(() => cgroupDriver({ parent: 'relative/path' }), 'EINVAL', 'parent');
  });

  it('reports a kernel refusal as ESETUP with the errno, path and cause, and removes what it made', () => {
    const d = driver();
    const id = newId('dup');
    const cg = d.create(id, resolveLimits({}).cgroup);
    const e = expectError(() => d.create(id, resolveLimits({}).cgroup), 'ESETUP', 'already exists');
    expect(e.errno).toBe('EEXIST');
    expect(e.step).toBe('cgroup');
    // The cause is the kernel's own answer (mkdir's), kept as it came.
    expect(e.cause).toBeInstanceOf(Error);
    expect(e.cause).toMatchObject({ code: 'EEXIST', syscall: 'mkdir' });
    return cg.destroy();
  });
});

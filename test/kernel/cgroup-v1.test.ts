// The cgroup v1/hybrid driver on the real kernel. Runs on hosts with v1 controllers (pure v1
// or hybrid, like this project's CI host); on a pure cgroup v2 host the whole file is
// skipped, and test/kernel/cgroup-v2.test.ts (run there through ../shared/tools/v2vm) covers it.
//
// Only processes this file starts are put in sandbox cgroups (their pids written into
// procsFiles); the test process itself is never moved, and every cgroup made is removed.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { existsSync, rmSync, statSync, truncateSync, readFileSync, readlinkSync, rmdirSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { HutchError } from '../../lib/errors.js';
import { resolveLimits, type Limits } from '../../lib/limits.js';
import { cgroupDriver, detectCgroups, pruneCgroups, type SandboxCgroup } from '../../lib/cgroup/driver.js';
import { V1Driver } from '../../lib/cgroup/v1.js';
import { isRoot, needs } from '../helpers/require.js';

const host = detectCgroups();
const hasV1 = host.kind !== 'v2';
const PY = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const skipRoot = needs(isRoot, 'cgroup tests need root');
const privateParent = `/hutch-test-v1-${process.pid}`;
const usedDrivers = new Set<{ subtreeRoots: readonly string[] }>();

function driver(parent: string = privateParent) {
  const d = cgroupDriver({ parent });
  usedDrivers.add(d);
  return d;
}

let seq = 0;
const newId = (tag: string) => `t${process.pid}-${tag}-${seq++}`;

function read(dir: string, file: string): string {
  return readFileSync(`${dir}/${file}`, 'utf8').trim();
}

/** What the parent does after clone on v1/hybrid: the pid into each procsFiles entry, in order (and the cgroup2 leaf, as CLONE_INTO_CGROUP would). */
function join(cg: SandboxCgroup, pid: number): void {
  for (const f of cg.procsFiles) writeFileSync(f, `${pid}`);
  if (cg.cloneIntoFd !== null) writeFileSync(`/proc/self/fd/${cg.cloneIntoFd}/cgroup.procs`, `${pid}`);
}

interface Started {
  child: ChildProcess;
  line(): Promise<string>;
  send(s?: string): void;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts python3 running `body` after it reads one line, so it can be joined to a cgroup first. */
function startPython(body: string, extraFds: number[] = []): Started {
  const child = spawn(PY, ['-c', `import sys\nsys.stdin.readline()\n${body}`], { stdio: ['pipe', 'pipe', 'inherit', ...extraFds] });
  const pending: string[] = [];
  const waiters: ((s: string) => void)[] = [];
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const w = waiters.shift();
      if (w) w(l);
      else pending.push(l);
    }
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })));
  return {
    child,
    exited,
    line: () => (pending.length > 0 ? Promise.resolve(pending.shift()!) : new Promise((r) => waiters.push(r))),
    send: (s = 'go') => child.stdin!.write(`${s}\n`),
  };
}

function spawnSleep(): { child: ChildProcess; exited: Promise<NodeJS.Signals | null> } {
  const child = spawn('sleep', ['30'], { stdio: 'ignore' });
  return { child, exited: new Promise((r) => child.on('exit', (_c, s) => r(s))) };
}

/** A loop device over a sparse temp file, for io limits; null when the host cannot make one. */
function makeLoop(): { dev: string; majmin: string; remove(): void } | null {
  const file = `${tmpdir()}/hutch-test-io-${process.pid}-${seq++}.img`;
  try {
    writeFileSync(file, '');
    truncateSync(file, 16 * 2 ** 20);
    const r = spawnSync('losetup', ['-f', '--show', file], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(r.stderr);
    const dev = r.stdout.trim();
    const st = statSync(dev);
    const majmin = `${Math.floor(st.rdev / 256) & 0xfff}:${(st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)}`;
    return {
      dev,
      majmin,
      remove: () => {
        spawnSync('losetup', ['-d', dev]);
        rmSync(file, { force: true });
      },
    };
  } catch {
    rmSync(file, { force: true });
    return null;
  }
}

function expectError(fn: () => unknown, code: string, ...mention: string[]): HutchError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(HutchError.is(err), String(err)).toBe(true);
  const he = err as HutchError;
  expect(he.code).toBe(code);
  for (const m of mention) expect(he.message).toContain(m);
  return he;
}

function make(limits: Limits, d = driver()): SandboxCgroup {
  return d.create(newId('s'), resolveLimits(limits).cgroup);
}

afterAll(() => {
  // The private subtree roots: empty by now, or a test leaked.
  for (const d of usedDrivers) {
    for (const r of d.subtreeRoots) {
      if (r.includes('hutch-test-v1-') && existsSync(r)) rmdirSync(r);
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

  it('holds a fork bomb at the pids limit; the host keeps working', async () => {
    const cg = make({ pids: 8 });
    const p = startPython(
      [
        'import os, time',
        'ok = fail = 0',
        'for i in range(64):',
        '    try:',
        '        pid = os.fork()',
        '    except OSError:',
        '        fail += 1',
        '        continue',
        '    if pid == 0:',
        '        time.sleep(30)',
        '        os._exit(0)',
        '    ok += 1',
        'print(ok, fail, flush=True)',
        'sys.stdin.readline()',
      ].join('\n'),
    );
    try {
      join(cg, p.child.pid!);
      p.send();
      const [ok, fail] = (await p.line()).split(' ').map(Number);
      expect(ok).toBe(7); // 8 tasks: the python parent and 7 children
      expect(fail).toBe(57);
      expect(cg.usage().pids).toBe(8);
      expect(spawnSync('true').status).toBe(0);
    } finally {
      await cg.destroy();
    }
    expect((await p.exited).signal).toBe('SIGKILL');
  });

  it('OOM-kills a hog at the memory limit and counts it; swap stays off', async () => {
    const cg = make({ memory: '32MiB' });
    const p = startPython(['chunks = []', 'for i in range(64):', "    chunks.append(b'x' * (8 << 20))", '    print(i, flush=True)', "print('survived', flush=True)"].join('\n'));
    try {
      join(cg, p.child.pid!);
      expect(cg.oomKills()).toBe(0);
      p.send();
      const end = await p.exited;
      expect(end.signal).toBe('SIGKILL');
      expect(cg.oomKills()).toBeGreaterThanOrEqual(1);
      const u = cg.usage();
      expect(u.oomKills).toBeGreaterThanOrEqual(1);
      expect(u.memoryPeakBytes).toBeGreaterThan(16 * 2 ** 20);
      expect(u.memoryPeakBytes).toBeLessThanOrEqual(32 * 2 ** 20);
    } finally {
      await cg.destroy();
    }
  });

  it('reports a plausible peak for a 16 MiB allocation, and resetPeak() restarts it', async () => {
    const cg = make({ memory: '128MiB' });
    const p = startPython(["b = b'x' * (16 << 20)", "print('allocated', flush=True)", 'sys.stdin.readline()', 'del b', "print('freed', flush=True)", 'sys.stdin.readline()'].join('\n'));
    try {
      join(cg, p.child.pid!);
      p.send();
      expect(await p.line()).toBe('allocated');
      const u = cg.usage();
      expect(u.memoryPeakBytes).toBeGreaterThanOrEqual(16 * 2 ** 20);
      expect(u.memoryPeakBytes).toBeLessThan(128 * 2 ** 20);
      expect(u.pids).toBe(1);
      expect(u.oomKills).toBe(0);
      p.send();
      expect(await p.line()).toBe('freed');
      expect(cg.resetPeak()).toBe(true);
      expect(cg.usage().memoryPeakBytes).toBeLessThan(8 * 2 ** 20);
    } finally {
      await cg.destroy();
    }
  });

  it('holds a busy loop to 0.35-0.65 of a CPU at cpus: 0.5', async () => {
    const cg = make({ cpus: 0.5 });
    const p = startPython(
      ['import time', 't0 = time.monotonic(); c0 = time.process_time()', 'while time.monotonic() - t0 < 2: pass', 'print(time.process_time() - c0, time.monotonic() - t0, flush=True)'].join('\n'),
    );
    try {
      join(cg, p.child.pid!);
      p.send();
      const [cpu, wall] = (await p.line()).split(' ').map(Number) as [number, number];
      expect(cpu / wall).toBeGreaterThanOrEqual(0.35);
      expect(cpu / wall).toBeLessThanOrEqual(0.65);
      await p.exited;
      const u = cg.usage();
      // hybrid: cpu.stat of the cgroup2 leaf; pure v1: cpuacct.
      expect(u.cpuUserMs! + u.cpuSystemMs!).toBeGreaterThan(cpu * 1000 * 0.8);
      expect(u.cpuUserMs! + u.cpuSystemMs!).toBeLessThan(wall * 1000 * 0.7);
    } finally {
      await cg.destroy();
    }
  });

  it('throttles writes to the writable layer\'s block device (io.writeBps via blkio)', async (ctx) => {
    const loop = makeLoop();
    if (needs(loop !== null, 'a loop device (losetup) to throttle') !== undefined || !loop) return ctx.skip();
    try {
      const cg = driver().create(newId('io'), resolveLimits({ io: { writeBps: '1MiB', readIops: 1000 } }).cgroup, { ioDevice: loop.majmin });
      try {
      const blk = cg.procsFiles.find((f) => f.includes('/blkio/'))!.replace('/cgroup.procs', '');
      expect(read(blk, 'blkio.throttle.write_bps_device')).toBe(`${loop.majmin} ${2 ** 20}`);
      expect(read(blk, 'blkio.throttle.read_iops_device')).toBe(`${loop.majmin} 1000`);
        const child = spawn('sh', ['-c', `read x; exec dd if=/dev/zero of=${loop.dev} bs=64k count=32 oflag=direct`], { stdio: ['pipe', 'ignore', 'ignore'] });
        const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
        join(cg, child.pid!);
        const t0 = Date.now();
        child.stdin!.write('go\n');
        expect(await exited).toBe(0);
        // 2 MiB at 1 MiB/s: about 2 s (the first bios may pass before the throttle's slice starts).
        expect(Date.now() - t0).toBeGreaterThan(1200);
        expect(cg.usage().ioWriteBytes).toBeGreaterThanOrEqual(2 * 2 ** 20);
      } finally {
        await cg.destroy();
      }
    } finally {
      loop.remove();
    }
  });

  it('kill() ends every task, destroy() leaves nothing and is idempotent', async () => {
    const cg = make({ memory: '64MiB', pids: 32 });
    const sleeps = [spawnSleep(), spawnSleep(), spawnSleep()];
    for (const s of sleeps) join(cg, s.child.pid!);
    expect(cg.usage().pids).toBe(3);
    cg.kill();
    expect(await Promise.all(sleeps.map((s) => s.exited))).toEqual(['SIGKILL', 'SIGKILL', 'SIGKILL']);
    const another = spawnSleep();
    join(cg, another.child.pid!);
    const first = cg.destroy();
    expect(cg.destroy()).toBe(first);
    await first;
    await cg.destroy();
    expect(await another.exited).toBe('SIGKILL');
    for (const dir of cg.dirs) expect(existsSync(dir)).toBe(false);
    expect(cg.cloneIntoFd).toBeNull();
  });

  it('places a child race-free with clone3(CLONE_INTO_CGROUP) into the cgroup2 leaf (hybrid)', async (ctx) => {
    if (host.kind !== 'hybrid') return ctx.skip();
    const cg = make({});
    const p = startPython(
      [
        'import ctypes, os, struct',
        'libc = ctypes.CDLL(None, use_errno=True)',
        'libc.syscall.restype = ctypes.c_long',
        '# struct clone_args: flags=CLONE_INTO_CGROUP, exit_signal=SIGCHLD, cgroup=fd 3',
        "args = ctypes.create_string_buffer(struct.pack('11Q', 0x200000000, 0, 0, 0, 17, 0, 0, 0, 0, 0, 3), 88)",
        'pid = libc.syscall(ctypes.c_long(435), args, ctypes.c_size_t(88))',
        'if pid == 0:',
        "    os.execv('/bin/sleep', ['sleep', '30'])",
        'print(pid if pid > 0 else -ctypes.get_errno(), flush=True)',
        'if pid > 0:',
        '    print(os.waitpid(pid, 0)[1], flush=True)',
      ].join('\n'),
      [cg.cloneIntoFd!],
    );
    try {
      p.send();
      const pid = Number(await p.line());
      expect(pid).toBeGreaterThan(0);
      const leaf = cg.dirs[cg.dirs.length - 1]!;
      expect(read(leaf, 'cgroup.procs')).toBe(`${pid}`);
      expect(read(leaf, 'cgroup.events')).toContain('populated 1');
      cg.kill();
      expect(Number(await p.line())).toBe(9); // wait status: killed by SIGKILL
      expect(read(leaf, 'cgroup.events')).toContain('populated 0');
    } finally {
      await cg.destroy();
    }
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
    const s = spawnSleep();
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
    for (const r of d.subtreeRoots) if (existsSync(r)) rmdirSync(r);
    const cpu0 = readFileSync('/sys/devices/system/cpu/online', 'utf8').trim().split(/[-,]/)[0]!;
    const cg = d.create(newId('b'), resolveLimits({ memory: '64MiB', pids: 8, cpus: 1, cpuset: cpu0 }).cgroup);
    try {
      expect(read(cg.procsFiles[0]!.replace('/cgroup.procs', ''), 'cpuset.cpus')).toBe(cpu0);
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
    const s = spawnSleep();
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

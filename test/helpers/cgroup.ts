// Shared by the cgroup driver tests (test/kernel/cgroup-v1.test.ts, cgroup-v2.test.ts): the
// processes they put in sandbox cgroups (a python3 that waits for a line, a sleep), a loop
// device for io limits, reading a control file, the HutchError a driver call throws, and the
// workloads both drivers must hold (a fork bomb, a memory hog, a busy loop).
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { expect } from 'vitest';
import type { CgroupUsage, SandboxCgroup } from '../../lib/cgroup/driver.js';
import { HutchError } from '../../lib/errors.js';
import { resolveLimits, type Limits } from '../../lib/limits.js';
import { needs } from './require.js';

const PY = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
let seq = 0;

/** A cgroup id unique to this process and call. */
export const newId = (tag: string): string => `t${process.pid}-${tag}-${seq++}`;

/** A control file's content, trimmed. */
export function read(dir: string, file: string): string {
  return readFileSync(`${dir}/${file}`, 'utf8').trim();
}

export interface Started {
  child: ChildProcess;
  line(): Promise<string>;
  send(s?: string): void;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts python3 running `body` after it reads one line, so it can be joined to a cgroup first. */
export function startPython(body: string, extraFds: number[] = []): Started {
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

/** `sleep seconds`, and the signal that ended it. */
export function spawnSleep(seconds: number): { child: ChildProcess; exited: Promise<NodeJS.Signals | null> } {
  const child = spawn('sleep', [String(seconds)], { stdio: 'ignore' });
  return { child, exited: new Promise((r) => child.on('exit', (_c, s) => r(s))) };
}

/** A loop device over a sparse temp file, for io limits; null when the host cannot make one. */
export function makeLoop(): { dev: string; majmin: string; remove(): void } | null {
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

/** The HutchError `fn` throws: its code, and its message mentioning each of `mention`. */
export function expectError(fn: () => unknown, code: string, ...mention: string[]): HutchError {
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

/**
 * A cgroup driver under test: a sandbox cgroup with these limits, and how a process this test
 * started joins it. The checks below run the same workload on either driver.
 */
export interface CgroupSubject {
  make(limits: Limits): SandboxCgroup;
  join(cg: SandboxCgroup, pid: number): void;
}

/** A fork bomb at `pids: 8` gets 7 children and 57 refusals; the host keeps working. `more` checks the cgroup before it goes. */
export async function forkBombHeld(t: CgroupSubject, more: (cg: SandboxCgroup) => void = () => undefined): Promise<void> {
  const cg = t.make({ pids: 8 });
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
      '        time.sleep(60)',
      '        os._exit(0)',
      '    ok += 1',
      'print(ok, fail, flush=True)',
      'sys.stdin.readline()',
    ].join('\n'),
  );
  try {
    t.join(cg, p.child.pid!);
    p.send();
    const [ok, fail] = (await p.line()).split(' ').map(Number);
    expect(ok).toBe(7); // 8 tasks: the python parent and 7 children
    expect(fail).toBe(57);
    expect(cg.usage().pids).toBe(8);
    more(cg);
    expect(spawnSync('true').status).toBe(0);
  } finally {
    await cg.destroy();
  }
  expect((await p.exited).signal).toBe('SIGKILL');
}

/** A hog at `memory: 32MiB` is OOM-killed and counted, its peak between 16 and 32 MiB. */
export async function hogOomKilled(t: CgroupSubject): Promise<void> {
  const cg = t.make({ memory: '32MiB' });
  const p = startPython(['chunks = []', 'for i in range(64):', "    chunks.append(b'x' * (8 << 20))", '    print(i, flush=True)', "print('survived', flush=True)"].join('\n'));
  try {
    t.join(cg, p.child.pid!);
    expect(cg.oomKills()).toBe(0);
    p.send();
    expect((await p.exited).signal).toBe('SIGKILL');
    expect(cg.oomKills()).toBeGreaterThanOrEqual(1);
    const u = cg.usage();
    expect(u.oomKills).toBeGreaterThanOrEqual(1);
    expect(u.memoryPeakBytes).toBeGreaterThan(16 * 2 ** 20);
    expect(u.memoryPeakBytes).toBeLessThanOrEqual(32 * 2 ** 20);
  } finally {
    await cg.destroy();
  }
}

/** A busy loop at `cpus: 0.5` gets 0.35-0.65 of a CPU, and the cgroup counts it; `more` checks the usage against the loop's own figures. */
export async function busyLoopHeld(t: CgroupSubject, more: (u: CgroupUsage, cpu: number, wall: number) => void = () => undefined): Promise<void> {
  const cg = t.make({ cpus: 0.5 });
  const p = startPython(
    ['import time', 't0 = time.monotonic(); c0 = time.process_time()', 'while time.monotonic() - t0 < 2: pass', 'print(time.process_time() - c0, time.monotonic() - t0, flush=True)'].join('\n'),
  );
  try {
    t.join(cg, p.child.pid!);
    p.send();
    const [cpu, wall] = (await p.line()).split(' ').map(Number) as [number, number];
    expect(cpu / wall).toBeGreaterThanOrEqual(0.35);
    expect(cpu / wall).toBeLessThanOrEqual(0.65);
    await p.exited;
    const u = cg.usage();
    expect(u.cpuUserMs! + u.cpuSystemMs!).toBeGreaterThan(cpu * 1000 * 0.8);
    more(u, cpu, wall);
  } finally {
    await cg.destroy();
  }
}

/** A 16 MiB allocation under `memory: 128MiB`: a plausible peak; `afterFree` checks resetPeak() once it is freed. */
export async function peakOf16MiB(t: CgroupSubject, afterFree: (cg: SandboxCgroup) => void): Promise<void> {
  const cg = t.make({ memory: '128MiB' });
  const p = startPython(["b = b'x' * (16 << 20)", "print('allocated', flush=True)", 'sys.stdin.readline()', 'del b', "print('freed', flush=True)", 'sys.stdin.readline()'].join('\n'));
  try {
    t.join(cg, p.child.pid!);
    p.send();
    expect(await p.line()).toBe('allocated');
    const u = cg.usage();
    expect(u.memoryPeakBytes).toBeGreaterThanOrEqual(16 * 2 ** 20);
    expect(u.memoryPeakBytes).toBeLessThan(128 * 2 ** 20);
    expect(u.pids).toBe(1);
    expect(u.oomKills).toBe(0);
    p.send();
    expect(await p.line()).toBe('freed');
    afterFree(cg);
  } finally {
    await cg.destroy();
  }
}

/**
 * Writes to a loop device under `io: { writeBps: '1MiB', readIops: 1000 }`: `files` checks the
 * limit files the driver wrote, then 2 MiB take over 1.2 s and are counted. Skipped (through
 * `skip`) where the host cannot make a loop device.
 */
export async function writesThrottled(
  t: Pick<CgroupSubject, 'join'>,
  create: (limits: ReturnType<typeof resolveLimits>['cgroup'], ioDevice: string) => SandboxCgroup,
  files: (cg: SandboxCgroup, majmin: string) => void,
  skip: () => void,
): Promise<void> {
  const loop = makeLoop();
  if (needs(loop !== null, 'a loop device (losetup) to throttle') !== undefined || !loop) return skip();
  try {
    const cg = create(resolveLimits({ io: { writeBps: '1MiB', readIops: 1000 } }).cgroup, loop.majmin);
    try {
      files(cg, loop.majmin);
      const child = spawn('sh', ['-c', `read x; exec dd if=/dev/zero of=${loop.dev} bs=64k count=32 oflag=direct`], { stdio: ['pipe', 'ignore', 'ignore'] });
      const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
      t.join(cg, child.pid!);
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
}

/**
 * kill() ends every task of `cg` (`tasks` counts them); destroy() kills what joined since,
 * removes every dir, and is idempotent.
 */
export async function killThenDestroy(t: Pick<CgroupSubject, 'join'>, cg: SandboxCgroup, tasks: (cg: SandboxCgroup) => number): Promise<void> {
  const sleeps = [spawnSleep(60), spawnSleep(60), spawnSleep(60)];
  for (const s of sleeps) t.join(cg, s.child.pid!);
  expect(tasks(cg)).toBe(3);
  cg.kill();
  expect(await Promise.all(sleeps.map((s) => s.exited))).toEqual(['SIGKILL', 'SIGKILL', 'SIGKILL']);
  const another = spawnSleep(60);
  t.join(cg, another.child.pid!);
  const first = cg.destroy();
  expect(cg.destroy()).toBe(first);
  await first;
  await cg.destroy();
  expect(await another.exited).toBe('SIGKILL');
  for (const dir of cg.dirs) expect(existsSync(dir)).toBe(false);
  expect(cg.cloneIntoFd).toBeNull();
}

/**
 * A child cloned straight into `cg`'s cgroup2 leaf with clone3(CLONE_INTO_CGROUP), running
 * `argv`: it is the leaf's only process and populates it; `whileRunning` looks at it (its
 * output lines through `line`); cg.kill() ends it and the leaf empties.
 */
export async function clonedInto(cg: SandboxCgroup, argv: string[], whileRunning: (line: () => Promise<string>) => Promise<void> = async () => undefined): Promise<void> {
  const p = startPython(
    [
      'import ctypes, os, struct',
      'libc = ctypes.CDLL(None, use_errno=True)',
      'libc.syscall.restype = ctypes.c_long',
      '# struct clone_args: flags=CLONE_INTO_CGROUP, exit_signal=SIGCHLD, cgroup=fd 3',
      "args = ctypes.create_string_buffer(struct.pack('11Q', 0x200000000, 0, 0, 0, 17, 0, 0, 0, 0, 0, 3), 88)",
      'pid = libc.syscall(ctypes.c_long(435), args, ctypes.c_size_t(88))',
      'if pid == 0:',
      `    os.execv(${JSON.stringify(argv[0])}, ${JSON.stringify(argv)})`,
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
    await whileRunning(() => p.line());
    cg.kill();
    expect(Number(await p.line())).toBe(9); // wait status: killed by SIGKILL
    expect(read(leaf, 'cgroup.events')).toContain('populated 0');
  } finally {
    await cg.destroy();
  }
}

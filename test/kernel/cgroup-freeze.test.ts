// SandboxCgroup.freeze/thaw on the real kernel: the cgroup2 freezer (cgroup.freeze, the v2
// driver and the hybrid driver's cgroup2 leaf) and the v1 freezer controller (freezer.state,
// used where a sandbox has no cgroup2 leaf). A busy loop's CPU time stops while frozen and
// goes on after the thaw; both calls are idempotent.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { cgroupDriver, detectCgroups, type SandboxCgroup } from '../../lib/cgroup/driver.js';
import { V1Cgroup } from '../../lib/cgroup/v1.js';
import { resolveLimits } from '../../lib/limits.js';
import { isRoot, needs } from '../helpers/require.js';
import { rmdirSubtreeRoot } from '../helpers/leaks.js';

const host = detectCgroups();
const skipRoot = needs(isRoot, 'cgroup tests need root');
const unified = host.unified;
const roots = new Set<string>();
const made: string[] = [];
let seq = 0;
const newId = (tag: string) => `t${process.pid}-fz-${tag}-${seq++}`;

afterAll(() => {
  const rm = (d: string) => {
    try {
      if (existsSync(d)) rmdirSubtreeRoot(d);
    } catch {
      /* reported by the suite's leak check */
    }
  };
  for (const d of made.reverse()) rm(d);
  for (const r of roots) if (r.includes('hutch-test-fz-')) rm(r);
});

/** CPU ticks (utime + stime) the process used so far. */
function ticks(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return Number(rest[11]) + Number(rest[12]);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A shell that waits for a line on stdin (to be joined first), then spins. */
function spinner(): ChildProcess {
  return spawn('/bin/sh', ['-c', 'read x; while :; do :; done'], { stdio: ['pipe', 'ignore', 'inherit'] });
}

async function checkFreezes(cg: SandboxCgroup, frozen: () => boolean, join: (pid: number) => void): Promise<void> {
  const child = spinner();
  try {
    join(child.pid!);
    child.stdin!.write('go\n');
    await expect.poll(() => ticks(child.pid!), { timeout: 5000 }).toBeGreaterThan(5);
    expect(await cg.freeze()).toBe(true);
    expect(await cg.freeze()).toBe(false); // idempotent, and says it was frozen already
    expect(frozen()).toBe(true);
    const a = ticks(child.pid!);
    await sleep(300);
    expect(ticks(child.pid!)).toBe(a);
    await cg.thaw();
    await cg.thaw(); // idempotent
    expect(frozen()).toBe(false);
    await expect.poll(() => ticks(child.pid!), { timeout: 5000 }).toBeGreaterThan(a);
    // A frozen cgroup can still be destroyed: kill reaches frozen tasks.
    await cg.freeze();
  } finally {
    await cg.destroy();
    child.kill('SIGKILL');
  }
  await cg.thaw(); // after destroy: a no-op
}

describe.skipIf(skipRoot)('cgroup freezer', () => {
  it('the host driver (hybrid here: the cgroup2 leaf) freezes and thaws a sandbox cgroup', async () => {
    const d = cgroupDriver({ parent: `/hutch-test-fz-${process.pid}` });
    for (const r of d.subtreeRoots) roots.add(r);
    const cg = d.create(newId('host'), resolveLimits({}).cgroup);
    const leaf = cg.dirs.at(-1)!;
    const isFrozen = () => (existsSync(`${leaf}/cgroup.events`) ? /^frozen 1$/m.test(readFileSync(`${leaf}/cgroup.events`, 'utf8')) : readFileSync(`${leaf}/freezer.state`, 'utf8').trim() === 'FROZEN');
    await checkFreezes(cg, isFrozen, (pid) => {
      for (const f of cg.procsFiles) writeFileSync(f, `${pid}`);
      if (cg.cloneIntoFd !== null) writeFileSync(`/proc/self/fd/${cg.cloneIntoFd}/cgroup.procs`, `${pid}`);
    });
  });

  it.skipIf(needs(unified !== null && unified.callerDir !== null, 'a cgroup2 mount that shows this process\'s cgroup'))('the v2 driver: cgroup.freeze, done when cgroup.events says frozen 1', async () => {
    const d = cgroupDriver({ kind: 'v2', parent: `${unified!.mount}/hutch-test-fz-v2-${process.pid}` });
    for (const r of d.subtreeRoots) roots.add(r);
    const cg = d.create(newId('v2'), resolveLimits({}).cgroup);
    const dir = cg.dirs[0]!;
    await checkFreezes(cg, () => /^frozen 1$/m.test(readFileSync(`${dir}/cgroup.events`, 'utf8')), (pid) => writeFileSync(`/proc/self/fd/${cg.cloneIntoFd}/cgroup.procs`, `${pid}`));
  });

  it.skipIf(needs(host.v1.has('freezer'), 'a cgroup v1 freezer hierarchy'))('the v1 freezer controller (a sandbox without a cgroup2 leaf): FROZEN, then THAWED', async () => {
    const h = host.v1.get('freezer')!;
    const dir = `${h.callerDir ?? h.mount}/hutch-test-fz-v1-${process.pid}`;
    mkdirSync(dir);
    made.push(dir);
    const cg = new V1Cgroup(newId('v1'), { freezer: dir }, null, null, 'v1', false);
    await checkFreezes(cg, () => readFileSync(`${dir}/freezer.state`, 'utf8').trim() === 'FROZEN', (pid) => writeFileSync(`${dir}/cgroup.procs`, `${pid}`));
  });

  it('without any freezer: EUNSUPPORTED naming how to get one', async () => {
    const cg = new V1Cgroup(newId('none'), {}, null, null, 'v1', false);
    await expect(cg.freeze()).rejects.toMatchObject({ code: 'EUNSUPPORTED', message: expect.stringContaining('freezer') });
  });
});

// Host state in one place (issue 14, section 3): ten sandboxes of a process killed with
// SIGKILL (plain, limited, bridged, persistent with a loop-mounted disk quota) leave cgroups,
// links, leases, records and mounts. ImageStore.prune() in a new process, run with ANOTHER
// store and another cgroup parent, removes all of it (liveness does not depend on the store),
// and never touches a live sandbox of another process. The first create of a new process does
// the same in the background, within seconds, without any prune call.
// Needs the compiled library (npx tsc -p tsconfig.json).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { processStart, isAlive } from '../../lib/host/liveness.js';
import { breakIfStale, createLease, jsonOwner, pruneLeaseTemps } from '../../lib/host/lease.js';
import { leaseSandbox, readSandboxLease, sandboxLeaseDir, unleaseSandbox, unleaseSandboxAsync } from '../../lib/host/sandboxes.js';
import { HutchError, ImageStore } from '../../lib/index.js';
import { isRoot, needs } from '../helpers/require.js';
import {
  CrashChild, ROOT, cgroupsUnder, entries, gone, leases, linkNames, loopsUnder, mountsUnder, privateCgroupParent,
  removeCgroupParent, rmRoot, sleep,
} from '../helpers/reliability.js';

const CHILD = join(ROOT, 'test', 'helpers', 'chaos-child.mjs');
const skip =
  needs(isRoot && existsSync('/bin/busybox'), 'root and busybox-static are needed') ??
  needs(existsSync(join(ROOT, 'dist', 'lib', 'index.js')), 'the compiled library (npx tsc -p tsconfig.json)');

const parent = privateCgroupParent('hostprune');
const otherParent = `${parent}-other`;
const roots: string[] = [];
const RANGE = '10.208.0.0/24';
// Address leases of its own: no other process's network prune takes this test's dead leases first.
process.env.HUTCH_NET_DIR = mkdtempSync('/tmp/hutch-test-hostprune-net-');
roots.push(process.env.HUTCH_NET_DIR);

afterAll(() => {
  for (const r of roots) rmRoot(r);
  removeCgroupParent(parent);
  removeCgroupParent(otherParent);
});

const base = (root: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
  ...process.env,
  HUTCH_ROOT: root,
  HUTCH_CGROUP_PARENT: parent,
  HUTCH_NET_RANGE: RANGE,
  HUTCH_BACKGROUND_PRUNE: '0',
  ...extra,
});

/** A process that made ten sandboxes in `root` and was then SIGKILLed; its pid, sandbox ids, slots. */
async function deadTen(root: string): Promise<{ pid: number; ids: string[]; slots: string[] }> {
  const c = new CrashChild('ten', base(root), undefined, CHILD);
  await c.wait((e) => e.ev === 'ready', 60_000);
  c.proc.kill('SIGKILL');
  await c.exited;
  const sbs = c.sandboxes();
  for (let t = 0; t < 200 && !sbs.every((s) => gone(s.pid!)); t++) await sleep(10);
  return { pid: c.proc.pid!, ids: sbs.map((s) => s.id!), slots: sbs.flatMap((s) => (s.slot ? [s.slot] : [])) };
}

/** What of the dead process is still on the host and in its store. */
function left(root: string, dead: { pid: number; ids: string[]; slots: string[] }): string[] {
  const ids = new Set(dead.ids);
  const out: string[] = [];
  for (const d of cgroupsUnder(parent)) if (ids.has(d.slice(d.lastIndexOf('/') + 1))) out.push(`cgroup ${d}`);
  for (const n of entries(sandboxLeaseDir())) if (ids.has(n)) out.push(`sandbox lease ${n}`);
  for (const n of entries(root, 'sandboxes')) if (ids.has(n)) out.push(`record ${n}`);
  for (const l of leases()) if (l.ownerPid === dead.pid) out.push(`address lease ${l.slot}`);
  const links = linkNames();
  for (const s of dead.slots) for (const l of links.filter((x) => x.startsWith(`hx${s}`))) out.push(`link ${l}`);
  for (const m of mountsUnder(root)) out.push(`mount ${m}`);
  for (const l of loopsUnder(root)) out.push(`loop ${l}`);
  for (const n of entries(root, 'tmp', 'trash')) out.push(`trash ${n}`);
  return out;
}

/** Runs `code` (an ES module body, `store` = an ImageStore at argv[1]) in a fresh Node process. */
function inNewProcess(code: string, root: string, env: NodeJS.ProcessEnv): string {
  const lib = JSON.stringify(join(ROOT, 'dist', 'lib', 'index.js'));
  const body = `import { ImageStore, Sandbox } from ${lib};\nconst store = new ImageStore({ root: process.argv[1] });\n${code}`;
  return execFileSync(process.execPath, ['--input-type=module', '-e', body, root], { env, encoding: 'utf8', timeout: 60_000 });
}

describe('liveness and lease files', () => {
  it('a record with a live pid but another start time is dead (a recycled pid)', () => {
    const start = processStart(process.pid)!;
    expect(isAlive({ pid: process.pid, start })).toBe(true);
    expect(isAlive({ pid: process.pid, start: String(Number(start) + 1) })).toBe(false);
    expect(isAlive({ pid: 0, start })).toBe(false);
  });

  it('an O_EXCL lease is held once; a dead owner\'s is broken, a live one\'s and a young torn one are not', () => {
    const dir = mkdtempSync('/tmp/hutch-test-lease-');
    roots.push(dir);
    const f = join(dir, 'x');
    const me = JSON.stringify({ pid: process.pid, start: processStart(process.pid) });
    expect(createLease(f, me)).toBe(true);
    expect(createLease(f, me)).toBe(false);
    expect(breakIfStale(f, jsonOwner, 10_000)).toBe(false);
    expect(readFileSync(f, 'utf8')).toBe(me);
    const dead = join(dir, 'dead');
    expect(createLease(dead, JSON.stringify({ pid: process.pid, start: '1' }))).toBe(true);
    expect(breakIfStale(dead, jsonOwner, 10_000)).toBe(true);
    expect(existsSync(dead)).toBe(false);
    const torn = join(dir, 'torn');
    expect(createLease(torn, '')).toBe(true);
    expect(breakIfStale(torn, jsonOwner, 10_000)).toBe(false);
    expect(breakIfStale(torn, jsonOwner, 0)).toBe(true);
    // A lease appears whole (a temp file linked into place); a temp file left by a taker
    // killed inside createLease goes with pruneLeaseTemps, a live taker's stays.
    const deadTemp = join(dir, `.y.${process.pid}-1-0badf00d`);
    const liveTemp = join(dir, `.y.${process.pid}-${processStart(process.pid)}-0badf00d`);
    writeFileSync(deadTemp, '{}');
    writeFileSync(liveTemp, '{}');
    expect(pruneLeaseTemps(dir)).toBe(1);
    expect([existsSync(deadTemp), existsSync(liveTemp)]).toEqual([false, true]);
    expect(entries(dir).sort()).toEqual([`.y.${process.pid}-${processStart(process.pid)}-0badf00d`, 'x']);
  });

  it('an ended sandbox lease is kept as a spare: the next lease reuses its inode, whole, and a prune takes spares only of dead owners', async () => {
    const state = mkdtempSync('/tmp/hutch-test-spare-');
    roots.push(state);
    const saved = process.env.HUTCH_STATE_DIR;
    process.env.HUTCH_STATE_DIR = state;
    try {
      const dir = sandboxLeaseDir();
      const tag = `${process.pid}-${processStart(process.pid)}`;
      leaseSandbox('spare0000001', '/var/tmp/a-store-with-a-rather-long-name');
      const ino = statSync(join(dir, 'spare0000001')).ino;
      unleaseSandbox('spare0000001');
      // Gone as a lease; kept under a temp name that names its owner (pruneLeaseTemps' pattern).
      const names = entries(dir);
      expect(names).toHaveLength(1);
      expect(names[0]).toMatch(new RegExp(`^\\.spare0000001\\.${tag}-[0-9a-f]{8}$`));
      expect(readSandboxLease('spare0000001')).toBeUndefined();
      // The next lease is the same inode, its text replaced whole (a shorter one: no tail left).
      leaseSandbox('spare0000002', '/s');
      expect(statSync(join(dir, 'spare0000002')).ino).toBe(ino);
      expect(entries(dir)).toEqual(['spare0000002']);
      expect(readSandboxLease('spare0000002')).toEqual({ id: 'spare0000002', store: '/s', pid: process.pid, start: processStart(process.pid), cgroupParent: expect.anything() });
      expect(JSON.parse(readFileSync(join(dir, 'spare0000002'), 'utf8')).store).toBe('/s');
      await unleaseSandboxAsync('spare0000002');
      expect(entries(dir).filter((n) => !n.startsWith('.'))).toEqual([]);
      // This process is alive: its spare stays; a dead owner's goes.
      expect(pruneLeaseTemps(dir)).toBe(0);
      writeFileSync(join(dir, `.spare0000003.${process.pid}-1-0badf00d`), '{}');
      expect(pruneLeaseTemps(dir)).toBe(1);
      expect(entries(dir)).toHaveLength(1);
    } finally {
      if (saved === undefined) delete process.env.HUTCH_STATE_DIR;
      else process.env.HUTCH_STATE_DIR = saved;
    }
  });
});

describe.skipIf(skip)('leftovers of a SIGKILLed process, whichever store', () => {
  it('ImageStore.prune() in a new process with another store removes them all, and keeps a live sandbox of another process', async () => {
    const root = mkdtempSync('/var/tmp/hutch-test-hostprune-');
    const other = mkdtempSync('/var/tmp/hutch-test-hostprune-other-');
    roots.push(root, other);
    const dead = await deadTen(root);
    const before = left(root, dead);
    // What the kill left: cgroups (three hierarchies on a hybrid host), records, leases, links, loop mounts.
    expect(before.filter((l) => l.startsWith('cgroup')).length).toBeGreaterThanOrEqual(10);
    expect(before.filter((l) => l.startsWith('mount')).length).toBe(2);
    // Four bridged sandboxes (the kernel may already have removed a veth with its netns; the ifb and the lease stay).
    expect(before.filter((l) => l.startsWith('address lease')).length).toBe(4);

    // A live sandbox of another process, in the same store and cgroup parent.
    const live = new CrashChild('clean', base(root), undefined, CHILD);
    try {
      const sb = await live.wait((e) => e.ev === 'sandbox', 60_000);
      inNewProcess('await store.prune();', other, base(other, { HUTCH_CGROUP_PARENT: otherParent }));
      expect(left(root, dead)).toEqual([]);
      expect(gone(sb.pid!)).toBe(false);
      expect(cgroupsUnder(parent).map((d) => d.slice(d.lastIndexOf('/') + 1))).toContain(sb.id);
      expect(entries(root, 'sandboxes')).toEqual([sb.id]);
      expect(entries(sandboxLeaseDir())).toContain(sb.id);
    } finally {
      live.proc.stdin!.end();
      await live.exited;
    }
    expect(cgroupsUnder(parent)).toEqual([]);
    expect(entries(root, 'sandboxes')).toEqual([]);
  }, 120_000);

  it("the first create of a new process (another store) cleans them up in the background, within seconds", async () => {
    const root = mkdtempSync('/var/tmp/hutch-test-hostprune-');
    const other = mkdtempSync('/var/tmp/hutch-test-hostprune-other-');
    roots.push(root, other);
    const dead = await deadTen(root);
    expect(left(root, dead).length).toBeGreaterThan(10);
    const next = new CrashChild('clean', base(other, { HUTCH_CGROUP_PARENT: otherParent, HUTCH_BACKGROUND_PRUNE: '1' }), undefined, CHILD);
    let still: string[] = [];
    try {
      await next.wait((e) => e.ev === 'ready', 60_000);
      for (let t = 0; t < 100; t++) {
        still = left(root, dead);
        if (still.length === 0) break;
        await sleep(100);
      }
    } finally {
      next.proc.stdin!.end();
      await next.exited;
    }
    expect(still, next.stderr).toEqual([]);
  }, 120_000);
});

describe.skipIf(skip)('a frozen sandbox', () => {
  it('dies with its owner (SIGKILL of the owner while the sandbox is paused, as during a commit)', async () => {
    const root = mkdtempSync('/var/tmp/hutch-test-hostprune-');
    roots.push(root);
    const c = new CrashChild('paused', base(root), undefined, CHILD);
    await c.wait((e) => e.ev === 'ready', 60_000);
    const sb = c.sandboxes()[0]!;
    const procs = [sb.pid!, ...readFileSync(`/proc/${sb.pid}/task/${sb.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number)];
    expect(procs.length, 'init and the sleep').toBe(2);
    c.proc.kill('SIGKILL');
    await c.exited;
    for (let t = 0; t < 200 && !procs.every(gone); t++) await sleep(10);
    const state = (p: number): string => {
      try {
        return readFileSync(`/proc/${p}/status`, 'utf8').split('\n').filter((l) => /^(Name|State|PPid|SigPnd|ShdPnd):/.test(l)).join(' ');
      } catch {
        return 'gone';
      }
    };
    expect(procs.filter((p) => !gone(p)).map(state), 'sandbox processes alive 2 s after the owner was killed').toEqual([]);
    await new ImageStore({ root }).prune();
    expect(cgroupsUnder(parent)).toEqual([]);
  }, 60_000);
});

describe.skipIf(skip)('a cleanup that fails', () => {
  it('is a HutchError from prune(), and only a warning for the create that started it in the background', async () => {
    // A dead sandbox whose store cannot take its record out: tmp/ is a file (ENOTDIR on the trash).
    const broken = mkdtempSync('/var/tmp/hutch-test-hostprune-broken-');
    const root = mkdtempSync('/var/tmp/hutch-test-hostprune-');
    roots.push(broken, root);
    const id = `deadbeef${Math.floor(Math.random() * 1e6)}`;
    mkdirSync(join(broken, 'sandboxes', id), { recursive: true });
    const dead = { pid: 1, start: 'not-init' };
    writeFileSync(join(broken, 'sandboxes', id, 'owner.json'), JSON.stringify({ image: 'sha256:00', ...dead }));
    writeFileSync(join(broken, 'tmp'), 'not a dir');
    mkdirSync(sandboxLeaseDir(), { recursive: true });
    const lease = join(sandboxLeaseDir(), id);
    writeFileSync(lease, JSON.stringify({ ...dead, id, store: broken, cgroupParent: null }));
    try {
      const e = await new ImageStore({ root }).prune().then(() => undefined, (err: unknown) => err);
      expect(HutchError.is(e) && { code: e.code, errno: e.errno }, String(e)).toEqual({ code: 'ESTORE', errno: 'ENOTDIR' });
      const out = inNewProcess(
        `process.on('warning', (w) => { if (w.name === 'HutchPruneWarning') console.log('warning', w.code); });
         const sb = await Sandbox.create({ image: 'busybox', store });
         await Sandbox.settle();
         console.log('created', (await sb.exec('echo ok', { encoding: 'utf8' })).stdout.trim());
         await sb.destroy();`,
        root,
        base(root, { HUTCH_BACKGROUND_PRUNE: '1' }),
      );
      expect(out.trim().split('\n').sort()).toEqual(['created ok', 'warning ESTORE']);
      // The lease stays for the next prune, which finishes once the store is fixed.
      expect(existsSync(lease)).toBe(true);
      rmSync(join(broken, 'tmp'));
      await new ImageStore({ root }).prune();
      expect(existsSync(lease)).toBe(false);
      expect(existsSync(join(broken, 'sandboxes', id))).toBe(false);
    } finally {
      rmSync(lease, { force: true });
    }
  }, 60_000);
});

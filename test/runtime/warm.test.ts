// Warm starts: Sandbox.run makes a blank (cloned, in its cgroup, id maps written, nothing
// mounted or run) for the next run with the same image and limits (lib/warm.ts).
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Sandbox } from '../../lib/index.js';
import { pruneNetwork } from '../../lib/network/index.js';
import { blanksMade, blanksNow as blanksReady, IDLE_MS, MAX_BLANKS } from '../../lib/warm.js';
import { leftovers } from '../helpers/leaks.js';
import { ROOT } from '../helpers/reliability.js';

const hostname = async (limits?: object) =>
  ((await Sandbox.run({ image: 'busybox', command: ['hostname'], encoding: 'utf8', ...(limits ? { limits } : {}) })).stdout as string).trim();

/** The blanks, once those being made (on a pool thread) are done. */
async function blanksNow(): Promise<{ id: string; pid: number }[]> {
  await blanksMade();
  return blanksReady();
}

afterEach(async () => {
  await Sandbox.settle();
});

afterAll(async () => {
  // One test attaches a bridge network: restore the host's forwarding and nft state if no
  // other sandbox uses it, as the network tests do.
  await pruneNetwork();
});

describe('warm starts of Sandbox.run', () => {
  it('a run leaves one blank for the next run like it, which that run becomes', async () => {
    await hostname();
    const [blank, ...more] = await blanksNow();
    expect(more).toEqual([]);
    expect(blank).toBeDefined();
    // The blank has run nothing: its process is the setup child, not yet an init.
    expect(readdirSync(`/proc/${blank!.pid}/task`)).toHaveLength(1);
    expect(await hostname()).toBe(`hutch-${blank!.id}`);
    // ... and the next one is ready again.
    expect((await blanksNow()).map((b) => b.id)).not.toContain(blank!.id);
    expect(await blanksNow()).toHaveLength(1);
  });

  it('a sandbox from a blank is as confined and as fresh as any: limits, ids, an empty writable layer', async () => {
    const limits = { pids: 8, memory: '64MiB' };
    await Sandbox.run({ image: 'busybox', command: 'echo dirty > /tmp/mark', limits });
    const blank = (await blanksNow())[0]!;
    const r = await Sandbox.run({
      image: 'busybox',
      limits,
      encoding: 'utf8',
      // The fork test comes last: at the pids limit the shell itself cannot fork any more.
      command: 'hostname; cat /tmp/mark 2>&1; grep -E "^(Uid|Seccomp):" /proc/self/status; ifconfig lo | grep -c "UP LOOPBACK RUNNING"; for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 >/dev/null 2>&1 & done',
    });
    const lines = (r.stdout as string).split('\n');
    expect(lines[0]).toBe(`hutch-${blank.id}`);
    expect(lines[1]).toMatch(/No such file/); // nothing of the previous run
    expect(lines[2]).toMatch(/^Uid:\s+0\s+0\s+0\s+0$/);
    expect(lines[3]).toMatch(/^Seccomp:\s+2$/);
    expect(lines[4]).toBe('1'); // lo was brought up while the blank waited
    expect(r.stderr).toMatch(/can't fork|Resource temporarily unavailable/); // pids: 8 holds
  });

  it('whatever else a run asks for still applies to a sandbox from a blank: volumes, hostname, read-only root, user, host image, bridge network', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hutch-warm-vol-'));
    try {
      writeFileSync(join(dir, 'in.txt'), 'from the host\n');
      chmodSync(dir, 0o755);
      const opts = { image: 'busybox', mounts: [{ source: dir, target: '/data' }], hostname: 'warm-box', readonlyRootfs: true, user: '1000:1000', encoding: 'utf8' as const };
      const cmd = 'cat /data/in.txt; hostname; touch /x 2>&1 | grep -c Read-only; id -u';
      await Sandbox.run({ ...opts, command: cmd });
      const blank = (await blanksNow())[0]!;
      const r = await Sandbox.run({ ...opts, command: cmd });
      expect(r.stdout).toBe('from the host\nwarm-box\n1\n1000\n');
      expect((await blanksNow()).map((b) => b.id)).not.toContain(blank.id); // it was taken
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    // The host image: its /usr and friends are binds sent to the blank with its go; host root's
    // files show as owned by nobody (not idmapped: issue 13, hole 4).
    await Sandbox.run({ image: 'host', command: ['true'] });
    const hostBlank = (await blanksNow()).at(-1)!;
    const h = await Sandbox.run({ image: 'host', command: 'hostname; stat -c %u /usr/bin', encoding: 'utf8' });
    expect(h.stdout).toBe(`hutch-${hostBlank.id}\n65534\n`);
    // A bridge network is attached to the blank's namespace once it is set up.
    const net = { mode: 'bridge' as const };
    await Sandbox.run({ image: 'busybox', network: net, command: ['true'] });
    const b = await Sandbox.run({ image: 'busybox', network: net, command: 'ip -4 addr show eth0 | grep -c inet', encoding: 'utf8' });
    expect((b.stdout as string).trim()).toBe('1');
  });

  it('other limits or another image do not take the blank', async () => {
    await hostname();
    const blank = (await blanksNow())[0]!;
    expect(await hostname({ pids: 50 })).not.toBe(`hutch-${blank.id}`);
    expect((await blanksNow()).map((b) => b.id)).toContain(blank.id);
  });

  it('keeps at most MAX_BLANKS blanks, dropping the oldest', async () => {
    for (let i = 0; i < MAX_BLANKS + 2; i++) await hostname({ pids: 100 + i });
    const now = await blanksNow();
    expect(now).toHaveLength(MAX_BLANKS);
    // The first two limits' blanks went; the newest is there.
    expect(await hostname({ pids: 100 + MAX_BLANKS + 1 })).toBe(`hutch-${now[now.length - 1]!.id}`);
  });

  it('a blank holds no copy of the process\'s other fds (child_process.spawn never waits on it)', async () => {
    // libuv's spawn blocks reading a close-on-exec pipe until its child has exec'd; a blank
    // cloned (on a pool thread) in between with a copy of the write end, kept while it waits,
    // would hang the event loop. Run both side by side many times.
    const { execFile } = await import('node:child_process');
    const start = performance.now();
    for (let i = 0; i < 40; i++) {
      await Promise.all([
        Sandbox.run({ image: 'busybox', command: ['true'] }),
        new Promise((r) => execFile('/bin/true', r)),
        new Promise((r) => execFile('/bin/true', r)),
      ]);
    }
    expect(performance.now() - start).toBeLessThan(20_000);
    // ... and a blank's fd table is its own four fds and nothing else.
    // (Its first step after clone: the parent may see it a moment before the child took it.)
    const blank = (await blanksNow())[0]!;
    const fds = () => readdirSync(`/proc/${blank.pid}/fd`).length;
    for (let i = 0; i < 100 && fds() !== 4; i++) await new Promise((r) => setTimeout(r, 10));
    // What each fd is, when there are more (so a failure names the fd that leaked in).
    const named = () =>
      readdirSync(`/proc/${blank.pid}/fd`).map((fd) => {
        try {
          return `${fd} -> ${readlinkSync(`/proc/${blank.pid}/fd/${fd}`)}`;
        } catch {
          return `${fd} (gone)`;
        }
      });
    expect(named()).toHaveLength(4);
  }, 30_000);

  it('a blank killed from outside is replaced: the run starts the ordinary way', async () => {
    await hostname();
    const blank = (await blanksNow())[0]!;
    process.kill(blank.pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 50));
    const r = await Sandbox.run({ image: 'busybox', command: ['true'] });
    expect(r.exitCode).toBe(0);
  });

  it('settle() drops the blanks, and nothing of them is left', async () => {
    await hostname();
    const [blank] = await blanksNow();
    expect(blank).toBeDefined();
    await Sandbox.settle();
    expect(await blanksNow()).toEqual([]);
    // Other files' sandboxes may be running: look only for what the blank had.
    expect((await leftovers()).filter((l) => l.includes(blank!.id) || l.startsWith(`process ${blank!.pid} `))).toEqual([]);
    expect(existsSync(`/proc/${blank!.pid}`)).toBe(false);
  });

  it('an unused blank goes after IDLE_MS', async () => {
    await hostname();
    const blank = (await blanksNow())[0]!;
    await new Promise((r) => setTimeout(r, IDLE_MS + 300));
    expect(await blanksNow()).toEqual([]);
    await Sandbox.settle();
    expect(existsSync(`/proc/${blank.pid}`)).toBe(false);
  }, 10_000);

  it('a process that exits with a blank leaves nothing: no cgroup (not even the subtree root it made), record, lease, spare or process', () => {
    const store = mkdtempSync(join(tmpdir(), 'hutch-warm-store-'));
    const ids = mkdtempSync(join(tmpdir(), 'hutch-warm-ids-'));
    const state = mkdtempSync(join(tmpdir(), 'hutch-warm-state-'));
    const parent = `/hutch-warm-exit-${process.pid}-${Date.now()}`;
    try {
      const script = `
        import { Sandbox } from ${JSON.stringify(join(ROOT, 'dist', 'lib', 'index.js'))};
        import { blanksMade, blanksNow } from ${JSON.stringify(join(ROOT, 'dist', 'lib', 'warm.js'))};
        // Three sandboxes at once, ended: their owner records and lease files become spares
        // for the next ones (more than the run and its blank take again).
        const three = await Promise.all([0, 1, 2].map(() => Sandbox.create({ image: 'busybox' })));
        await Promise.all(three.map((s) => s.destroy()));
        const { readdirSync } = await import('node:fs');
        const spares = [readdirSync(${JSON.stringify(join(store, 'spare'))}).length, readdirSync(${JSON.stringify(join(state, 'sandboxes'))}).filter((n) => n.startsWith('.')).length];
        await Sandbox.run({ image: 'busybox', command: ['true'] });
        await blanksMade();
        console.log(JSON.stringify([blanksNow(), spares]));
      `;
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, HUTCH_ROOT: store, HUTCH_IDS_DIR: ids, HUTCH_STATE_DIR: state, HUTCH_CGROUP_PARENT: parent }, encoding: 'utf8' });
      expect(r.stderr).toBe('');
      const [[blank], spares] = JSON.parse(r.stdout) as [{ id: string; pid: number }[], number[]];
      expect(spares).toEqual([3, 3]); // spare records and spare leases, while it ran
      expect(blank).toBeDefined();
      expect(existsSync(`/proc/${blank!.pid}`)).toBe(false);
      expect(readdirSync(join(store, 'sandboxes'))).toEqual([]);
      expect(readdirSync(ids)).toEqual([]);
      // The spares went with the process (a CLI run would otherwise leave one of each per run).
      expect(readdirSync(join(store, 'spare'))).toEqual([]);
      expect(readdirSync(join(state, 'sandboxes'))).toEqual([]);
      expect(readFileCgroups(blank!.id)).toEqual([]);
      // The subtree root it made (under HUTCH_CGROUP_PARENT) went at exit, in every hierarchy.
      expect(readdirSync('/sys/fs/cgroup').filter((c) => existsSync(`/sys/fs/cgroup/${c}${parent}`))).toEqual([]);
    } finally {
      rmSync(store, { recursive: true, force: true });
      rmSync(ids, { recursive: true, force: true });
      rmSync(state, { recursive: true, force: true });
    }
  });
});

function readFileCgroups(id: string): string[] {
  const out: string[] = [];
  for (const c of readdirSync('/sys/fs/cgroup')) {
    const walk = (d: string, depth: number): void => {
      if (depth > 6) return;
      let names: string[] = [];
      try {
        names = readdirSync(d, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
      } catch {
        return;
      }
      for (const n of names) {
        if (n === id) out.push(`${d}/${n}`);
        else walk(`${d}/${n}`, depth + 1);
      }
    };
    walk(`/sys/fs/cgroup/${c}`, 0);
  }
  return out;
}

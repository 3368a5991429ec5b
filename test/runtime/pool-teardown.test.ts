import { execFileSync } from 'node:child_process';
import { closeSync, constants, existsSync, mkdtempSync, openSync, readdirSync, rmSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ImageStore, Sandbox } from '../../lib/index.js';
import { sandboxLeaseDir } from '../../lib/host/sandboxes.js';

/** The pool's private counts (the API has no probe for them). */
const counts = (pool: object) => pool as unknown as { ready: unknown[]; filling: number; lowWater: number };

async function until(what: string, ok: () => boolean): Promise<void> {
  for (let i = 0; i < 2000 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!ok()) throw new Error(`gave up waiting for ${what}`);
}

describe('pool refill while runs are in flight', () => {
  it('serves a burst from what is ready, keeps the low water mark when drained back to back, refills once idle, never reuses', async () => {
    await using pool = Sandbox.pool({ image: 'busybox', size: 4 });
    const c = counts(pool);
    expect(c.lowWater).toBe(2);
    await until('the pool to fill', () => c.ready.length === 4 && c.filling === 0);
    const hosts: string[] = [];
    for (let i = 0; i < 12; i++) {
      const r = await pool.run(['hostname'], { encoding: 'utf8' });
      expect(r.exitCode).toBe(0);
      hosts.push((r.stdout as string).trim());
      // Checked as the caller gets its result, before its next run starts.
      if (i < 2) expect(c.filling).toBe(0); // 3 ready left of 4, then 2: nothing made yet
      if (i === 2) expect(c.filling).toBe(1); // 1 left, below the mark: refilled one for one
      expect(c.ready.length + c.filling).toBeGreaterThanOrEqual(c.lowWater); // never below the mark
    }
    // A fresh sandbox every time (its hostname names it): none handed out twice.
    expect(hosts.every((h) => /^hutch-[0-9a-f]+$/.test(h))).toBe(true);
    expect(new Set(hosts).size).toBe(12);
    // No run in flight now: the pool fills to its size again.
    await until('the pool to refill', () => c.ready.length === 4 && c.filling === 0);
    const r = await pool.run(['hostname'], { encoding: 'utf8' });
    expect(hosts).not.toContain((r.stdout as string).trim());
  });
});

describe('pool.run results read at the exit report', () => {
  it('has all the output: what came before the exit, what a process left behind writes after, a large amount', async () => {
    await using pool = Sandbox.pool({ image: 'busybox', size: 2 });
    // The command exits at once; what it left behind holds stdout and writes later: the
    // result waits for that output's EOF, not just the exit report.
    const late = await pool.run('(sleep 0.3; echo late; echo err >&2) & echo early', { encoding: 'utf8' });
    expect(late.exitCode).toBe(0);
    expect(late.stdout).toBe('early\nlate\n');
    expect(late.stderr).toBe('err\n');
    // More than a pipe holds (64 KiB), on both pipes.
    const big = await pool.run('head -c 300000 /dev/zero; head -c 70000 /dev/zero >&2');
    expect(big.stdout.length).toBe(300000);
    expect(big.stderr.length).toBe(70000);
    // Output and exit at once, many times.
    for (let i = 0; i < 10; i++) {
      const r = await pool.run(['echo', String(i)], { encoding: 'utf8' });
      expect(r.stdout).toBe(`${i}\n`);
    }
  });
});

describe('pool teardown off the event loop', () => {
  it("frees no inode of a sandbox's owner record and lease inside the call (unlinks in the threadpool, or kept as spares)", async () => {
    const store = ImageStore.default();
    const img = await store.resolve('busybox');
    const id = `sbx-rel-${process.pid}`;
    await store.markInUse(img.image.id, id);
    const dir = join(store.root, 'sandboxes', id);
    const lease = join(sandboxLeaseDir(), id);
    expect(existsSync(join(dir, 'owner.json'))).toBe(true);
    expect(existsSync(lease)).toBe(true);
    const inodes = [statSync(join(dir, 'owner.json')).ino, statSync(lease).ino];
    // Where each inode is now: at its place, or kept as a spare (renamed; lease.ts retireLease,
    // records.ts retireRecord); a rename frees no block, an unlink would.
    const kept = (): boolean[] => {
      const spares = existsSync(join(store.root, 'spare')) ? readdirSync(join(store.root, 'spare')).map((n) => join(store.root, 'spare', n, 'owner.json')) : [];
      const leaseSpares = readdirSync(sandboxLeaseDir()).filter((n) => n.startsWith(`.${id}.`)).map((n) => join(sandboxLeaseDir(), n));
      const at = (paths: string[]) => new Set(paths.filter((p) => existsSync(p)).map((p) => statSync(p).ino));
      return [at([join(dir, 'owner.json'), ...spares]).has(inodes[0]!), at([lease, ...leaseSpares]).has(inodes[1]!)];
    };
    // Every libuv threadpool thread held in an open of a FIFO with no writer: work queued now
    // waits for them, so what release() leaves to the threadpool cannot have happened yet.
    const fifoDir = mkdtempSync(join(tmpdir(), 'hutch-pool-fifo-'));
    const fifos = Array.from({ length: Number(process.env.UV_THREADPOOL_SIZE ?? 4) }, (_, i) => join(fifoDir, `f${i}`));
    for (const f of fifos) execFileSync('mkfifo', [f]);
    const held = fifos.map((f) => open(f, 'r'));
    try {
      const released = store.release(id);
      await new Promise((r) => setTimeout(r, 20));
      // The unlinks (which wait for the device on a filesystem mounted `discard`) are not
      // done on the event loop: with the threadpool busy, no inode is freed yet.
      expect(kept()).toEqual([true, true]);
      for (const f of fifos) closeSync(openSync(f, 'w'));
      for (const h of await Promise.all(held)) await h.close();
      await released;
    } finally {
      for (const f of fifos) {
        try {
          closeSync(openSync(f, constants.O_WRONLY | constants.O_NONBLOCK));
        } catch {}
      }
      await Promise.allSettled(held.map((h) => h.then((x) => x.close())));
      rmSync(fifoDir, { recursive: true, force: true });
    }
    expect(existsSync(dir)).toBe(false);
    expect(existsSync(lease)).toBe(false);
  });
});

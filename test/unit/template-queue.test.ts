/**
 * A template's queue of prepared forks (lib/template/queue.ts): a finished run's teardown waits
 * for the forks being prepared at its end (ForkQueue.quiet), never for later ones, and never
 * long when a preparation hangs. The zygote is a stand-in here: no fork is made, so a
 * preparation "hangs" while the zygote never answers and "ends" when it fails.
 */
import { describe, expect, it } from 'vitest';
import { ForkQueue, type QueueHost } from '../../lib/template/queue.js';
import type { Zygote } from '../../lib/template/zygote.js';

function host(zygote: () => Promise<Zygote>): QueueHost {
  return { site: {} as QueueHost['site'], zygote, gone: () => false, track: () => undefined };
}

describe('template fork queue', () => {
  it('lets a teardown start at once when no fork is being prepared', async () => {
    const q = new ForkQueue(host(() => new Promise<never>(() => undefined)), 0);
    q.refill(); // size 0: nothing to prepare
    let done = false;
    void q.quiet().then(() => (done = true));
    await Promise.resolve();
    await Promise.resolve();
    expect(done).toBe(true);
  });

  it('holds a teardown until the fork being prepared at its start is done', async () => {
    const order: string[] = [];
    let fail!: (e: Error) => void;
    const q = new ForkQueue(host(() => new Promise<never>((_, reject) => (fail = reject))), 1);
    q.refill();
    const quiet = q.quiet().then(() => order.push('quiet'));
    await new Promise((r) => setTimeout(r, 20));
    expect(order).toEqual([]); // still being prepared
    order.push('failed');
    fail(new Error('the zygote is gone'));
    await quiet;
    expect(order).toEqual(['failed', 'quiet']);
    await q.close();
  });

  it('holds a teardown 1 s at most when a preparation hangs (its zygote stopped)', async () => {
    const q = new ForkQueue(host(() => new Promise<never>(() => undefined)), 1);
    q.refill();
    let done = false;
    const quiet = q.quiet().then(() => (done = true));
    await new Promise((r) => setTimeout(r, 300));
    expect(done).toBe(false);
    await quiet; // the test's own timeout catches a hang
    expect(done).toBe(true);
    await q.close();
  }, 5000);
});

describe('a zygote gone', () => {
  // A live process (a child of this test, standing in for the zygote) whose socket's other end
  // is closed: a zygote that has closed its files on its way out, not yet a zombie.
  it('is seen as gone once its end of the socket is closed, while its process still runs', async () => {
    const { spawn } = await import('node:child_process');
    const { tn } = await import('../../lib/template/native.js');
    const { native, isFailure } = await import('../../lib/native.js');
    const { zygoteGone } = await import('../../lib/template/zygote.js');
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      await new Promise((r) => child.once('spawn', r));
      const pidfd = tn().pidfdOpen(child.pid!);
      const sp = tn().socketPair();
      if (isFailure(pidfd) || isFailure(sp)) throw new Error('pidfd or socketpair');
      const z = { proc: null as never, sock: sp[0], pidfd, dead: false, why: '' };
      expect(zygoteGone(z)).toBe(false); // alive, its end open
      native().close(sp[1]);
      expect(zygoteGone(z)).toBe(true);
      expect(z.dead).toBe(true);
      native().close(sp[0]);
      native().close(pidfd);
    } finally {
      child.kill('SIGKILL');
    }
  });
});

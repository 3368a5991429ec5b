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

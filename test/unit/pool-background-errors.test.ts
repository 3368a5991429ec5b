/**
 * A destroy the pool runs in the background (a used sandbox's after `run()`) that fails must
 * neither end the Node process as an unhandled rejection (Node's default for one) nor be lost:
 * `close()` reports it. The members here are stand-ins whose `destroy()` fails on demand; the
 * pool's own logic (lib/pool.ts PoolOf) is what is tested, as `SandboxPool` is `PoolOf<Sandbox>`.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { HutchError } from '../../lib/errors.js';
import { PoolOf, type PoolMember } from '../../lib/pool.js';
import type { ExecResult } from '../../lib/process.js';

/** A stand-in sandbox; with `failUsed`, its destroy fails once it has run something. */
class Member implements PoolMember {
  state: 'running' | 'destroyed' = 'running';
  private used = false;
  constructor(private readonly failUsed: boolean) {}
  async destroy(): Promise<void> {
    this.state = 'destroyed';
    if (this.failUsed && this.used) throw new HutchError('ESETUP', 'cgroup rmdir failed (stand-in)', { step: 'destroy' });
  }
  async execResolved(): Promise<ExecResult> {
    this.used = true;
    return { exitCode: 0 } as ExecResult;
  }
}

const unhandled: unknown[] = [];
const onUnhandled = (e: unknown): void => void unhandled.push(e);

afterEach(() => {
  process.off('unhandledRejection', onUnhandled);
  unhandled.length = 0;
});

describe('pool: background failures', () => {
  it("a used sandbox's failed destroy is no unhandled rejection, and close() reports it", async () => {
    process.on('unhandledRejection', onUnhandled);
    const pool = new PoolOf({ image: 'busybox', size: 1 }, async () => new Member(true));
    const r = await pool.run(['true']);
    expect(r.exitCode).toBe(0);
    // Let the background destroy settle and Node look for unhandled rejections.
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(unhandled).toEqual([]);
    const e = await pool.close().then(() => null, (err: unknown) => err);
    expect(e).toBeInstanceOf(HutchError);
    expect((e as HutchError).message).toContain('cgroup rmdir failed');
  });

  it('close() resolves when every background destroy succeeded', async () => {
    process.on('unhandledRejection', onUnhandled);
    const pool = new PoolOf({ image: 'busybox', size: 1 }, async () => new Member(false));
    await pool.run(['true']);
    await pool.run(['true']);
    await expect(pool.close()).resolves.toBeUndefined();
    expect(unhandled).toEqual([]);
  });
});

import { setTimeout as sleep } from 'node:timers/promises';
import { HutchError, storeErrno } from '../errors.js';
import { selfOwner } from '../host/liveness.js';
import { breakIfStale, createLease, jsonOwner, releaseLease } from '../host/lease.js';

/**
 * The store's metadata lock: a file created with O_EXCL holding the owner's pid and start
 * time. It guards only short steps (tags.json, image records, moving finished layers into
 * place, remove, prune); extraction runs unlocked in a private directory under tmp/.
 * A lock left by a process that died is broken by the next taker. Node has no flock(2),
 * and an O_EXCL file works the same on every local filesystem.
 */
export class StoreLock {
  /** In-process queue, so calls from this process wait on a promise instead of polling. */
  private chain: Promise<unknown> = Promise.resolve();

  constructor(private readonly file: string, private readonly timeoutMs = 60_000) {}

  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.chain.then(async () => {
      await this.acquire();
      try {
        return await fn();
      } finally {
        this.releaseFile();
      }
    });
    this.chain = next.catch(() => undefined);
    return next;
  }

  private token = '';

  private async acquire(): Promise<void> {
    const deadline = Date.now() + this.timeoutMs;
    let wait = 1;
    for (;;) {
      this.token = JSON.stringify({ ...selfOwner(), nonce: Math.random().toString(36).slice(2) });
      try {
        if (createLease(this.file, this.token)) return;
      } catch (e) {
        const found = storeErrno(e);
        throw new HutchError('ESTORE', `cannot take the image store lock ${this.file}: ${(e as Error).message}`, {
          path: this.file,
          ...(found ? { errno: found.errno } : {}),
          cause: e,
        });
      }
      // An unreadable lock counts as stale after 10 s (its writer died between create and write).
      breakIfStale(this.file, jsonOwner, 10_000);
      if (Date.now() > deadline) {
        throw new HutchError('EINVAL', `the image store lock ${this.file} is held by a live process for over ${this.timeoutMs} ms`, {
          path: this.file,
        });
      }
      await sleep(wait);
      wait = Math.min(wait * 2, 50);
    }
  }

  private releaseFile(): void {
    releaseLease(this.file, this.token);
  }
}

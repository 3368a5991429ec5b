import { closeSync, openSync, readFileSync, unlinkSync, writeSync, constants, statSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { HutchError } from '../errors.js';
import { isAlive, parseOwner, selfOwner } from './owner.js';

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
      try {
        const fd = openSync(this.file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
        this.token = JSON.stringify({ ...selfOwner(), nonce: Math.random().toString(36).slice(2) });
        writeSync(fd, this.token);
        closeSync(fd);
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new HutchError('EINVAL', `cannot take the image store lock ${this.file}: ${(e as Error).message}`, {
            path: this.file,
            cause: e,
          });
        }
      }
      this.breakIfStale();
      if (Date.now() > deadline) {
        throw new HutchError('EINVAL', `the image store lock ${this.file} is held by a live process for over ${this.timeoutMs} ms`, {
          path: this.file,
        });
      }
      await sleep(wait);
      wait = Math.min(wait * 2, 50);
    }
  }

  /** Removes a lock whose owner is gone. An unreadable lock counts as stale after 10 s. */
  private breakIfStale(): void {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch {
      return;
    }
    let owner;
    try {
      owner = parseOwner(JSON.parse(text));
    } catch {
      owner = undefined;
    }
    if (owner ? isAlive(owner) : this.young()) return;
    try {
      // Only if it is still the same lock: a taker may have replaced it meanwhile.
      if (readFileSync(this.file, 'utf8') === text) unlinkSync(this.file);
    } catch {
      /* gone already */
    }
  }

  private young(): boolean {
    try {
      return Date.now() - statSync(this.file).mtimeMs < 10_000;
    } catch {
      return false;
    }
  }

  private releaseFile(): void {
    try {
      if (readFileSync(this.file, 'utf8') === this.token) unlinkSync(this.file);
    } catch {
      /* already gone */
    }
  }
}

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ImageStore } from '../../lib/index.js';
import { sandboxLeaseDir } from '../../lib/host/sandboxes.js';

describe('pool teardown off the event loop', () => {
  it("removes a sandbox's owner record and lease in the threadpool, not inside the call", async () => {
    const store = ImageStore.default();
    const img = await store.resolve('busybox');
    const id = `sbx-rel-${process.pid}`;
    await store.markInUse(img.image.id, id);
    const dir = join(store.root, 'sandboxes', id);
    const lease = join(sandboxLeaseDir(), id);
    expect(existsSync(join(dir, 'owner.json'))).toBe(true);
    expect(existsSync(lease)).toBe(true);
    const released = store.release(id);
    // Nothing was removed synchronously: the unlinks (which wait for the device on a
    // filesystem mounted `discard`) run after this code yields.
    expect(existsSync(join(dir, 'owner.json'))).toBe(true);
    expect(existsSync(lease)).toBe(true);
    await released;
    expect(existsSync(dir)).toBe(false);
    expect(existsSync(lease)).toBe(false);
  });
});

import { mkdtempSync } from 'node:fs';
import { removeStore } from '../helpers/store.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageStore, Sandbox } from '../../lib/index.js';

describe('Sandbox.commit', () => {
  let root: string;
  let store: ImageStore;
  beforeAll(() => {
    root = mkdtempSync('/tmp/hutch-commit-');
    store = new ImageStore({ root });
  });
  afterAll(async () => {
    await Sandbox.settle(); // background teardowns of Sandbox.run still use the store
    removeStore(root);
  });

  it('turns the writable layer into a new image: added, changed and deleted files', async () => {
    await using sb = await Sandbox.create({ image: 'busybox', store });
    const r = await sb.exec('mkdir -p /app && echo v1 > /app/data && rm /bin/vi && echo changed > /etc/motd && rm -rf /home && mkdir /home && touch /home/only');
    expect(r.exitCode).toBe(0);
    const img = await sb.commit({ tag: 'committed:1' });
    expect(img.tags).toContain('committed:1');
    const base = await store.get('busybox');
    expect(img.layers.slice(0, base.layers.length)).toEqual(base.layers);
    expect(img.layers.length).toBe(base.layers.length + 1);
    const out = await Sandbox.run({ image: 'committed:1', store, command: 'cat /app/data; ls /bin/vi 2>&1; cat /etc/motd; ls /home', encoding: 'utf8' });
    expect(out.stdout).toBe('v1\nls: /bin/vi: No such file or directory\nchanged\nonly\n');
    // Sandbox.run frees its sandbox in the background; removing the image right after still
    // works (the store waits for this process's teardowns), and then nothing of it is left.
    await store.remove('committed:1');
    await expect(store.get('committed:1')).rejects.toMatchObject({ code: 'ENOIMAGE' });
    await Sandbox.settle();
  });

  it('refuses after destroy', async () => {
    const sb = await Sandbox.create({ image: 'busybox', store });
    await sb.destroy();
    await expect(sb.commit()).rejects.toMatchObject({ code: 'EDESTROYED' });
  });
});

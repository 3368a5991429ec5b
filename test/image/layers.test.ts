import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageStore, Sandbox } from '../../lib/index.js';

// Many layers: one fsconfig string holds at most 256 bytes (four layer names), so layers are
// appended one by one ("lowerdir+", 6.8+) or passed through mount(2)'s data (older kernels).
describe('images with many layers', () => {
  let root: string;
  let ctx: string;
  let store: ImageStore;
  beforeAll(() => {
    root = mkdtempSync('/tmp/hutch-layers-');
    ctx = mkdtempSync('/tmp/hutch-layers-ctx-');
    store = new ImageStore({ root });
  });
  afterAll(async () => {
    await Sandbox.settle(); // background teardowns of Sandbox.run still use the store
    rmSync(root, { recursive: true, force: true });
    rmSync(ctx, { recursive: true, force: true });
  });

  for (const n of [4, 12, 40]) {
    it(`runs an image of ${2 * n + 1} layers and sees every layer, top one winning`, async () => {
      let df = 'FROM busybox\n';
      for (let i = 0; i < n; i++) {
        writeFileSync(`${ctx}/f${i}`, String(i));
        df += `COPY f${i} /l/f${i}\nCOPY f${i} /l/top\n`;
      }
      const img = await store.build({ dockerfile: df, context: ctx, tag: `layers-${n}` });
      expect(img.layers.length).toBe(2 * n + 1);
      const [maj, min] = release().split('.').map(Number);
      if (img.layers.length > 60 && !(maj! > 6 || (maj === 6 && min! >= 8))) {
        // Before 6.8 the layer list goes in mount(2)'s one page: refused up front, naming why.
        await expect(Sandbox.run({ image: `layers-${n}`, store, command: 'true' })).rejects.toMatchObject({ code: 'EUNSUPPORTED', message: expect.stringMatching(/layers/) });
        return;
      }
      const r = await Sandbox.run({ image: `layers-${n}`, store, command: 'ls /l | wc -l; cat /l/top', encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(r.stdout).toBe(`${n + 1}\n${n - 1}`);
    });
  }
});

// COPY and ADD of plain files may not write whiteout names (security hole 1, its build part):
// a context file named `.wh.<name>` (or `.wh..wh..opq` in a directory) would become a whiteout
// when the layer is extracted and delete or hide the base image's files. Each is refused with
// EBUILD naming the file, and no image is made; the image-view move keeps COPY's destination
// lookups (through the scoped view) working.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HutchError, ImageStore, Sandbox } from '../../lib/index.js';

const work = mkdtempSync('/tmp/hutch-test-build-wh-');
const store = new ImageStore({ root: join(work, 'store') });
afterAll(async () => {
  await Sandbox.settle();
  rmSync(work, { recursive: true, force: true });
});

let n = 0;
function context(files: Record<string, string>): string {
  const dir = join(work, `ctx-${n++}`);
  for (const [rel, data] of Object.entries(files)) {
    mkdirSync(join(dir, rel, '..'), { recursive: true });
    writeFileSync(join(dir, rel), data);
  }
  mkdirSync(dir, { recursive: true });
  return dir;
}

async function refused(dockerfile: string, ctx: string, name: string): Promise<void> {
  const before = readdirSync(store.path('images')).sort();
  let err: unknown;
  try {
    await store.build({ dockerfile, context: ctx });
  } catch (e) {
    err = e;
  }
  expect(HutchError.is(err), String(err)).toBe(true);
  expect((err as HutchError).code, (err as Error).message).toBe('EBUILD');
  expect((err as Error).message).toContain(JSON.stringify(name));
  expect((err as Error).message).toMatch(/whiteout/);
  expect(readdirSync(store.path('images')).sort()).toEqual(before);
}

describe('COPY/ADD refuse whiteout names', () => {
  it('a plain COPY works (control), into a directory found through the image view', async () => {
    const img = await store.build({ dockerfile: 'FROM busybox\nCOPY a.txt /etc/\nCOPY d /opt/d\n', context: context({ 'a.txt': 'a', 'd/x': 'x' }) });
    const top = store.path('layers', img.layers[img.layers.length - 2]!.slice(7));
    expect(readFileSync(join(top, 'etc/a.txt'), 'utf8')).toBe('a');
  });

  it('COPY . / with a .wh. file in the context', async () => {
    await refused('FROM busybox\nCOPY . /etc/\n', context({ 'ok.txt': 'ok', '.wh.passwd': '' }), '.wh.passwd');
  });

  it('COPY of a directory holding an opaque marker', async () => {
    await refused('FROM busybox\nCOPY d /etc/\n', context({ 'd/.wh..wh..opq': '', 'd/x': 'x' }), '.wh..wh..opq');
  });

  it('COPY of a .wh. file named as a source', async () => {
    await refused('FROM busybox\nCOPY .wh.bin /\n', context({ '.wh.bin': '' }), '.wh.bin');
  });

  it('COPY and ADD to a destination named .wh.<x>', async () => {
    await refused('FROM busybox\nCOPY a /etc/.wh.passwd\n', context({ a: 'a' }), '.wh.passwd');
    await refused('FROM busybox\nADD a /.wh.bin/\n', context({ a: 'a' }), '.wh.bin');
  });

  it('ADD of a plain file with a .wh. name', async () => {
    await refused('FROM busybox\nADD .wh.etc /\n', context({ '.wh.etc': 'x' }), '.wh.etc');
  });
});

// Several processes on one store: two imports of the same image at once extract each layer
// once and both succeed; builtins made concurrently agree; an import killed midway leaves no
// layer behind and prune clears its work directory.
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageStore } from '../../lib/image/store.js';
import { tarBuffer, type TarEntry } from '../../lib/image/tarwriter.js';
import { needs } from '../helpers/require.js';

const work = mkdtempSync(join(tmpdir(), 'hutch-img-conc-'));
const build = join(work, 'build');
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Compiles lib/ to plain JS so that child processes can load it without vitest. */
beforeAll(() => {
  execFileSync(join(process.cwd(), 'node_modules/.bin/tsc'), [
    '--ignoreConfig', 'lib/image/store.ts', '--outDir', build, '--rootDir', '.', '--module', 'nodenext', '--moduleResolution', 'nodenext',
    '--target', 'es2022', '--skipLibCheck', '--types', 'node', '--strict',
  ], { cwd: process.cwd(), stdio: 'pipe' });
  symlinkSync(join(process.cwd(), 'node_modules'), join(build, 'node_modules'));
  // The compiled copy is a package root without binaries: give it this checkout's.
  symlinkSync(join(process.cwd(), 'build'), join(build, 'build'));
  writeFileSync(
    join(build, 'child.mjs'),
    `import { ImageStore } from './lib/image/store.js';
const [root, what, src] = process.argv.slice(2);
const store = new ImageStore({ root });
try {
  const img = what === 'import' ? await store.import(src, { tag: 'same' }) : await store.get(what);
  process.stdout.write(JSON.stringify({ id: img.id, layers: img.layers }));
} catch (e) {
  process.stdout.write(JSON.stringify({ error: e.code ?? String(e), message: e.message }));
}
`,
  );
}, 120_000);

function child(args: string[]): { proc: ReturnType<typeof spawn>; done: Promise<{ id?: string; layers?: string[]; error?: string; message?: string }> } {
  const proc = spawn(process.execPath, [join(build, 'child.mjs'), ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const done = new Promise<{ id?: string }>((resolve) => proc.on('close', () => resolve(out ? JSON.parse(out) : { error: 'no output' })));
  return { proc, done };
}

/** A rootfs of ~24 MiB in 3 layers' worth of files, big enough that two extractions overlap. */
function bigTar(): string {
  const p = join(work, 'big.tar');
  if (existsSync(p)) return p;
  const entries: TarEntry[] = [{ path: 'data', type: 'dir', mode: 0o755 }];
  for (let i = 0; i < 400; i++) entries.push({ path: `data/f${i}`, type: 'file', mode: 0o644, data: randomBytes(60_000) });
  writeFileSync(p, tarBuffer(entries));
  return p;
}

describe('concurrent processes', () => {
  it('two processes importing the same image at once: one layer tree, same image, no leftovers', async () => {
    const root = join(work, 'store-a');
    mkdirSync(root);
    const src = bigTar();
    const [a, b] = [child([root, 'import', src]), child([root, 'import', src])];
    const [ra, rb] = await Promise.all([a.done, b.done]);
    expect(ra.error, ra.message).toBeUndefined();
    expect(rb.error, rb.message).toBeUndefined();
    expect(ra.id).toBe(rb.id);
    expect(readdirSync(join(root, 'layers'))).toEqual([ra.layers![0]!.slice(7)]);
    expect(readdirSync(join(root, 'images'))).toEqual([`${ra.id!.slice(7)}.json`]);
    expect(readdirSync(join(root, 'tmp')).filter((n) => n !== 'trash')).toEqual([]);
    expect(readdirSync(join(root, 'layers', ra.layers![0]!.slice(7), 'data'))).toHaveLength(400);
    expect(existsSync(join(root, 'lock'))).toBe(false);
    const store = new ImageStore({ root });
    expect((await store.get('same')).id).toBe(ra.id);
  });

  it.skipIf(needs(existsSync('/bin/busybox'), 'busybox-static is needed'))('builtins made by three processes at once agree', async () => {
    const root = join(work, 'store-b');
    mkdirSync(root);
    const runs = [child([root, 'busybox']), child([root, 'busybox']), child([root, 'host'])];
    const res = await Promise.all(runs.map((r) => r.done));
    for (const r of res) expect(r.error, r.message).toBeUndefined();
    expect(res[0]!.id).toBe(res[1]!.id);
    expect(readdirSync(join(root, 'layers'))).toHaveLength(2);
    expect(readdirSync(join(root, 'images'))).toHaveLength(2);
  });

  it('an import killed midway leaves no layer; prune removes its work directory', async () => {
    const root = join(work, 'store-c');
    mkdirSync(root);
    const src = bigTar();
    const c = child([root, 'import', src]);
    // Kill it once its work directory has a partly extracted tree.
    const deadline = Date.now() + 20_000;
    for (;;) {
      const ops = existsSync(join(root, 'tmp')) ? readdirSync(join(root, 'tmp')).filter((n) => n.startsWith('op-')) : [];
      if (ops.some((o) => existsSync(join(root, 'tmp', o, 'rootfs', 'data')))) break;
      if (Date.now() > deadline) throw new Error('the import never started extracting');
      await new Promise((r) => setTimeout(r, 2));
    }
    c.proc.kill('SIGKILL');
    const r = await c.done;
    expect(r.error).toBeDefined();
    expect(readdirSync(join(root, 'layers'))).toEqual([]);
    expect(readdirSync(join(root, 'images'))).toEqual([]);
    const store = new ImageStore({ root });
    const { removedBytes } = await store.prune();
    expect(removedBytes).toBeGreaterThan(0);
    expect(readdirSync(join(root, 'tmp')).filter((n) => n !== 'trash')).toEqual([]);
    // And the next import works.
    const img = await store.import(src);
    expect(readdirSync(join(root, 'layers'))).toEqual([img.layers[0]!.slice(7)]);
  });
});

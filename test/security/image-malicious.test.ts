// Hostile archives: each is refused with EBADIMAGE naming the entry (or neutralised where the
// rules say so), nothing appears outside the layer being extracted, and no partial layer,
// image or work directory remains in the store.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync, createGzip } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { HutchError } from '../../lib/errors.js';
import { hostRange } from '../../lib/identity.js';
import { ImageStore } from '../../lib/image/store.js';
import { tarBuffer, tarChunks, type TarEntry } from '../../lib/image/tarwriter.js';
import { isRoot } from '../helpers/require.js';

const roots: string[] = [];
function scratch(): string {
  const d = mkdtempSync(join(tmpdir(), 'hutch-img-bad-'));
  roots.push(d);
  return d;
}
afterEach(() => {
  for (const r of roots.splice(0)) rmSync(r, { recursive: true, force: true });
});

/** A store at <scratch>/a/b/store, so `../..` from a layer still lands inside <scratch> where we look. */
function setup(opts: { maxLayerBytes?: number; maxLayerEntries?: number } = {}) {
  const base = scratch();
  const root = join(base, 'a', 'b', 'store');
  mkdirSync(root, { recursive: true });
  return { base, store: new ImageStore({ root, ...opts }) };
}

/** Everything under dir, as relative paths. */
function walk(dir: string, prefix = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    out.push(rel);
    if (e.isDirectory()) out.push(...walk(join(dir, e.name), rel));
  }
  return out;
}

async function refused(store: ImageStore, base: string, source: string | NodeJS.ReadableStream, entry?: string): Promise<HutchError> {
  const before = walk(base).filter((p) => !p.startsWith('a/b/store'));
  let err: unknown;
  try {
    await store.import(source);
  } catch (e) {
    err = e;
  }
  expect(HutchError.is(err), `expected a HutchError, got ${String(err)}`).toBe(true);
  const he = err as HutchError;
  expect(he.code, he.message).toBe('EBADIMAGE');
  if (entry !== undefined) expect(he.message).toContain(JSON.stringify(entry));
  // Nothing outside the store changed; nothing half-made inside it.
  expect(walk(base).filter((p) => !p.startsWith('a/b/store'))).toEqual(before);
  for (const d of ['layers', 'images', 'layerinfo']) expect(readdirSync(join(store.root, d))).toEqual([]);
  expect(readdirSync(join(store.root, 'tmp')).filter((n) => n !== 'trash')).toEqual([]);
  expect(existsSync(join(store.root, 'tags.json'))).toBe(false);
  return he;
}

function file(base: string, name: string, data: Buffer): string {
  const p = join(base, name);
  writeFileSync(p, data);
  return p;
}

const d = (path: string): TarEntry => ({ path, type: 'dir', mode: 0o755 });
const f = (path: string, data = 'x'): TarEntry => ({ path, type: 'file', mode: 0o644, data });

describe('hostile entries', () => {
  const cases: [string, TarEntry[], string][] = [
    ['a name with ..', [d('etc'), f('../../escaped')], '../../escaped'],
    ['.. in the middle', [d('etc'), f('etc/../../../escaped')], 'etc/../../../escaped'],
    ['an absolute name', [f('/tmp/hutch-abs-escape')], '/tmp/hutch-abs-escape'],
    ['a symlink then an entry through it', [{ path: 'lnk', type: 'symlink', linkpath: '../../..' }, f('lnk/escaped')], 'lnk/escaped'],
    ['a symlink to / then a dir through it', [{ path: 'lnk', type: 'symlink', linkpath: '/' }, d('lnk/tmp/x')], 'lnk/tmp/x/'],
    ['a hardlink to an absolute path', [{ path: 'h', type: 'link', linkpath: '/etc/passwd' }], 'h'],
    ['a hardlink with ..', [{ path: 'h', type: 'link', linkpath: '../../../../etc/passwd' }], '../../../../etc/passwd'],
    ['a hardlink to something not in the archive', [{ path: 'h', type: 'link', linkpath: 'nothere' }], 'h'],
    ['a hardlink through a symlink', [{ path: 'lnk', type: 'symlink', linkpath: '/etc' }, { path: 'h', type: 'link', linkpath: 'lnk/passwd' }], 'h'],
    ['a character device', [f('ok'), { path: 'mem', type: 'char', devmajor: 1, devminor: 1 }], 'mem'],
    ['a 0:0 character device outside /dev', [{ path: 'etc/wh', type: 'char', devmajor: 0, devminor: 0 }], 'etc/wh'],
    ['a block device', [{ path: 'etc/sda', type: 'block', devmajor: 8, devminor: 0 }], 'etc/sda'],
    ['a uid past the mapped range', [{ ...f('big'), uid: 70000 }], 'big'],
    ['a gid past the mapped range', [{ ...f('big'), gid: 100000 }], 'big'],
    ['a whiteout that is a directory', [d('.wh.etc')], '.wh.etc/'],
    ['a file then an entry through it', [f('etc'), f('etc/passwd')], 'etc/passwd'],
  ];
  for (const [name, entries, entry] of cases) {
    it(`refuses ${name}`, async () => {
      const { base, store } = setup();
      await refused(store, base, file(base, 'x.tar', tarBuffer(entries)), entry);
      expect(existsSync('/tmp/hutch-abs-escape')).toBe(false);
      expect(existsSync(join(base, 'escaped'))).toBe(false);
      expect(existsSync(join(base, 'a', 'escaped'))).toBe(false);
    });
  }

  it('skips device nodes under dev/ and keeps set-id bits (ids shifted)', async () => {
    const { base, store } = setup();
    const img = await store.import(
      file(base, 'x.tar', tarBuffer([d('dev'), { path: 'dev/null', type: 'char', devmajor: 1, devminor: 3, mode: 0o666 }, { path: 'bin/su', type: 'file', mode: 0o4755, data: 'su' }, { ...f('home/u/f'), uid: 1000, gid: 1000 }])),
    );
    const L = join(store.root, 'layers', img.layers[0]!.slice(7));
    expect(existsSync(join(L, 'dev/null'))).toBe(false);
    expect(statSync(join(L, 'bin/su')).mode & 0o7777).toBe(0o4755);
    if (isRoot) {
      expect(statSync(join(L, 'bin/su')).uid).toBe(hostRange().uid);
      expect(statSync(join(L, 'home/u/f')).uid).toBe(hostRange().uid + 1000);
      expect(statSync(join(L, 'home/u/f')).gid).toBe(hostRange().gid + 1000);
    }
  });
});

describe('broken and endless streams', () => {
  it('refuses a truncated archive (an entry longer than the data)', async () => {
    const { base, store } = setup();
    const tar = tarBuffer([{ ...f('big', 'y'.repeat(100)), sizeOverride: 5000 }]);
    await refused(store, base, file(base, 'x.tar', tar.subarray(0, 512 + 100)));
  });

  it('refuses a header with a bad checksum', async () => {
    const { base, store } = setup();
    const tar = tarBuffer([f('a'), f('b')]);
    tar[1024 + 5] ^= 0x55; // the name of the second header, after its checksum was written
    await refused(store, base, file(base, 'x.tar', tar));
  });

  it('refuses corrupt gzip', async () => {
    const { base, store } = setup();
    const gz = gzipSync(tarBuffer([f('a', 'z'.repeat(50_000))]));
    for (let i = 100; i < 140; i++) gz[i] ^= 0xff;
    const e = await refused(store, base, file(base, 'x.tgz', gz));
    expect(e.message).toMatch(/gzip|tar/);
  });

  it('refuses something that is not an archive at all', async () => {
    const { base, store } = setup();
    await refused(store, base, file(base, 'x.tar', Buffer.from('hello, I am not a tarball\n'.repeat(100))));
  });

  it('stops an endless entry at the byte cap', async () => {
    const { base, store } = setup({ maxLayerBytes: 1024 * 1024 });
    const header = [...tarChunks([{ ...f('endless'), sizeOverride: 1e12 }])][0]!;
    let sent = 0;
    const source = new Readable({
      read() {
        if (sent === 0) this.push(header);
        sent += 65536;
        this.push(Buffer.alloc(65536));
      },
    });
    const e = await refused(store, base, source);
    expect(e.message).toMatch(/more than 1048576 bytes/);
    expect(sent).toBeLessThan(64 * 1024 * 1024);
    expect(source.destroyed).toBe(true);
  });

  it('stops an endless gzip stream (a zip bomb) at the byte cap', async () => {
    const { base, store } = setup({ maxLayerBytes: 1024 * 1024 });
    const zeros = new Readable({
      read() {
        this.push(Buffer.alloc(1 << 20));
      },
    });
    const gz = zeros.pipe(createGzip());
    await refused(store, base, gz);
    zeros.destroy();
  });

  it('stops at the entry cap', async () => {
    const { base, store } = setup({ maxLayerEntries: 10 });
    const entries = Array.from({ length: 20 }, (_, i) => f(`f${i}`));
    await refused(store, base, file(base, 'x.tar', tarBuffer(entries)), 'f10');
  });
});

/** A one-layer OCI layout in `dir`; `mutate` may break it before index.json is written. */
function ociLayout(dir: string, mutate?: (m: { manifest: Record<string, unknown>; config: Record<string, unknown>; layer: Buffer; put: (b: Buffer | string) => { digest: string; size: number } }) => void) {
  const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
  mkdirSync(join(dir, 'blobs/sha256'), { recursive: true });
  const put = (b: Buffer | string) => {
    writeFileSync(join(dir, 'blobs/sha256', sha(b)), b);
    return { digest: `sha256:${sha(b)}`, size: Buffer.byteLength(b) };
  };
  const layer = gzipSync(tarBuffer([d('etc'), f('etc/hello', 'hi')]));
  const plain = tarBuffer([d('etc'), f('etc/hello', 'hi')]);
  const config: Record<string, unknown> = { architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [`sha256:${sha(plain)}`] } };
  const manifest: Record<string, unknown> = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...put(layer) }],
  };
  mutate?.({ manifest, config, layer, put });
  manifest.config ??= { mediaType: 'application/vnd.oci.image.config.v1+json', ...put(JSON.stringify(config)) };
  const m = put(JSON.stringify(manifest));
  writeFileSync(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...m }] }));
  writeFileSync(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  return { layerDigest: sha(layer) };
}

describe('hostile image layouts', () => {
  it('the unbroken layout imports (control)', async () => {
    const { base, store } = setup();
    ociLayout(join(base, 'oci'));
    const img = await store.import(join(base, 'oci'));
    expect(img.layers).toHaveLength(1);
  });

  it('refuses a layer blob whose content does not match its digest', async () => {
    const { base, store } = setup();
    const { layerDigest } = ociLayout(join(base, 'oci'));
    const p = join(base, 'oci/blobs/sha256', layerDigest);
    // Same length, other content: a valid gzip of another tar would pass the size check.
    const other = gzipSync(tarBuffer([d('etc'), f('etc/hello', 'no')]));
    writeFileSync(p, other);
    const e = await refused(store, base, join(base, 'oci'));
    expect(e.message).toMatch(/digest mismatch|size mismatch/);
  });

  it('refuses a manifest that points at a missing blob', async () => {
    const { base, store } = setup();
    const { layerDigest } = ociLayout(join(base, 'oci'));
    rmSync(join(base, 'oci/blobs/sha256', layerDigest));
    const e = await refused(store, base, join(base, 'oci'));
    expect(e.message).toContain(`blobs/sha256/${layerDigest}`);
  });

  it('refuses a config whose diff id does not match the layer', async () => {
    const { base, store } = setup();
    ociLayout(join(base, 'oci'), ({ config }) => {
      config.rootfs = { type: 'layers', diff_ids: [`sha256:${'1'.repeat(64)}`] };
    });
    const e = await refused(store, base, join(base, 'oci'));
    expect(e.message).toMatch(/diff id mismatch/);
  });

  it('refuses a layer media type that is not a layer', async () => {
    const { base, store } = setup();
    ociLayout(join(base, 'oci'), ({ manifest }) => {
      (manifest.layers as { mediaType: string }[])[0]!.mediaType = 'application/vnd.example.evil';
    });
    const e = await refused(store, base, join(base, 'oci'));
    expect(e.message).toContain('application/vnd.example.evil');
  });

  it('refuses a config media type that is not an image config', async () => {
    const { base, store } = setup();
    ociLayout(join(base, 'oci'), ({ manifest, config, put }) => {
      manifest.config = { mediaType: 'application/vnd.oci.image.layer.v1.tar', ...put(JSON.stringify(config)) };
    });
    await refused(store, base, join(base, 'oci'));
  });

  it('refuses a digest that is not sha256 hex (no path tricks through digests)', async () => {
    const { base, store } = setup();
    ociLayout(join(base, 'oci'), ({ manifest }) => {
      (manifest.layers as { digest: string }[])[0]!.digest = 'sha256:../../../../etc/passwd';
    });
    await refused(store, base, join(base, 'oci'));
  });

  it('refuses a docker save archive whose layer is a symlink out of the archive', async () => {
    const { base, store } = setup();
    const layer = tarBuffer([f('etc/x')]);
    const config = JSON.stringify({ rootfs: { type: 'layers', diff_ids: [`sha256:${createHash('sha256').update(layer).digest('hex')}`] } });
    const archive = tarBuffer([
      { path: 'c.json', type: 'file', data: config },
      { path: 'l', type: 'dir' },
      { path: 'l/layer.tar', type: 'symlink', linkpath: '../../../../../etc/passwd' },
      { path: 'manifest.json', type: 'file', data: JSON.stringify([{ Config: 'c.json', Layers: ['l/layer.tar'] }]) },
    ]);
    await refused(store, base, file(base, 'x.tar', archive), 'l/layer.tar');
  });

  it('refuses a docker save manifest naming a path outside the archive', async () => {
    const { base, store } = setup();
    const archive = tarBuffer([{ path: 'manifest.json', type: 'file', data: JSON.stringify([{ Config: '../../../etc/passwd', Layers: [] }]) }]);
    await refused(store, base, file(base, 'x.tar', archive), '../../../etc/passwd');
  });

  it('an OCI archive whose entries carry .. is refused while staging', async () => {
    const { base, store } = setup();
    const archive = tarBuffer([f('oci-layout', '{"imageLayoutVersion":"1.0.0"}'), f('blobs/../../../escaped')]);
    await refused(store, base, file(base, 'x.tar', archive), 'blobs/../../../escaped');
  });
});

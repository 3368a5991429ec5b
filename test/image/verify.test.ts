// Security hole 2: every blob whose digest is declared (layers, config, manifest) is verified
// before any of it is used. The attack is made for real: an image is pushed to Debian's
// docker-registry (started here on loopback), then a blob is tampered in the registry's
// storage on disk. The tampered layer carries a marker file; the store is searched for it at
// every progress event of the pull, so a layer extracted before it is verified is caught
// while it sits in the op dir (it would be gone by the end anyway). The same for OCI layouts
// and docker save archives on import.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HutchError } from '../../lib/errors.js';
import { ImageStore } from '../../lib/image/store.js';
import { tarBuffer, type TarEntry } from '../../lib/image/tarwriter.js';
import type { Progress } from '../../lib/image/types.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { needs } from '../helpers/require.js';
import { hutchFailure } from '../helpers/rejects.js';

const skip = needs(spawnSync('sh', ['-c', 'command -v docker-registry']).status === 0, 'docker-registry is needed (apt-get install docker-registry)');
const work = mkdtempSync(join(tmpdir(), 'hutch-img-verify-'));
let registry: Registry | undefined;
let port = 0;
let n = 0;

const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const MARKER = `hutch-tamper-marker-${randomBytes(4).toString('hex')}`;
/** A big incompressible tail: extraction of the entries before it is seen by later progress events. */
const TAIL = randomBytes(2 * 1024 * 1024);

/** A layer tar: `first` (a name and 64 bytes of data), then the tail. Same length whatever the name. */
function layerTar(first: string, tag: string): Buffer {
  const entries: TarEntry[] = [
    { path: first, type: 'file', mode: 0o644, data: tag.padEnd(64, '.') },
    { path: 'tail.bin', type: 'file', mode: 0o644, data: TAIL },
  ];
  return tarBuffer(entries);
}

/** An OCI layout with one uncompressed layer (etc-hello-<tag>) and a config with Env A=1. */
function layout(dir: string, tag: string): { layer: Buffer; config: string; layerHex: string; configHex: string; manifestHex: string } {
  mkdirSync(join(dir, 'blobs/sha256'), { recursive: true });
  const put = (b: Buffer | string) => {
    writeFileSync(join(dir, 'blobs/sha256', sha(b)), b);
    return { digest: `sha256:${sha(b)}`, size: Buffer.byteLength(b) };
  };
  const layer = layerTar(`hello-${tag}`, tag);
  const config = JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Env: ['A=1', `T=${tag}`] }, rootfs: { type: 'layers', diff_ids: [`sha256:${sha(layer)}`] } });
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...put(config) },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...put(layer) }],
  });
  const m = put(manifest);
  writeFileSync(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...m }] }));
  writeFileSync(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  return { layer, config, layerHex: sha(layer), configHex: sha(config), manifestHex: sha(manifest) };
}

/** Every path under dir. */
function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    out.push(p);
    if (e.isDirectory()) out.push(...walk(p));
  }
  return out;
}

/** A store whose progress events look for the marker anywhere under the work dir. */
function watched(): { store: ImageStore; onProgress: (p: Progress) => void; seen: () => string[] } {
  const store = new ImageStore({ root: join(work, `store-${n++}`) });
  const seen: string[] = [];
  const onProgress = () => {
    for (const p of walk(work)) if (p.includes(MARKER)) seen.push(p);
  };
  return { store, onProgress, seen: () => seen };
}

/** Nothing of the refused image: no layer, record, tag or work dir, and the marker never appeared. */
function nothingUsed(store: ImageStore, seen: string[]) {
  expect(seen).toEqual([]);
  expect(walk(work).filter((p) => p.includes(MARKER))).toEqual([]);
  for (const d of ['images', 'layers', 'layerinfo']) expect(readdirSync(join(store.root, d))).toEqual([]);
  expect(existsSync(join(store.root, 'tags.json'))).toBe(false);
  expect(readdirSync(join(store.root, 'tmp')).filter((x) => x !== 'trash')).toEqual([]);
}

const failure = hutchFailure;

function regBlob(hex: string): string {
  return registry!.blobPath(hex);
}

beforeAll(async () => {
  if (skip) return;
  registry = await startRegistry(work);
  port = registry.port;
}, 60_000);

afterAll(async () => {
  await registry?.stop();
  rmSync(work, { recursive: true, force: true });
});

/** Pushes a fresh image (content unique to `tag`) to <registry>/verify/<tag>:1. */
async function pushed(tag: string) {
  const dir = join(work, `src-${tag}`);
  const l = layout(dir, tag);
  const src = new ImageStore({ root: join(work, `push-store-${tag}`) });
  const img = await src.import(dir);
  const ref = `127.0.0.1:${port}/verify/${tag}`;
  await src.push(img, `${ref}:1`, { insecure: true });
  const res = await fetch(`http://127.0.0.1:${port}/v2/verify/${tag}/manifests/1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
  const body = Buffer.from(await res.arrayBuffer());
  rmSync(src.root, { recursive: true, force: true });
  return { ...l, ref, manifestHex: sha(body), img };
}

describe.skipIf(skip)('a pull verifies every blob before using it (real docker-registry, blobs tampered on disk)', () => {
  it('an untampered image pulls by tag and by digest (control)', async () => {
    const p = await pushed('control');
    const { store, onProgress } = watched();
    const a = await store.pull(`${p.ref}:1`, { insecure: true, onProgress });
    const b = await store.pull(`${p.ref}@sha256:${p.manifestHex}`, { insecure: true });
    expect(a.id).toBe(p.img.id);
    expect(b.id).toBe(p.img.id);
    expect(readFileSync(join(store.root, 'layers', a.layers[0]!.slice(7), 'hello-control'), 'utf8')).toMatch(/^control/);
  });

  for (const how of ['same length', 'longer'] as const) {
    for (const by of ['tag', 'digest'] as const) {
      it(`a layer blob tampered (${how}) is refused before extraction, pulled by ${by}`, async () => {
        const tag = `layer-${how === 'longer' ? 'long' : 'same'}-${by}`;
        const p = await pushed(tag);
        const evil = how === 'longer' ? Buffer.concat([layerTar(MARKER, tag), tarBuffer([{ path: `${MARKER}-2`, type: 'file', data: 'x' }])]) : layerTar(MARKER, tag);
        if (how === 'same length') expect(evil.length).toBe(p.layer.length);
        writeFileSync(regBlob(p.layerHex), evil);
        const { store, onProgress, seen } = watched();
        const e = await failure(store.pull(by === 'tag' ? `${p.ref}:1` : `${p.ref}@sha256:${p.manifestHex}`, { insecure: true, onProgress }));
        expect(e.code, e.message).toBe('EREGISTRY');
        expect(e.message).toMatch(how === 'longer' ? /size mismatch/ : /digest mismatch/);
        expect((e.cause as HutchError).code).toBe('EBADIMAGE');
        nothingUsed(store, seen());
      });
    }
  }

  it('a config blob tampered (same length) is refused, by tag and by digest', async () => {
    const p = await pushed('config');
    const evil = p.config.replace('"A=1"', '"A=2"');
    expect(evil.length).toBe(p.config.length);
    writeFileSync(regBlob(p.configHex), evil);
    for (const ref of [`${p.ref}:1`, `${p.ref}@sha256:${p.manifestHex}`]) {
      const { store, onProgress, seen } = watched();
      const e = await failure(store.pull(ref, { insecure: true, onProgress }));
      expect(e.code, e.message).toBe('EREGISTRY');
      expect(e.message).toMatch(/config: digest mismatch/);
      nothingUsed(store, seen());
    }
  });

  it('a manifest that does not hash to the pinned digest (or to the one the registry names) is refused', async () => {
    const p = await pushed('manifest');
    const file = regBlob(p.manifestHex);
    const m = JSON.parse(readFileSync(file, 'utf8')) as { annotations?: Record<string, string> };
    m.annotations = { evil: '1' };
    writeFileSync(file, JSON.stringify(m));
    for (const ref of [`${p.ref}@sha256:${p.manifestHex}`, `${p.ref}:1`]) {
      const { store, onProgress, seen } = watched();
      const e = await failure(store.pull(ref, { insecure: true, onProgress }));
      expect(e.code, e.message).toBe('EREGISTRY');
      expect(e.message).toMatch(/manifest digest mismatch/);
      nothingUsed(store, seen());
    }
  });
});

describe('an import verifies every declared digest before extracting', () => {
  it('OCI layout: a layer blob tampered (same length) is refused; the marker never appears', async () => {
    const dir = join(work, 'oci-tampered');
    const l = layout(dir, 'oci');
    writeFileSync(join(dir, 'blobs/sha256', l.layerHex), layerTar(MARKER, 'oci'));
    const { store, onProgress, seen } = watched();
    const e = await failure(store.import(dir, { onProgress }));
    expect(e.code, e.message).toBe('EBADIMAGE');
    expect(e.message).toMatch(/digest mismatch/);
    nothingUsed(store, seen());
  });

  it('OCI layout directory: a blob that is a FIFO is refused without being opened', async () => {
    const dir = join(work, 'oci-fifo');
    const l = layout(dir, 'fifo');
    rmSync(join(dir, 'blobs/sha256', l.layerHex));
    execFileSync('mkfifo', [join(dir, 'blobs/sha256', l.layerHex)]);
    const { store, onProgress, seen } = watched();
    const e = await failure(store.import(dir, { onProgress }));
    expect(e.code, e.message).toBe('EBADIMAGE');
    expect(e.message).toMatch(/is not a regular file/);
    nothingUsed(store, seen());
  });

  for (const named of [true, false]) {
    it(`docker save archive: a layer that does not match its diff id${named ? ' or its digest name' : ''} is refused before extraction`, async () => {
      const good = layerTar('hello', `save-${named}`);
      const evil = layerTar(MARKER, `save-${named}`);
      const config = JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [`sha256:${sha(good)}`] } });
      const layerName = named ? `blobs/sha256/${sha(good)}` : 'abc/layer.tar';
      const archive = tarBuffer([
        { path: `${sha(config)}.json`, type: 'file', data: config },
        ...(named ? [{ path: 'blobs', type: 'dir' as const }, { path: 'blobs/sha256', type: 'dir' as const }] : [{ path: 'abc', type: 'dir' as const }]),
        { path: layerName, type: 'file', data: evil },
        { path: 'manifest.json', type: 'file', data: JSON.stringify([{ Config: `${sha(config)}.json`, RepoTags: ['save:1'], Layers: [layerName] }]) },
      ]);
      const path = join(work, `save-${named}.tar`);
      writeFileSync(path, archive);
      const { store, onProgress, seen } = watched();
      // The outer archive is staged in the op dir (the layer blob as a file); the layer inside is not extracted.
      const e = await failure(store.import(path, { onProgress }));
      expect(e.code, e.message).toBe('EBADIMAGE');
      expect(e.message).toMatch(named ? /digest mismatch/ : /diff id mismatch/);
      nothingUsed(store, seen());
    });
  }
});

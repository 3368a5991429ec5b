// An imported image may not take over another image's id (security hole 8): a docker save
// archive's RepoTags shaped like an id (the full hex, `sha256:<hex>`, a 12+ digit prefix) or a
// builtin's name are refused, and lookups try ids before tags, so even a tag already in
// tags.json (written by an older hutch) cannot redirect a reference by id.
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ImageStore } from '../../lib/image/store.js';
import { tarBuffer, type TarEntry } from '../../lib/image/tarwriter.js';
import { hutchFailure } from '../helpers/rejects.js';

const work = mkdtempSync(join(tmpdir(), 'hutch-img-tags-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
let n = 0;

const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const f = (path: string, data: string): TarEntry => ({ path, type: 'file', mode: 0o644, data });

/** A docker save archive (legacy form, or with the OCI index docker 25+ writes too). */
function dockerSave(marker: string, repoTags: unknown, oci = false): string {
  const layer = tarBuffer([{ path: 'etc', type: 'dir', mode: 0o755 }, f('etc/who', marker)]);
  const config = JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['/bin/sh'] }, rootfs: { type: 'layers', diff_ids: [`sha256:${sha(layer)}`] } });
  const entries: TarEntry[] = [
    { path: 'blobs', type: 'dir' },
    { path: 'blobs/sha256', type: 'dir' },
    { path: `blobs/sha256/${sha(config)}`, type: 'file', data: config },
    { path: `blobs/sha256/${sha(layer)}`, type: 'file', data: layer },
    f('manifest.json', JSON.stringify([{ Config: `blobs/sha256/${sha(config)}`, RepoTags: repoTags, Layers: [`blobs/sha256/${sha(layer)}`] }])),
  ];
  if (oci) {
    const manifest = JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${sha(config)}`, size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: `sha256:${sha(layer)}`, size: layer.length }],
    });
    entries.push({ path: `blobs/sha256/${sha(manifest)}`, type: 'file', data: manifest });
    entries.push(f('oci-layout', '{"imageLayoutVersion":"1.0.0"}'));
    entries.push(f('index.json', JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${sha(manifest)}`, size: manifest.length }] })));
  }
  const p = join(work, `save-${n++}.tar`);
  writeFileSync(p, tarBuffer(entries));
  return p;
}

const failure = hutchFailure;

describe('RepoTags of an imported archive cannot take over an id', () => {
  const store = new ImageStore({ root: join(work, 'store') });

  it('a tagged docker save archive imports with its tags (control)', async () => {
    const img = await store.import(dockerSave('plain', ['app:1']));
    expect(img.tags).toEqual(['app:1']);
    expect((await store.get('app:1')).id).toBe(img.id);
  });

  for (const oci of [false, true]) {
    for (const shape of ['full hex', 'sha256:<hex>', '12-digit prefix', '20-digit prefix', 'builtin name']) {
      it(`refuses B whose RepoTags hold A's ${shape}${oci ? ' (OCI-form archive)' : ''}; A keeps its id`, async () => {
        const a = await store.import(dockerSave(`A-${shape}-${oci}`, []));
        const hex = a.id.slice(7);
        const tag = { 'full hex': hex, 'sha256:<hex>': a.id, '12-digit prefix': hex.slice(0, 12), '20-digit prefix': hex.slice(0, 20), 'builtin name': 'busybox' }[shape]!;
        const imagesBefore = readdirSync(join(store.root, 'images')).sort();
        const e = await failure(store.import(dockerSave(`B-${shape}-${oci}`, ['ok:tag', tag], oci)));
        expect(e.code, e.message).toBe('EBADIMAGE');
        expect(e.message).toContain(JSON.stringify(tag));
        // B left nothing: no record, no tag (not even its harmless one), no work dir.
        expect(readdirSync(join(store.root, 'images')).sort()).toEqual(imagesBefore);
        expect(Object.keys(await store.readTags())).not.toContain('ok:tag');
        expect(readdirSync(join(store.root, 'tmp')).filter((x) => x.startsWith('op-'))).toEqual([]);
        for (const ref of [a.id, hex, hex.slice(0, 12), hex.slice(0, 20)]) expect((await store.get(ref)).id).toBe(a.id);
      });
    }
  }

  it('a non-list RepoTags is refused; a missing one imports untagged', async () => {
    expect((await failure(store.import(dockerSave('odd', 'sha256:abc')))).code).toBe('EBADIMAGE');
    const img = await store.import(dockerSave('untagged', undefined));
    expect(img.tags).toEqual([]);
  });

  it('ids come before tags: an id-shaped tag already in tags.json (an older store) redirects nothing', async () => {
    const a = await store.import(dockerSave('victim', []));
    const b = await store.import(dockerSave('attacker', ['attacker:1']));
    const hex = a.id.slice(7);
    const tags = await store.readTags();
    for (const t of [a.id, hex, hex.slice(0, 12)]) tags[t] = b.id;
    await store.writeJson(store.path('tags.json'), tags);
    for (const ref of [a.id, hex, hex.slice(0, 12)]) expect((await store.get(ref)).id).toBe(a.id);
    // remove by A's id removes A, not B's planted tag.
    await store.remove(a.id);
    expect((await failure(store.get(a.id))).code).toBe('ENOIMAGE');
    expect((await store.get('attacker:1')).id).toBe(b.id);
  });
});

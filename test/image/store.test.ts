// The image store on the real filesystem: builtin images, lookup, tags, remove, prune,
// in-use records. Each test uses its own temporary store root, removed afterwards.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HutchError } from '../../lib/errors.js';
import { hostRange } from '../../lib/identity.js';
import { ImageStore } from '../../lib/image/store.js';
import { tarBuffer } from '../../lib/image/tarwriter.js';
import { processStart } from '../../lib/host/liveness.js';
import { pruneLeftovers } from '../../lib/image/gc.js';
import { isRoot, needs } from '../helpers/require.js';

const roots: string[] = [];
function newStore(): ImageStore {
  const root = mkdtempSync(join(tmpdir(), 'hutch-img-store-'));
  roots.push(root);
  return new ImageStore({ root });
}
afterEach(() => {
  for (const r of roots.splice(0)) rmSync(r, { recursive: true, force: true });
});

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (HutchError.is(e)) return e.code;
    throw e;
  }
  return 'resolved';
}

function rootfsTar(files: Record<string, string>): Buffer {
  return tarBuffer([
    { path: 'etc', type: 'dir', mode: 0o755 },
    ...Object.entries(files).map(([path, data]) => ({ path, type: 'file' as const, mode: 0o644, data })),
  ]);
}

function writeTmp(store: ImageStore, name: string, data: Buffer): string {
  const p = join(store.root, '..', `${store.root.split('/').pop()}-${name}`);
  writeFileSync(p, data);
  roots.push(p);
  return p;
}

const noBusybox = needs(existsSync('/bin/busybox'), '/bin/busybox is missing (apt-get install busybox-static)');

describe('builtin images', () => {
  it.skipIf(noBusybox)('busybox: /bin/busybox, an applet symlink per applet, /bin/sh, dirs, passwd', async () => {
    const store = newStore();
    const r = await store.resolve('busybox');
    expect(r.image.tags).toEqual(['busybox']);
    expect(r.image.id).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(r.lowerdirs).toHaveLength(1);
    expect(r.hostBinds).toEqual([]);
    expect(r.layersDir).toBe(join(store.root, 'layers'));
    expect(r.image.config).toMatchObject({ cmd: ['/bin/sh'] });
    expect(r.image.config.env.some((e) => e.startsWith('PATH='))).toBe(true);
    const L = join(r.layersDir, r.lowerdirs[0]!);
    expect(statSync(join(L, 'bin/busybox')).size).toBe(statSync('/bin/busybox').size);
    expect(readlinkSync(join(L, 'bin/sh'))).toBe('/bin/busybox');
    const applets = spawnSync('/bin/busybox', ['--list-full'], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
    for (const a of applets.filter((x) => x !== 'bin/busybox')) expect(lstatSync(join(L, a)).isSymbolicLink()).toBe(true);
    expect(statSync(join(L, 'tmp')).mode & 0o7777).toBe(0o1777);
    for (const d of ['etc', 'proc', 'dev', 'sys', 'root', 'home', 'var', 'usr/bin', 'usr/sbin', 'sbin']) {
      expect(statSync(join(L, d)).isDirectory()).toBe(true);
    }
    expect(readFileSync(join(L, 'etc/passwd'), 'utf8')).toMatch(/^root:x:0:0:/);
    expect(readFileSync(join(L, 'etc/group'), 'utf8')).toMatch(/nobody:x:65534:/);
    if (isRoot) {
      const range = hostRange();
      expect(statSync(join(L, 'bin/busybox')).uid).toBe(range.uid);
      expect(statSync(join(L, 'etc')).gid).toBe(range.gid);
      expect(lstatSync(join(L, 'bin/sh')).uid).toBe(range.uid);
    }
    // Same content on a second resolve, from the cache and from a fresh store object.
    expect((await store.resolve('busybox')).image.id).toBe(r.image.id);
    expect((await new ImageStore({ root: store.root }).resolve('busybox')).image.id).toBe(r.image.id);
  });

  it('host: curated /etc, mount points, host symlinks or bind targets, no secrets', async () => {
    const store = newStore();
    const r = await store.resolve('host');
    expect(r.image.tags).toEqual(['host']);
    expect(r.image.config.cmd).toEqual(['/bin/sh']);
    const L = join(r.layersDir, r.lowerdirs[0]!);
    expect(r.hostBinds[0]).toBe('/usr');
    for (const d of ['bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32']) {
      const host = lstatSync(`/${d}`, { throwIfNoEntry: false });
      if (!host) {
        expect(existsSync(join(L, d))).toBe(false);
      } else if (host.isSymbolicLink()) {
        expect(readlinkSync(join(L, d))).toBe(readlinkSync(`/${d}`));
        expect(r.hostBinds).not.toContain(`/${d}`);
      } else {
        expect(readdirSync(join(L, d))).toEqual([]);
        expect(r.hostBinds).toContain(`/${d}`);
      }
    }
    for (const d of ['usr', 'proc', 'dev', 'sys', 'root', 'home', 'run', 'var/tmp']) expect(statSync(join(L, d)).isDirectory()).toBe(true);
    expect(readdirSync(join(L, 'usr'))).toEqual([]);
    expect(statSync(join(L, 'tmp')).mode & 0o7777).toBe(0o1777);
    for (const secret of ['shadow', 'gshadow', 'sudoers', 'ssh', 'ssl/private']) expect(existsSync(join(L, 'etc', secret))).toBe(false);
    const passwd = readFileSync(join(L, 'etc/passwd'), 'utf8');
    expect(passwd).toMatch(/^root:/m);
    for (const line of passwd.trim().split('\n')) {
      const uid = Number(line.split(':')[2]);
      expect(uid < 1000 || uid === 65534).toBe(true);
    }
    if (existsSync('/etc/ld.so.cache')) expect(readFileSync(join(L, 'etc/ld.so.cache'))).toEqual(readFileSync('/etc/ld.so.cache'));
    if (lstatSync('/etc/os-release', { throwIfNoEntry: false })?.isSymbolicLink()) {
      expect(readlinkSync(join(L, 'etc/os-release'))).toBe(readlinkSync('/etc/os-release'));
    }
    if (isRoot) expect(statSync(join(L, 'etc/passwd')).uid).toBe(hostRange().uid);
  });

  it.skipIf(noBusybox)('are listed, cannot be used as user tags, and come back after remove', async () => {
    const store = newStore();
    const ids = (await store.list()).map((i) => i.tags.join(','));
    expect(ids).toEqual(expect.arrayContaining(['busybox', 'host']));
    const bb = await store.get('busybox');
    expect(await code(store.tag(bb, 'host'))).toBe('EINVAL');
    await store.remove('busybox');
    expect(existsSync(join(store.root, 'images', `${bb.id.slice(7)}.json`))).toBe(false);
    expect((await store.get('busybox')).id).toBe(bb.id);
  });
});

describe('lookup, tags, remove, prune', () => {
  it('get takes a tag, the full id and a unique prefix of 12+ digits; ENOIMAGE otherwise', async () => {
    const store = newStore();
    const img = await store.import(writeTmp(store, 'a.tar', rootfsTar({ 'etc/a': 'a' })), { tag: 'app:1' });
    const hex = img.id.slice(7);
    expect((await store.get('app:1')).id).toBe(img.id);
    expect((await store.get(img.id)).id).toBe(img.id);
    expect((await store.get(hex)).id).toBe(img.id);
    expect((await store.get(hex.slice(0, 12))).id).toBe(img.id);
    expect(await code(store.get(hex.slice(0, 11)))).toBe('ENOIMAGE');
    expect(await code(store.get('app:2'))).toBe('ENOIMAGE');
    expect(await code(store.get(`sha256:${'0'.repeat(64)}`))).toBe('ENOIMAGE');
    expect(await code(store.get(''))).toBe('EINVAL');
    await store.tag(img, 'other');
    expect((await store.get('other:latest')).id).toBe(img.id);
    expect((await store.get('other')).tags).toEqual(['app:1', 'other']);
    expect(await code(store.tag(img, hex.slice(0, 20)))).toBe('EINVAL');
    expect(await code(store.tag(img, 'sha256:abc'))).toBe('EINVAL');
  });

  it('remove of one of two tags only untags; remove of the last frees layers and blobs', async () => {
    const store = newStore();
    const img = await store.import(writeTmp(store, 'a.tar', rootfsTar({ 'etc/a': 'a' })), { tag: 'one' });
    await store.tag(img, 'two');
    await store.remove('one');
    expect((await store.get('two')).tags).toEqual(['two']);
    const layer = join(store.root, 'layers', img.layers[0]!.slice(7));
    expect(existsSync(layer)).toBe(true);
    await store.remove('two');
    expect(await code(store.get(img.id))).toBe('ENOIMAGE');
    expect(existsSync(layer)).toBe(false);
    expect(readdirSync(join(store.root, 'blobs/sha256'))).toEqual([]);
    expect(await code(store.remove('two'))).toBe('ENOIMAGE');
  });

  it('layers shared by two images stay until both are gone', async () => {
    const store = newStore();
    const a = await store.import(writeTmp(store, 'a.tar', rootfsTar({ 'etc/a': 'same' })), { tag: 'a' });
    // Same layer, different config: a docker-save style archive is not needed; tag a second
    // image made from the same tar through a gzip copy (same diff id, other blob).
    const { gzipSync } = await import('node:zlib');
    const b = await store.import(writeTmp(store, 'b.tgz', gzipSync(rootfsTar({ 'etc/a': 'same' }))), { tag: 'b' });
    expect(b.layers).toEqual(a.layers);
    expect(b.id).toBe(a.id); // same synthesized config: same image
    const c = await store.import(writeTmp(store, 'c.tar', rootfsTar({ 'etc/c': 'c' })), { tag: 'c' });
    expect(c.id).not.toBe(a.id);
    expect(readdirSync(join(store.root, 'layers')).sort()).toEqual([a.layers[0]!.slice(7), c.layers[0]!.slice(7)].sort());
  });

  it('remove refuses an image a live sandbox uses; a dead owner does not count; prune clears it', async () => {
    const store = newStore();
    const img = await store.import(writeTmp(store, 'a.tar', rootfsTar({ 'etc/a': 'a' })), { tag: 'used' });
    await store.markInUse(img.id, 'sbx-live');
    expect(await code(store.remove('used'))).toBe('EINVAL');
    await store.release('sbx-live');
    expect(existsSync(join(store.root, 'sandboxes', 'sbx-live'))).toBe(false);

    // An owner process that has exited.
    const child = spawn('sleep', ['30']);
    await new Promise((r) => child.once('spawn', r));
    await store.markInUse(img.id, 'sbx-dead', child.pid);
    mkdirSync(join(store.root, 'sandboxes', 'sbx-dead', 'upper'));
    writeFileSync(join(store.root, 'sandboxes', 'sbx-dead', 'upper', 'f'), 'x'.repeat(1000));
    expect(await code(store.remove('used'))).toBe('EINVAL');
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const { removedBytes } = await store.prune();
    expect(removedBytes).toBeGreaterThanOrEqual(1000);
    expect(existsSync(join(store.root, 'sandboxes', 'sbx-dead'))).toBe(false);
    await store.remove('used');
    expect(await code(store.markInUse(img.id, 'sbx-late'))).toBe('ENOIMAGE');
  });

  it('an ended record is kept as a spare out of sandboxes/ and reused whole by the next; it holds no image, and a prune takes only a dead owner\'s', async () => {
    const store = newStore();
    const a = await store.import(writeTmp(store, 'a.tar', rootfsTar({ 'etc/a': 'a' })), { tag: 'a' });
    const b = await store.import(writeTmp(store, 'b.tar', rootfsTar({ 'etc/b': 'b' })), { tag: 'b' });
    const dir = (id: string) => join(store.root, 'sandboxes', id);
    await store.markInUse(a.id, 'sbx-first');
    const ino = statSync(join(dir('sbx-first'), 'owner.json')).ino;
    await store.release('sbx-first');
    // Out of sandboxes/ whole, into spare/ under a name that carries its owner.
    expect(readdirSync(join(store.root, 'sandboxes'))).toEqual([]);
    const spares = readdirSync(join(store.root, 'spare'));
    expect(spares).toHaveLength(1);
    expect(spares[0]).toMatch(new RegExp(`^rec-${process.pid}-\\d+-[0-9a-f]{8}$`));
    // A spare holds nothing: the image its owner.json still names can go.
    await store.remove('a');
    // The next record is the spare: the same owner.json, its text replaced whole.
    await store.markInUse(b.id, 'sbx-second');
    expect(statSync(join(dir('sbx-second'), 'owner.json')).ino).toBe(ino);
    expect(JSON.parse(readFileSync(join(dir('sbx-second'), 'owner.json'), 'utf8'))).toEqual({ image: b.id, pid: process.pid, start: expect.any(String) });
    expect(readdirSync(join(store.root, 'spare'))).toEqual([]);
    expect(await code(store.remove('b'))).toBe('EINVAL');
    // A record with more in it than owner.json (a persistent sandbox's) is never a spare.
    writeFileSync(join(dir('sbx-second'), 'upper-marker'), 'x');
    await store.release('sbx-second');
    expect(readdirSync(join(store.root, 'sandboxes'))).toEqual([]);
    expect(readdirSync(join(store.root, 'spare'))).toEqual([]);
    // A prune keeps another live process's spare (pid 1's here), and takes a dead one's and
    // this process's own (the store as small as it can be; the next record is made anew).
    await store.markInUse(b.id, 'sbx-third');
    await store.release('sbx-third');
    const other = `rec-1-${processStart(1)}-0badf00d`;
    for (const n of [other, `rec-${process.pid}-1-0badf00d`]) {
      mkdirSync(join(store.root, 'spare', n));
      writeFileSync(join(store.root, 'spare', n, 'owner.json'), '{}');
    }
    expect(readdirSync(join(store.root, 'spare'))).toHaveLength(3);
    await store.prune();
    expect(readdirSync(join(store.root, 'spare'))).toEqual([other]);
    await store.markInUse(b.id, 'sbx-fourth');
    expect(existsSync(join(dir('sbx-fourth'), 'owner.json'))).toBe(true);
    await store.release('sbx-fourth');
  });

  it("the background cleanup a process's first sandbox starts leaves that process's spare records (only a prune asked for takes them)", async () => {
    const store = newStore();
    const img = await store.import(writeTmp(store, 'a.tar', rootfsTar({ 'etc/a': 'a' })), { tag: 'bg' });
    for (const id of ['sbx-bg1', 'sbx-bg2']) await store.markInUse(img.id, id);
    for (const id of ['sbx-bg1', 'sbx-bg2']) await store.release(id);
    const dead = `rec-${process.pid}-1-0badf00d`; // a dead process's (another start time)
    mkdirSync(join(store.root, 'spare', dead));
    writeFileSync(join(store.root, 'spare', dead, 'owner.json'), '{}');
    expect(readdirSync(join(store.root, 'spare'))).toHaveLength(3);
    // What the background cleanup runs on the store (lib/image/background.ts: gc false).
    await pruneLeftovers(store as unknown as Parameters<typeof pruneLeftovers>[0], false, 0);
    const left = readdirSync(join(store.root, 'spare'));
    expect(left).toHaveLength(2);
    expect(left).not.toContain(dead);
    // The next two records are those spares, whole.
    for (const id of ['sbx-bg3', 'sbx-bg4']) await store.markInUse(img.id, id);
    expect(readdirSync(join(store.root, 'spare'))).toEqual([]);
    for (const id of ['sbx-bg3', 'sbx-bg4']) await store.release(id);
    await store.prune();
    expect(readdirSync(join(store.root, 'spare'))).toEqual([]);
  });

  it('prune keeps a record being written (its lease is live), removes what a killed writer left', async () => {
    const store = newStore();
    const img = await store.import(writeTmp(store, 'a.tar', rootfsTar({ 'etc/a': 'a' })), { tag: 'rec' });
    const dir = (id: string) => join(store.root, 'sandboxes', id);
    // A record caught between its mkdir and its owner.json (written in place after the lease).
    await store.markInUse(img.id, 'sbx-writing');
    rmSync(join(dir('sbx-writing'), 'owner.json'));
    // What writers killed half-way left, with no live lease: an empty dir, an owner.json cut short.
    mkdirSync(dir('sbx-empty'));
    mkdirSync(dir('sbx-torn'));
    writeFileSync(join(dir('sbx-torn'), 'owner.json'), '{"image":"sha');
    const { sandboxes } = await store.pruneHost({ graceMs: 0 }); // no grace: only the lease protects the first
    expect(existsSync(dir('sbx-writing'))).toBe(true);
    expect(existsSync(dir('sbx-empty'))).toBe(false);
    expect(existsSync(dir('sbx-torn'))).toBe(false);
    expect(sandboxes).toEqual(expect.arrayContaining(['sbx-empty', 'sbx-torn']));
    expect(sandboxes).not.toContain('sbx-writing');
    await store.release('sbx-writing');
    expect(readdirSync(join(store.root, 'sandboxes'))).toEqual([]);

    // A writer killed between its lease and its owner.json (the lease names it, dead): the next
    // prune takes the dir at once, grace or not.
    const child = spawn('sleep', ['30']);
    await new Promise((r) => child.once('spawn', r));
    await store.markInUse(img.id, 'sbx-killed', child.pid);
    rmSync(join(dir('sbx-killed'), 'owner.json'));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const later = await store.prune();
    expect(later.sandboxes).toContain('sbx-killed');
    expect(existsSync(dir('sbx-killed'))).toBe(false);
  });

  it('prune removes unreferenced layers and the work dirs of dead imports, keeps live ones', async () => {
    const store = newStore();
    const img = await store.import(writeTmp(store, 'a.tar', rootfsTar({ 'etc/a': 'a' })), { tag: 'keep' });
    store.ensure();
    const stray = 'f'.repeat(64);
    mkdirSync(join(store.root, 'layers', stray, 'etc'), { recursive: true });
    writeFileSync(join(store.root, 'layers', stray, 'etc', 'x'), 'y'.repeat(500));
    // The work dir of an import whose process died (pid 999999999 never exists), and a live one.
    mkdirSync(join(store.root, 'tmp', 'op-999999999-1-abc', 'l-0'), { recursive: true });
    const liveOp = await store.beginOp();
    const { removedBytes } = await store.prune();
    expect(removedBytes).toBeGreaterThanOrEqual(500);
    expect(readdirSync(join(store.root, 'layers'))).toEqual([img.layers[0]!.slice(7)]);
    expect(existsSync(join(store.root, 'tmp', 'op-999999999-1-abc'))).toBe(false);
    expect(existsSync(liveOp.dir)).toBe(true);
    await liveOp.close();
    expect((await store.get('keep')).id).toBe(img.id);
  });

  it('resolve: lowerdirs are the layer dirs top first; layers/ holds nothing but layer trees', async () => {
    const store = newStore();
    // A two-layer OCI layout written by hand: bottom adds /etc/a, top adds /etc/b.
    const dir = join(store.root + '-oci');
    roots.push(dir);
    const { createHash } = await import('node:crypto');
    const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
    mkdirSync(join(dir, 'blobs/sha256'), { recursive: true });
    const put = (b: Buffer | string) => {
      const h = sha(b);
      writeFileSync(join(dir, 'blobs/sha256', h), b);
      return { digest: `sha256:${h}`, size: Buffer.byteLength(b) };
    };
    const l1 = rootfsTar({ 'etc/a': 'a' });
    const l2 = rootfsTar({ 'etc/b': 'b' });
    const config = JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Env: ['A=1'] }, rootfs: { type: 'layers', diff_ids: [`sha256:${sha(l1)}`, `sha256:${sha(l2)}`] } });
    const manifest = JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...put(config) },
      layers: [l1, l2].map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...put(l) })),
    });
    writeFileSync(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...put(manifest) }] }));
    writeFileSync(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    const img = await store.import(dir, { tag: 'two' });
    expect(img.id).toBe(`sha256:${sha(config)}`);
    expect(img.layers).toEqual([`sha256:${sha(l1)}`, `sha256:${sha(l2)}`]);
    expect(img.config.env).toEqual(['A=1']);
    const r = await store.resolve(img);
    expect(r.lowerdirs).toEqual([sha(l2), sha(l1)]);
    for (const n of readdirSync(r.layersDir)) expect(n).toMatch(/^[0-9a-f]{64}$/);
    if (isRoot) {
      const st = statSync(r.layersDir);
      expect(st.mode & 0o777).toBe(0o710);
      expect(st.gid).toBe(hostRange().gid);
      expect(statSync(store.root).mode & 0o777).toBe(0o710);
    }
  });
});

// Import of each format, produced by independent tools (umoci, skopeo, buildah, debootstrap)
// and by the tests' own tar writer. Running a command inside an imported image needs the
// Sandbox and lives with the sandbox tests; here the extracted layers are checked on disk.
import { execFileSync, spawnSync } from 'node:child_process';
import { createReadStream, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { hostRange } from '../../lib/identity.js';
import { ImageStore } from '../../lib/image/store.js';
import { tarBuffer } from '../../lib/image/tarwriter.js';
import type { Progress } from '../../lib/image/types.js';
import { isRoot, needs } from '../helpers/require.js';
import { debianTarball, has, umociLayout } from '../helpers/tools.js';
import { PY, xattr } from '../helpers/xattr.js';

const work = mkdtempSync(join(tmpdir(), 'hutch-img-import-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
let n = 0;
function newStore(): ImageStore {
  return new ImageStore({ root: join(work, `store-${n++}`) });
}
function run(cmd: string, args: string[], cwd = work): string {
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}
function layerDir(store: ImageStore, diffId: string): string {
  return join(store.root, 'layers', diffId.slice(7));
}

const noUmoci = needs(has('umoci') && has('skopeo') && existsSync('/bin/busybox'), 'umoci, skopeo and busybox-static are needed (apt-get install umoci skopeo busybox-static)');
const noBuildah = needs(has('buildah'), 'buildah is needed (apt-get install buildah)');
const noRoot = needs(isRoot, 'shifted ownership needs root');

/**
 * An OCI layout made by umoci with two layers: the first has busybox, /etc/hello and
 * /etc/gone; the second deletes /etc/gone (a whiteout) and adds /etc/second.
 */
let umoci: string | undefined;
function makeUmociLayout(): string {
  umoci ??= umociLayout(join(work, 'umoci'), ['--config.cmd', '/bin/sh', '--config.entrypoint', '/bin/busybox', '--config.env', 'FOO=bar', '--config.workingdir', '/etc', '--config.user', '1000:1000', '--config.exposedports', '8080/tcp']);
  return umoci;
}

function checkUmociImage(store: ImageStore, img: Awaited<ReturnType<ImageStore['get']>>) {
  expect(img.layers).toHaveLength(2);
  expect(img.config).toMatchObject({ cmd: ['/bin/sh'], entrypoint: ['/bin/busybox'], workingDir: '/etc', user: '1000:1000', exposedPorts: [8080] });
  expect(img.config.env).toContain('FOO=bar');
  const bottom = layerDir(store, img.layers[0]!);
  const top = layerDir(store, img.layers[1]!);
  expect(readFileSync(join(bottom, 'etc/hello'), 'utf8')).toBe('hello\n');
  expect(statSync(join(bottom, 'bin/busybox')).size).toBe(statSync('/bin/busybox').size);
  expect(readFileSync(join(top, 'etc/second'), 'utf8')).toBe('second\n');
  const wh = lstatSync(join(top, 'etc/gone'));
  expect(wh.isCharacterDevice()).toBe(true);
  expect(wh.rdev).toBe(0);
  expect(existsSync(join(top, 'etc/.wh.gone'))).toBe(false);
}

describe('OCI layouts and archives from independent producers', () => {
  it.skipIf(noUmoci)('an OCI layout directory made by umoci (two layers, a whiteout)', async () => {
    const store = newStore();
    const seen: Progress[] = [];
    const img = await store.import(makeUmociLayout(), { tag: 'umoci:1', onProgress: (p) => seen.push(p) });
    expect(img.tags).toEqual(['umoci:1']);
    checkUmociImage(store, img);
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.at(-1)!.current).toBeGreaterThan(0);
    const r = await store.resolve('umoci:1');
    expect(r.lowerdirs).toEqual([img.layers[1]!.slice(7), img.layers[0]!.slice(7)]);
  });

  it.skipIf(noUmoci)('an OCI archive (tar) and a docker save archive (plain and gzip) written by skopeo', async () => {
    const store = newStore();
    const lay = makeUmociLayout();
    const oci = join(work, 'skopeo-oci.tar');
    const docker = join(work, 'skopeo-docker.tar');
    run('skopeo', ['copy', '-q', `oci:${lay}:latest`, `oci-archive:${oci}`]);
    run('skopeo', ['copy', '-q', `oci:${lay}:latest`, `docker-archive:${docker}:example/app:2`]);
    writeFileSync(`${docker}.gz`, gzipSync(readFileSync(docker)));
    const a = await store.import(oci);
    checkUmociImage(store, a);
    const b = await store.import(docker);
    checkUmociImage(store, b);
    expect(b.tags).toContain('docker.io/example/app:2');
    const c = await store.import(`${docker}.gz`, { tag: 'gz' });
    expect(c.id).toBe(b.id);
    expect(c.tags).toContain('gz');
    // One tree per diff id, whoever brought it.
    expect(readdirSync(join(store.root, 'layers')).sort()).toEqual([...new Set([...a.layers, ...b.layers])].map((l) => l.slice(7)).sort());
    // A stream works too (here the OCI archive from a file stream).
    const d = await store.import(createReadStream(oci));
    expect(d.id).toBe(a.id);
  });

  it.skipIf(noBuildah || noUmoci)('an OCI archive committed by buildah (user, workdir, env)', async () => {
    const store = newStore();
    const dir = join(work, 'buildah');
    mkdirSync(join(dir, 'ctx/bin'), { recursive: true });
    writeFileSync(join(dir, 'ctx/bin/busybox'), readFileSync('/bin/busybox'), { mode: 0o755 });
    const B = ['--root', join(dir, 'root'), '--runroot', join(dir, 'run'), '--storage-driver', 'vfs'];
    const ctr = run('buildah', [...B, 'from', 'scratch']).trim();
    try {
      run('buildah', [...B, 'copy', ctr, join(dir, 'ctx'), '/']);
      run('buildah', [...B, 'config', '--cmd', '["/bin/busybox","true"]', '--env', 'X=1', '--user', '65534:65534', '--workingdir', '/w', '--port', '9000', ctr]);
      run('buildah', [...B, 'commit', '-q', ctr, `oci-archive:${join(dir, 'b.tar')}:latest`]);
    } finally {
      spawnSync('buildah', [...B, 'rm', '--all']);
      spawnSync('buildah', [...B, 'rmi', '--all', '-f']);
      rmSync(join(dir, 'root'), { recursive: true, force: true });
    }
    const img = await store.import(join(dir, 'b.tar'), { tag: 'from-buildah' });
    expect(img.config).toMatchObject({ cmd: ['/bin/busybox', 'true'], user: '65534:65534', workingDir: '/w', exposedPorts: [9000] });
    expect(img.config.env).toContain('X=1');
    expect(statSync(join(layerDir(store, img.layers[0]!), 'bin/busybox')).size).toBe(statSync('/bin/busybox').size);
  });

  it.skipIf(noUmoci)('an OCI layout written back by skopeo from a docker archive (round trip)', async () => {
    const store = newStore();
    const lay = makeUmociLayout();
    const docker = join(work, 'rt-docker.tar');
    const back = join(work, 'rt-oci');
    run('skopeo', ['copy', '-q', `oci:${lay}:latest`, `docker-archive:${docker}`]);
    run('skopeo', ['copy', '-q', `docker-archive:${docker}`, `oci:${back}:x`]);
    checkUmociImage(store, await store.import(back));
  });
});

describe('rootfs tarballs and the layer rules', () => {
  const entries = () =>
    tarBuffer([
      { path: './', type: 'dir', mode: 0o755 },
      { path: './etc/', type: 'dir', mode: 0o755 },
      { path: './etc/os', type: 'file', mode: 0o644, data: 'tiny\n', mtime: 1_600_000_000 },
      { path: './usr/bin/tool', type: 'file', mode: 0o755, data: '#!/bin/sh\n', uid: 2, gid: 3 },
      { path: './usr/bin/alias', type: 'link', linkpath: './usr/bin/tool' },
      { path: './bin', type: 'symlink', linkpath: 'usr/bin' },
      { path: './abs', type: 'symlink', linkpath: '/etc/os' },
      { path: './var/opq/', type: 'dir', mode: 0o700 },
      { path: './var/opq/.wh..wh..opq', type: 'file' },
      { path: './var/opq/kept', type: 'file', data: 'k' },
      { path: './var/.wh.removed', type: 'file' },
      { path: './run/fifo', type: 'fifo', mode: 0o600 },
      { path: `./deep/${'d'.repeat(120)}/${'e'.repeat(120)}/file`, type: 'file', data: 'long' },
      { path: './etc/os', type: 'file', mode: 0o600, data: 'replaced\n' },
    ]);

  function check(store: ImageStore, diffId: string) {
    const L = layerDir(store, diffId);
    expect(readFileSync(join(L, 'etc/os'), 'utf8')).toBe('replaced\n');
    expect(statSync(join(L, 'etc/os')).mode & 0o777).toBe(0o600);
    expect(statSync(join(L, 'usr/bin/alias')).ino).toBe(statSync(join(L, 'usr/bin/tool')).ino);
    expect(readFileSync(join(L, 'deep', 'd'.repeat(120), 'e'.repeat(120), 'file'), 'utf8')).toBe('long');
    expect(lstatSync(join(L, 'bin')).isSymbolicLink()).toBe(true);
    expect(lstatSync(join(L, 'abs')).isSymbolicLink()).toBe(true);
    const wh = lstatSync(join(L, 'var/removed'));
    expect(wh.isCharacterDevice() && wh.rdev === 0).toBe(true);
    expect(existsSync(join(L, 'var/opq/.wh..wh..opq'))).toBe(false);
    expect(readFileSync(join(L, 'var/opq/kept'), 'utf8')).toBe('k');
    expect(statSync(join(L, 'var/opq')).mode & 0o777).toBe(0o700);
    expect(lstatSync(join(L, 'run/fifo')).isFIFO()).toBe(true);
    if (PY) {
      expect(xattr(join(L, 'var/opq'), 'user.overlay.opaque')).toBe('y');
      expect(xattr(join(L, 'var'), 'user.overlay.opaque')).toBe(null);
    }
    if (isRoot) {
      const r = hostRange();
      expect(statSync(join(L, 'usr/bin/tool')).uid).toBe(r.uid + 2);
      expect(statSync(join(L, 'usr/bin/tool')).gid).toBe(r.gid + 3);
      expect(lstatSync(join(L, 'bin')).uid).toBe(r.uid);
      expect(statSync(join(L, 'var/opq')).uid).toBe(r.uid);
      expect(lstatSync(join(L, 'var/removed')).uid).toBe(r.uid);
      expect(statSync(L).uid).toBe(r.uid);
    }
  }

  it('plain, gzip and streamed rootfs tarballs give one layer, the same image, with a synthesized config', async () => {
    const store = newStore();
    const tar = entries();
    writeFileSync(join(work, 'r.tar'), tar);
    writeFileSync(join(work, 'r.tgz'), gzipSync(tar));
    const a = await store.import(join(work, 'r.tar'), { tag: 'r' });
    expect(a.layers).toHaveLength(1);
    expect(a.config.env[0]).toMatch(/^PATH=/);
    expect(a.config.cmd).toBeUndefined();
    check(store, a.layers[0]!);
    const b = await store.import(join(work, 'r.tgz'));
    expect(b.id).toBe(a.id);
    const c = await store.import(createReadStream(join(work, 'r.tgz')));
    expect(c.id).toBe(a.id);
    expect(readdirSync(join(store.root, 'layers'))).toHaveLength(1);
    expect(readdirSync(join(store.root, 'tmp')).filter((x) => x !== 'trash')).toEqual([]);
    expect(a.sizeBytes).toBeGreaterThan(0);
  });

  it.skipIf(noRoot)('layers/ and the store root are not reachable by other host users', () => {
    const store = newStore();
    store.ensure();
    for (const p of [store.root, join(store.root, 'layers')]) {
      const st = statSync(p);
      expect(st.mode & 0o007).toBe(0);
      expect(st.uid).toBe(0);
    }
    for (const p of ['blobs', 'images', 'tmp']) expect(statSync(join(store.root, p)).mode & 0o077).toBe(0);
  });
});


describe('a Debian rootfs', () => {
  const tarball = debianTarball();
  const skip = needs(tarball !== undefined, 'no cached Debian rootfs and debootstrap could not make one (needs root, debootstrap and the Debian mirror)');
  it.skipIf(skip)('debootstrap --variant=minbase imports: bash, debian_version, set-id bits, no device nodes', { timeout: 300_000 }, async () => {
    const store = newStore();
    const img = await store.import(tarball!, { tag: 'debian:bookworm' });
    const L = layerDir(store, img.layers[0]!);
    expect(readFileSync(join(L, 'etc/debian_version'), 'utf8')).toMatch(/^12\./);
    expect(statSync(join(L, 'usr/bin/bash')).mode & 0o111).not.toBe(0);
    expect(statSync(join(L, 'usr/bin/passwd')).mode & 0o4000).toBe(0o4000);
    const dev = readdirSync(join(L, 'dev'), { withFileTypes: true });
    expect(dev.every((e) => !e.isCharacterDevice() && !e.isBlockDevice())).toBe(true);
    if (isRoot) {
      expect(statSync(join(L, 'etc/shadow')).uid).toBe(hostRange().uid);
      expect(statSync(join(L, 'etc/shadow')).gid).toBe(hostRange().gid + 42);
    }
  });
});

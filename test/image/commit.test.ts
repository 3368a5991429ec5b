// commitUpper: a sandbox's writable layer (overlay's upper dir) becomes a layer of a new image.
// Checked from inside a new sandbox on the result, and in the layer tar itself.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { ImageStore, Sandbox } from '../../lib/index.js';
import { readTar } from '../../lib/image/tar.js';
import { isRoot, needs } from '../helpers/require.js';

const root = mkdtempSync('/tmp/hutch-test-commit-');
const store = new ImageStore({ root });
afterAll(async () => {
  await Sandbox.settle(); // background teardowns of Sandbox.run still use the store
  rmSync(root, { recursive: true, force: true });
});

const skip = needs(isRoot, 'sandboxes need root');
let committed: string | undefined;

/** Entries of a stored layer blob: name → { type, uid, gid, mode, size }. */
async function layerEntries(diffId: string, imageId: string) {
  const rec = (await store.readRecord(imageId.slice(7)))!;
  const blob = rec.layerBlobs[rec.layers.indexOf(diffId)]!;
  const raw = gunzipSync(readFileSync(store.path('blobs', 'sha256', blob.digest.slice(7))));
  const out = new Map<string, { type: string; uid: number; gid: number; mode: number; size: number; linkpath?: string }>();
  await readTar(
    (async function* () {
      yield raw;
    })(),
    (e) => {
      out.set(e.path.replace(/\/$/, ''), { type: e.type, uid: e.uid ?? 0, gid: e.gid ?? 0, mode: (e.mode ?? 0) & 0o7777, size: e.size ?? 0, linkpath: e.linkpath });
      e.resume();
    },
    'test',
  );
  return out;
}

describe.skipIf(skip)('commitUpper', () => {
  it('added, deleted and opaque paths come back exactly in a new sandbox', async () => {
    const sb = await Sandbox.create({ image: 'busybox', store });
    let img;
    try {
      const setup = [
        'echo added > /added',
        'rm /etc/hosts', // a file of the lower layer
        'rm -rf /usr && mkdir /usr && echo only > /usr/only', // /usr becomes opaque
        'mkdir -p /home/u && echo mine > /home/u/f && chown 1000:1001 /home/u/f && chmod 4750 /home/u/f',
        'ln -s /added /link && ln /added /hard && mkfifo /fifo',
        `mkdir -p /deep/${'d'.repeat(90)}/${'e'.repeat(90)} && echo long > /deep/${'d'.repeat(90)}/${'e'.repeat(90)}/f`,
      ].join(' && ');
      const r = await sb.exec(setup, { encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(r.exitCode).toBe(0);
      img = await store.commitUpper({ base: sb.image.image, upperDir: `/proc/${sb.pid}/fd/4/upper`, tag: 'committed:1', config: { cmd: ['cat', '/added'] } });
    } finally {
      await sb.destroy();
    }
    committed = img.id;
    const base = await store.get('busybox');
    expect(img.layers.slice(0, -1)).toEqual(base.layers);
    expect(img.layers).toHaveLength(base.layers.length + 1);
    expect(img.tags).toEqual(['committed:1']);
    expect(img.config.cmd).toEqual(['cat', '/added']);

    // The layer as OCI wants it: whiteout files, an opaque marker, ids back in 0..65535.
    const entries = await layerEntries(img.layers.at(-1)!, img.id);
    expect(entries.get('etc/.wh.hosts')?.type).toBe('File');
    expect(entries.get('usr/.wh..wh..opq')?.type).toBe('File');
    expect(entries.get('home/u/f')).toMatchObject({ uid: 1000, gid: 1001, mode: 0o4750 });
    expect(entries.get('added')).toMatchObject({ uid: 0, gid: 0, size: 6 });
    expect(entries.get('link')).toMatchObject({ type: 'SymbolicLink', linkpath: '/added' });
    expect(entries.get('hard')?.type === 'Link' || entries.get('added')?.type === 'Link').toBe(true);
    expect(entries.get('fifo')?.type).toBe('FIFO');
    expect([...entries.keys()].some((k) => k.startsWith('etc/hosts') || k === 'usr/bin')).toBe(false);

    // And seen from inside.
    const r = await Sandbox.run({
      image: 'committed:1',
      store,
      command: 'cat /added /hard /home/u/f /deep/*/*/f; test -e /etc/hosts && echo hosts; ls -A /usr; ls -ln /home/u/f; test -p /fifo && echo fifo; readlink /link',
      encoding: 'utf8',
    });
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^added\nadded\nmine\nlong\nonly\n-rwsr-x--- +1 1000 +1001 .*\/home\/u\/f\nfifo\n\/added\n$/);
    // Cmd from the commit's config.
    expect((await Sandbox.run({ image: img.id, store, command: undefined as unknown as string, encoding: 'utf8' })).stdout).toBe('added\n');
  });

  it('a commit on a commit stacks layers; the host image keeps its binds', async () => {
    const sb = await Sandbox.create({ image: 'host', store });
    let img;
    try {
      await sb.exec('echo one > /root/one');
      img = await store.commitUpper({ base: sb.image.image, upperDir: `/proc/${sb.pid}/fd/4/upper` });
    } finally {
      await sb.destroy();
    }
    const sb2 = await Sandbox.create({ image: img.id, store });
    let img2;
    try {
      expect((await sb2.exec('rm /root/one && echo two > /root/two', { encoding: 'utf8' })).exitCode).toBe(0);
      img2 = await store.commitUpper({ base: img, upperDir: `/proc/${sb2.pid}/fd/4/upper` });
    } finally {
      await sb2.destroy();
    }
    expect(img2.layers.slice(0, -1)).toEqual(img.layers);
    const r = await Sandbox.run({ image: img2.id, store, command: ['/usr/bin/bash', '-c', 'ls /root; cat /root/two'], encoding: 'utf8' });
    expect(r.stdout).toBe('two\ntwo\n');
  });

  it('a sandbox swapping a directory for a symlink to /etc mid-commit never gets a host file in', { timeout: 60_000 }, async () => {
    const sb = await Sandbox.create({ image: 'busybox', store });
    const hostShadow = readFileSync('/etc/shadow', 'utf8');
    let ok = 0;
    try {
      // Inside, /etc is the sandbox's own; seen from the host through the upper dir it would be the host's.
      sb.spawn('while true; do rm -rf /d; mkdir /d; echo mine > /d/shadow; rm -rf /d; ln -s /etc /d; done');
      for (let i = 0; i < 15; i++) {
        let img;
        try {
          img = await store.commitUpper({ base: sb.image.image, upperDir: `/proc/${sb.pid}/fd/4/upper` });
        } catch (e) {
          expect((e as { code?: string }).code).toBe('EINVAL'); // "changed during the commit"
          continue;
        }
        ok++;
        if (img.layers.length === sb.image.image.layers.length) continue; // nothing to commit at that instant
        const entries = await layerEntries(img.layers.at(-1)!, img.id);
        const d = entries.get('d');
        if (d?.type === 'SymbolicLink') expect(d.linkpath).toBe('/etc');
        const f = entries.get('d/shadow');
        // The sandbox's own file: "mine\n", or empty when caught between its creation and its write.
        if (f) expect([0, 5]).toContain(f.size);
        const L = store.path('layers', img.layers.at(-1)!.slice(7));
        if (existsSync(join(L, 'd/shadow')) && !lstatSync(join(L, 'd')).isSymbolicLink()) {
          expect(readFileSync(join(L, 'd/shadow'), 'utf8')).not.toBe(hostShadow);
        }
      }
    } finally {
      await sb.destroy();
    }
    expect(ok).toBeGreaterThan(0);
  });

  it('an unchanged sandbox commits to a config-only child (no empty layer)', async () => {
    const sb = await Sandbox.create({ image: 'busybox', store });
    try {
      const img = await store.commitUpper({ base: 'busybox', upperDir: `/proc/${sb.pid}/fd/4/upper`, config: { env: ['A=1'] } });
      expect(img.layers).toEqual((await store.get('busybox')).layers);
      expect(img.config.env).toEqual(['A=1']);
    } finally {
      await sb.destroy();
    }
  });

  it('refuses bad options', async () => {
    await expect(store.commitUpper({ base: 'busybox', upperDir: '/nonexistent/upper' })).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(store.commitUpper({ base: 'no-such-image', upperDir: root })).rejects.toMatchObject({ code: 'ENOIMAGE' });
    await expect(store.commitUpper({ base: 'busybox', upperDir: root, tag: 'busybox' })).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(store.commitUpper({ base: 'busybox', upperDir: root, config: { cmd: 'ls' as unknown as string[] } })).rejects.toMatchObject({ code: 'EINVAL' });
  });
});

// What other tools make of a committed image: pushed to Debian's docker-registry on a loopback
// port, copied back by skopeo and unpacked by umoci, which applies the whiteouts itself.
const has = (c: string) => spawnSync('sh', ['-c', `command -v ${c}`]).status === 0;
const noTools = needs(has('docker-registry') && has('skopeo') && has('umoci'), 'docker-registry, skopeo and umoci are needed (apt-get install docker-registry skopeo umoci)');

describe.skipIf(skip || noTools)('a committed image read by skopeo and umoci', () => {
  it('has the layer, the whiteout and the opaque directory as OCI means them', { timeout: 60_000 }, async () => {
    expect(committed).toBeDefined();
    const work = mkdtempSync('/tmp/hutch-test-commit-reg-');
    const port = await new Promise<number>((r) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => r(p));
      });
    });
    writeFileSync(join(work, 'registry.yml'), `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${join(work, 'registry')}\nhttp:\n  addr: 127.0.0.1:${port}\n`);
    const registry = spawn('docker-registry', ['serve', join(work, 'registry.yml')], { stdio: 'ignore' });
    try {
      for (let i = 0; !(await fetch(`http://127.0.0.1:${port}/v2/`).then((r) => r.ok, () => false)); i++) {
        if (i > 100) throw new Error('docker-registry did not start');
        await new Promise((r) => setTimeout(r, 50));
      }
      await store.push(committed!, `127.0.0.1:${port}/hutch/committed:1`, { insecure: true });
      execFileSync('skopeo', ['copy', '-q', '--src-tls-verify=false', `docker://127.0.0.1:${port}/hutch/committed:1`, `oci:${join(work, 'lay')}:x`], { stdio: 'pipe' });
      execFileSync('umoci', ['unpack', '--rootless', '--image', `${join(work, 'lay')}:x`, join(work, 'bundle')], { stdio: 'pipe' });
      const rootfs = join(work, 'bundle/rootfs');
      expect(readFileSync(join(rootfs, 'added'), 'utf8')).toBe('added\n');
      expect(existsSync(join(rootfs, 'etc/hosts'))).toBe(false);
      expect(existsSync(join(rootfs, 'etc/passwd'))).toBe(true);
      expect(readdirSync(join(rootfs, 'usr'))).toEqual(['only']);
      expect(statSync(join(rootfs, 'home/u/f')).mode & 0o7777).toBe(0o4750);
      expect(lstatSync(join(rootfs, 'fifo')).isFIFO()).toBe(true);
      const config = JSON.parse(execFileSync('skopeo', ['inspect', '--config', '--tls-verify=false', `docker://127.0.0.1:${port}/hutch/committed:1`], { encoding: 'utf8' }));
      expect(config.config.Cmd).toEqual(['cat', '/added']);
      expect(config.history.filter((h: { empty_layer?: boolean }) => !h.empty_layer)).toHaveLength(config.rootfs.diff_ids.length);
    } finally {
      registry.kill('SIGTERM');
      if (registry.exitCode === null) await new Promise((r) => registry.once('exit', r));
      rmSync(work, { recursive: true, force: true });
    }
  });
});

// Faults injected at host-side steps, on the real kernel (nothing mocked): a bad cgroup
// parent, a mount source that is gone, EMFILE, a layer deleted under a running sandbox, a
// full store disk, the registry dying mid-pull. Each gives a typed HutchError, leaves
// nothing behind, and hutch stays usable.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, request, type Server } from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HutchError, ImageStore, Sandbox } from '../../lib/index.js';
import { tarBuffer, type TarEntry } from '../../lib/image/tarwriter.js';
import { isRoot, needs } from '../helpers/require.js';
import { ROOT, cgroupsUnder, entries, fdCount, privateCgroupParent, removeCgroupParent, rmRoot, tempRoot } from '../helpers/reliability.js';

const skip = needs(isRoot && readFileSync('/proc/self/mountinfo', 'utf8').includes('cgroup'), 'root and cgroups are needed');
const parent = privateCgroupParent('faults');
const roots: string[] = [];
function newStore(tag: string): ImageStore {
  const r = tempRoot(`faults-${tag}`);
  roots.push(r);
  return new ImageStore({ root: r });
}
afterAll(async () => {
  await Sandbox.settle(); // background teardowns of Sandbox.run still use the store
  for (const r of roots) rmRoot(r);
  removeCgroupParent(parent);
});

async function typedError(p: Promise<unknown>): Promise<HutchError> {
  const e = await p.then(() => undefined, (x: unknown) => x);
  // Soft: the checks after it (nothing left, still usable) still run and report.
  expect.soft(HutchError.is(e), `expected a HutchError, got ${String(e)}`).toBe(true);
  expect(e).toBeInstanceOf(Error);
  return e as HutchError;
}

/** Nothing of a failed create remains: no cgroup, no sandbox record, no temp file. */
function clean(store: ImageStore): void {
  expect(cgroupsUnder(parent)).toEqual([]);
  expect(entries(store.root, 'sandboxes')).toEqual([]);
  expect(entries(store.root, 'tmp').filter((n) => n !== 'trash')).toEqual([]);
}

async function usable(store: ImageStore): Promise<void> {
  const r = await Sandbox.run({ image: 'busybox', store, command: ['echo', 'ok'], encoding: 'utf8' });
  expect(r.stdout).toBe('ok\n');
  await Sandbox.settle(); // run's teardown ends in the background
  clean(store);
}

describe.skipIf(skip)('faults at host-side steps', () => {
  it('an invalid or unwritable HUTCH_CGROUP_PARENT', async () => {
    const store = newStore('cg');
    await usable(store);
    try {
      for (const bad of ['relative/path', '/a/../b', '/sys/fs/cgroup/memory']) {
        process.env.HUTCH_CGROUP_PARENT = bad;
        const e = await typedError(Sandbox.create({ image: 'busybox', store }));
        expect(e.code, e.message).toBe('EINVAL');
        expect(e.message).toContain('HUTCH_CGROUP_PARENT');
        expect(e.message).toContain(JSON.stringify(bad));
      }
      // Below a cgroupfs file: its parent "directory" does not exist.
      process.env.HUTCH_CGROUP_PARENT = `${parent}-file/cgroup.procs/x`;
      const below = await typedError(Sandbox.create({ image: 'busybox', store }));
      expect(below, below.message).toMatchObject({ code: 'ESETUP', step: 'cgroup', errno: 'ENOENT', path: expect.stringMatching(new RegExp(`^/sys/fs/cgroup/.*${parent}-file/cgroup\\.procs/x$`)) });
      // A parent that exists as a file in cgroupfs (cgroup.procs) cannot hold sandboxes.
      process.env.HUTCH_CGROUP_PARENT = `${parent}/cgroup.procs`;
      const file = await typedError(Sandbox.create({ image: 'busybox', store }));
      expect(file, file.message).toMatchObject({ code: 'ESETUP', step: 'cgroup', errno: 'ENOTDIR', path: expect.stringMatching(new RegExp(`^/sys/fs/cgroup/.*${parent}/cgroup\\.procs/([0-9a-f]+|\\.shared)$`)) });
    } finally {
      process.env.HUTCH_CGROUP_PARENT = parent;
    }
    clean(store);
    await usable(store);
  });

  it('a mount source that vanished', async () => {
    const store = newStore('mnt');
    const src = mkdtempSync(join(tmpdir(), 'hutch-rel-vanish-'));
    rmSync(src, { recursive: true });
    const e = await typedError(Sandbox.create({ image: 'busybox', store, mounts: [{ source: src, target: '/data' }] }));
    expect(e).toMatchObject({ code: 'ESETUP', step: 'bind', errno: 'ENOENT', path: src });
    expect(e.message).toContain(src);
    clean(store);
    // Vanishing between creates: the ones before work, every one after fails typed, naming it.
    const src2 = mkdtempSync(join(tmpdir(), 'hutch-rel-vanish-'));
    const batch = () =>
      Promise.allSettled(
        Array.from({ length: 4 }, async () => {
          const sb = await Sandbox.create({ image: 'busybox', store, mounts: [{ source: src2, target: '/data' }] });
          await sb.destroy();
        }),
      );
    expect((await batch()).map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled', 'fulfilled']);
    rmSync(src2, { recursive: true });
    const after = await batch();
    for (const r of after) {
      expect(r.status).toBe('rejected');
      if (r.status === 'rejected') expect(r.reason).toMatchObject({ code: 'ESETUP', step: 'bind', errno: 'ENOENT', path: src2 });
    }
    clean(store);
    await usable(store);
  });

  it('EMFILE: a process out of file descriptors gets a typed error and recovers', () => {
    const store = newStore('emfile');
    const script = `
      import { Sandbox, ImageStore, HutchError } from ${JSON.stringify(join(ROOT, 'dist', 'lib', 'index.js'))};
      import { openSync, closeSync } from 'node:fs';
      const store = new ImageStore({ root: ${JSON.stringify(store.root)} });
      await (await Sandbox.create({ image: 'busybox', store })).destroy();
      const held = [];
      try { for (;;) held.push(openSync('/dev/null', 'r')); } catch {}
      for (let i = 0; i < 3; i++) closeSync(held.pop());
      const out = {};
      try { await Sandbox.create({ image: 'busybox', store }); out.create = 'ok'; } catch (e) { out.create = HutchError.is(e) ? e.code + ' ' + e.errno : 'untyped: ' + e; }
      for (const fd of held) closeSync(fd);
      const sb = await Sandbox.create({ image: 'busybox', store });
      out.after = (await sb.exec(['echo', 'ok'], { encoding: 'utf8' })).stdout;
      await sb.destroy();
      console.log(JSON.stringify(out));
    `;
    const r = spawnSync('prlimit', ['--nofile=256', process.execPath, '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000, env: { ...process.env } });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { create: string; after: string };
    // Three free fds are not enough for a create (pidfd, control socket, trees...): typed, not a crash.
    expect(out.create).toBe('ESETUP EMFILE');
    expect(out.after).toBe('ok\n');
    clean(store);
  });

  it('a layer deleted under a running sandbox: exec and destroy still behave', async () => {
    const store = newStore('layer');
    const dir = mkdtempSync(join(tmpdir(), 'hutch-rel-layer-'));
    roots.push(dir);
    const busybox = readFileSync('/bin/busybox');
    const files: TarEntry[] = [
      { path: 'bin', type: 'dir', mode: 0o755 },
      { path: 'bin/busybox', type: 'file', mode: 0o755, data: busybox },
      { path: 'bin/sh', type: 'symlink', linkpath: 'busybox' },
      { path: 'bin/cat', type: 'symlink', linkpath: 'busybox' },
      { path: 'data', type: 'dir', mode: 0o755 },
      { path: 'data/f', type: 'file', mode: 0o644, data: 'layer\n' },
    ];
    writeFileSync(join(dir, 'l.tar'), tarBuffer(files));
    const img = await store.import(join(dir, 'l.tar'), { tag: 'victim' });
    const sb = await Sandbox.create({ image: 'victim', store });
    expect((await sb.exec(['cat', '/data/f'], { encoding: 'utf8' })).stdout).toBe('layer\n');
    rmSync(join(store.root, 'layers', img.layers[0]!.slice(7)), { recursive: true, force: true });
    // Whatever the overlay shows now, each call ends in a result or a typed error.
    for (const cmd of [['cat', '/data/f'], ['/bin/sh', '-c', 'echo hi'], ['true']]) {
      const r = await sb.exec(cmd, { encoding: 'utf8', timeoutMs: 5000 }).catch((e: unknown) => {
        expect(HutchError.is(e), String(e)).toBe(true);
        return null;
      });
      if (r) expect(['exit', 'signal']).toContain(r.reason);
    }
    await sb.destroy();
    const layer = join(store.root, 'layers', img.layers[0]!.slice(7));
    // Within a second of the last create the image's resolution is cached (lib/plan.ts
    // resolveCached): the missing layer is found when its tree is opened. Either way it is named.
    const e = await typedError(Sandbox.create({ image: 'victim', store }));
    if (e.code === 'ESETUP') expect(e, e.message).toMatchObject({ step: 'layers', errno: 'ENOENT', path: layer });
    else expect(e, e.message).toMatchObject({ code: 'ENOIMAGE', message: expect.stringContaining(img.layers[0]!.slice(7)) });
    // Past the cache's second, the store itself sees the layer gone before anything is made.
    await new Promise((r) => setTimeout(r, 1100));
    const late = await typedError(Sandbox.create({ image: 'victim', store }));
    expect(late, late.message).toMatchObject({ code: 'ENOIMAGE', message: expect.stringContaining(`lacks its layer ${img.layers[0]!.slice(7)}`) });
    await store.remove('victim');
    clean(store);
    await usable(store);
  });

  it('a full store disk', async () => {
    const mnt = mkdtempSync(join(tmpdir(), 'rel-full-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m,mode=0755', 'tmpfs', mnt]);
    try {
      const store = new ImageStore({ root: join(mnt, 'store') });
      await usable(store); // the busybox builtin fits
      const files: TarEntry[] = [{ path: 'big', type: 'dir', mode: 0o755 }];
      for (let i = 0; i < 8; i++) files.push({ path: `big/f${i}`, type: 'file', mode: 0o644, data: randomBytes(1 << 20) });
      const dir = mkdtempSync(join(tmpdir(), 'hutch-rel-full-arch-'));
      roots.push(dir);
      writeFileSync(join(dir, 'big.tar'), tarBuffer(files));
      const fds = fdCount();
      const e = await typedError(store.import(join(dir, 'big.tar'), { tag: 'big' }));
      expect(e).toMatchObject({ code: 'ESTORE', errno: 'ENOSPC' });
      expect(e.message).toContain(`the store ${store.root} could not be written (ENOSPC at ${store.root}/`);
      expect(e.message).toContain("the store's disk is full");
      // A read stream destroyed on the error closes its fd asynchronously (fs.close in the pool).
      await new Promise((r) => setTimeout(r, 100));
      expect(fdCount()).toBe(fds);
      expect(entries(store.root, 'tmp').filter((n) => n !== 'trash')).toEqual([]);
      expect((await typedError(store.get('big'))).code).toBe('ENOIMAGE');
      // Still usable: a small import and a sandbox.
      writeFileSync(join(dir, 'small.tar'), tarBuffer([{ path: 'x', type: 'file', mode: 0o644, data: 'x' }]));
      await store.import(join(dir, 'small.tar'), { tag: 'small' });
      await store.remove('small');
      await usable(store);
    } finally {
      // A destroyed sandbox's mount namespace (which held a copy of this mount) is freed by the
      // kernel shortly after its last process: retry, then detach lazily.
      for (let i = 0; ; i++) {
        try {
          execFileSync('umount', [mnt], { stdio: 'pipe' });
          break;
        } catch (e) {
          if (i >= 40) {
            execFileSync('umount', ['-l', mnt]);
            break;
          }
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      rmSync(mnt, { recursive: true, force: true });
    }
  });

  const hasRegistry = spawnSync('sh', ['-c', 'command -v docker-registry']).status === 0;
  it.skipIf(!hasRegistry)('the registry dying in the middle of a pull', async () => {
    const work = mkdtempSync(join(tmpdir(), 'hutch-rel-reg-'));
    roots.push(work);
    const free = async (): Promise<number> => {
      const s = createServer();
      await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
      const p = (s.address() as { port: number }).port;
      await new Promise((r) => s.close(r));
      return p;
    };
    const regPort = await free();
    writeFileSync(join(work, 'registry.yml'), `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${join(work, 'registry')}\nhttp:\n  addr: 127.0.0.1:${regPort}\n`);
    const startRegistry = async (): Promise<ChildProcess> => {
      const reg = spawn('docker-registry', ['serve', join(work, 'registry.yml')], { stdio: 'ignore' });
      for (let i = 0; ; i++) {
        if (await fetch(`http://127.0.0.1:${regPort}/v2/`).then((r) => r.ok, () => false)) return reg;
        if (i > 100) throw new Error('docker-registry did not start');
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    let registry = await startRegistry();
    let proxy: Server | undefined;
    try {
      // An image with an 8 MiB incompressible layer, pushed by hutch itself.
      const src = newStore('reg-src');
      const files: TarEntry[] = [{ path: 'blob', type: 'dir', mode: 0o755 }];
      for (let i = 0; i < 8; i++) files.push({ path: `blob/f${i}`, type: 'file', mode: 0o644, data: randomBytes(1 << 20) });
      writeFileSync(join(work, 'img.tar'), tarBuffer(files));
      const img = await src.import(join(work, 'img.tar'), { tag: 'big' });
      await src.push(img, `127.0.0.1:${regPort}/rel/big:1`, { insecure: true });

      // A proxy that, once a layer is half sent, kills the registry and cuts the connection.
      const proxyPort = await free();
      proxy = createServer((req, res) => {
        const up = request({ host: '127.0.0.1', port: regPort, method: req.method, path: req.url, headers: req.headers }, (ur) => {
          res.writeHead(ur.statusCode ?? 502, ur.headers);
          let sent = 0;
          ur.on('data', (c: Buffer) => {
            sent += c.length;
            res.write(c);
            if (sent > 1 << 20 && req.url?.includes('/blobs/')) {
              registry.kill('SIGKILL');
              res.socket?.destroy();
              ur.destroy();
            }
          });
          ur.on('end', () => res.end());
          ur.on('error', () => res.socket?.destroy());
        });
        up.on('error', () => res.socket?.destroy());
        req.pipe(up);
      });
      await new Promise<void>((r) => proxy!.listen(proxyPort, '127.0.0.1', r));
      const dst = newStore('reg-dst');
      const e = await typedError(dst.pull(`127.0.0.1:${proxyPort}/rel/big:1`, { insecure: true }));
      expect(e.code, e.message).toBe('EREGISTRY');
      expect(entries(dst.root, 'tmp').filter((n) => n !== 'trash')).toEqual([]);
      expect(entries(dst.root, 'layers')).toEqual([]);
      // The registry is down now: a pull fails fast and typed.
      const down = await typedError(dst.pull(`127.0.0.1:${regPort}/rel/big:1`, { insecure: true }));
      expect(down.code).toBe('EREGISTRY');
      // Back up: the same pull completes, and the store works.
      registry = await startRegistry();
      const got = await dst.pull(`127.0.0.1:${regPort}/rel/big:1`, { insecure: true });
      expect(got.id).toBe(img.id);
      await usable(dst);
    } finally {
      proxy?.close();
      registry.kill('SIGKILL');
    }
  }, 90_000);
});




// Security hole 7: the image's User is resolved through one scoped view of the image
// (lib/image/view.ts), never by a host path read. Layers whose etc/passwd is a symlink to a
// host FIFO, to /dev/zero, to a host file with a recognizable user line, a `../` escape, a
// FIFO in the image, a huge passwd: each gives the in-image answer or a HutchError naming the
// image and user, while a timer keeps firing, and no host data is used. Whiteouts, opaque
// directories, in-image symlinks and /etc/group are honoured, as overlay shows the tree.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HutchError } from '../../lib/errors.js';
import { ImageStore, Sandbox } from '../../lib/index.js';
import { ImageView } from '../../lib/image/view.js';
import { tarBuffer, type TarEntry } from '../../lib/image/tarwriter.js';
import { native } from '../../lib/native.js';
import { imageUser, prepareImageUser } from '../../lib/plan/index.js';

const work = mkdtempSync(join(tmpdir(), 'hutch-img-view-'));
const store = new ImageStore({ root: join(work, 'store') });
afterAll(async () => {
  await Sandbox.settle();
  rmSync(work, { recursive: true, force: true });
});

// Host objects the layers point at.
const hostFifo = join(work, 'host-fifo');
execFileSync('mkfifo', [hostFifo]);
const hostPasswd = join(work, 'host-passwd');
writeFileSync(hostPasswd, 'hostonly:x:4242:4343:leaked:/:/bin/sh\n');

const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const dir = (path: string): TarEntry => ({ path, type: 'dir', mode: 0o755 });
const file = (path: string, data: string | Buffer): TarEntry => ({ path, type: 'file', mode: 0o644, data });
const link = (path: string, linkpath: string): TarEntry => ({ path, type: 'symlink', linkpath });
const PASSWD = 'root:x:0:0:root:/root:/bin/sh\napp:x:100:101:app:/home/app:/bin/sh\n';
const GROUP = 'root:x:0:\nstaff:x:300:app\n';
const busybox = readFileSync('/bin/busybox');
let n = 0;

/** An image of these layers (bottom first) with config User `user`, tagged view-<n>. */
async function image(layers: TarEntry[][], user: string) {
  const d = join(work, `oci-${n}`);
  mkdirSync(join(d, 'blobs/sha256'), { recursive: true });
  const put = (b: Buffer | string) => {
    writeFileSync(join(d, 'blobs/sha256', sha(b)), b);
    return { digest: `sha256:${sha(b)}`, size: Buffer.byteLength(b) };
  };
  const tars = layers.map((l) => tarBuffer(l));
  const config = JSON.stringify({ architecture: 'amd64', os: 'linux', config: { User: user, Env: ['PATH=/bin'] }, rootfs: { type: 'layers', diff_ids: tars.map((t) => `sha256:${sha(t)}`) } });
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...put(config) },
    layers: tars.map((t) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...put(t) })),
  });
  writeFileSync(join(d, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...put(manifest) }] }));
  writeFileSync(join(d, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  const tag = `view-${n++}`;
  await store.import(d, { tag });
  return tag;
}

/**
 * Resolves the image's User as Sandbox.create does, with a timer ticking every 5 ms: gives the
 * ids or the HutchError, and the longest gap between ticks (the event loop's longest stall).
 */
async function resolveUser(tag: string): Promise<{ ids?: { uid: number; gid: number }; error?: HutchError; ticks: number; stall: number }> {
  let ticks = 0;
  let last = performance.now();
  let stall = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    stall = Math.max(stall, now - last);
    last = now;
    ticks++;
  }, 5);
  try {
    const r = await store.resolve(tag);
    await prepareImageUser(r);
    // Keep the timer for a few more ticks: the work is done, a stalled loop would show here too.
    await new Promise((res) => setTimeout(res, 30));
    try {
      return { ids: imageUser(r), ticks, stall };
    } catch (e) {
      expect(HutchError.is(e), String(e)).toBe(true);
      return { error: e as HutchError, ticks, stall };
    }
  } finally {
    clearInterval(timer);
  }
}

function refusedClearly(r: Awaited<ReturnType<typeof resolveUser>>, tag: string, user: string, code: 'EINVAL' | 'EBADIMAGE', what: RegExp) {
  expect(r.ids).toBeUndefined();
  expect(r.error?.code, r.error?.message).toBe(code);
  expect(r.error!.message).toContain(tag);
  expect(r.error!.message).toContain(user);
  expect(r.error!.message).toMatch(what);
  expect(r.error!.message).not.toMatch(/4242|leaked/);
  expect(r.ticks).toBeGreaterThan(0);
  expect(r.stall).toBeLessThan(1000);
}

describe('the image User through the scoped view: hostile layers', () => {
  it('etc/passwd -> a host FIFO (absolute and ../ escape): resolved inside the image, not found, no stall', async () => {
    for (const target of [hostFifo, `../../../../../../../..${hostFifo}`]) {
      const tag = await image([[dir('etc'), link('etc/passwd', target)]], 'app');
      refusedClearly(await resolveUser(tag), tag, 'app', 'EINVAL', /no user "app" in the image's \/etc\/passwd/);
    }
  });

  it('etc/passwd -> /dev/zero: not the host device (no endless read)', async () => {
    const tag = await image([[dir('etc'), link('etc/passwd', '/dev/zero')]], 'app');
    refusedClearly(await resolveUser(tag), tag, 'app', 'EINVAL', /no user/);
  });

  it('etc/passwd -> /dev/zero where the image has a FIFO at dev/zero: refused as a FIFO, never opened for a blocking read', async () => {
    const tag = await image([[dir('etc'), dir('dev'), { path: 'dev/zero', type: 'fifo', mode: 0o644 }, link('etc/passwd', '/dev/zero')]], 'app');
    refusedClearly(await resolveUser(tag), tag, 'app', 'EBADIMAGE', /\/etc\/passwd \(\/dev\/zero in the image\) is a FIFO/);
  });

  it('etc/passwd -> a host file with the wanted user line (absolute, relative escape): no host data is used', async () => {
    for (const target of [hostPasswd, `../../../../../../../../../..${hostPasswd}`]) {
      const tag = await image([[dir('etc'), link('etc/passwd', target)]], 'hostonly');
      refusedClearly(await resolveUser(tag), tag, 'hostonly', 'EINVAL', /no user "hostonly"/);
    }
  });

  it('etc is a symlink to a host directory: the walk stays in the image', async () => {
    const tag = await image([[link('etc', work)]], 'hostonly');
    refusedClearly(await resolveUser(tag), tag, 'hostonly', 'EINVAL', /no user/);
  });

  it('a FIFO at etc/passwd: EBADIMAGE, no stall', async () => {
    const tag = await image([[dir('etc'), { path: 'etc/passwd', type: 'fifo', mode: 0o644 }]], 'app');
    refusedClearly(await resolveUser(tag), tag, 'app', 'EBADIMAGE', /is a FIFO/);
  });

  it('a huge /etc/passwd (5 MiB): EBADIMAGE naming the cap', async () => {
    const huge = Buffer.alloc(5 * 1024 * 1024, 'x');
    const tag = await image([[dir('etc'), file('etc/passwd', huge)]], 'app');
    refusedClearly(await resolveUser(tag), tag, 'app', 'EBADIMAGE', /5242880 bytes, more than/);
  });

  it('a symlink loop: EBADIMAGE, no stall', async () => {
    const tag = await image([[dir('etc'), link('etc/passwd', 'passwd2'), link('etc/passwd2', 'passwd')]], 'app');
    refusedClearly(await resolveUser(tag), tag, 'app', 'EBADIMAGE', /too many symlinks/);
  });

  it('the addon opens a host FIFO with O_NONBLOCK beneath its dir and reads nothing of it', async () => {
    const r = await native().viewRead(work, 'host-fifo', 1024);
    expect(r).toMatchObject({ mode: expect.any(Number) });
    expect(((r as { mode: number }).mode & 0o170000) === 0o010000).toBe(true);
    expect((r as { data?: Buffer }).data).toBeUndefined();
    // No symlink, no `..`: refused by openat2 itself.
    expect(await native().viewRead(work, '../etc/passwd', 1024)).toMatchObject({ errno: 18 /* EXDEV */ });
    writeFileSync(join(work, 'lnk-target'), 'x');
    execFileSync('ln', ['-s', 'lnk-target', join(work, 'lnk')]);
    expect(await native().viewRead(work, 'lnk', 1024)).toMatchObject({ errno: 40 /* ELOOP */ });
  });
});

describe('the image User through the scoped view: overlay semantics', () => {
  it('in-image answers: a name, name:group (/etc/group), name:gid, an in-image symlink', async () => {
    const base = [dir('etc'), file('etc/passwd', PASSWD), file('etc/group', GROUP)];
    expect((await resolveUser(await image([base], 'app'))).ids).toEqual({ uid: 100, gid: 101 });
    expect((await resolveUser(await image([base], 'app:staff'))).ids).toEqual({ uid: 100, gid: 300 });
    expect((await resolveUser(await image([base], 'app:7'))).ids).toEqual({ uid: 100, gid: 7 });
    const r = await resolveUser(await image([base], 'app:nogroup'));
    expect(r.error?.code).toBe('EINVAL');
    expect(r.error?.message).toMatch(/no group "nogroup" in the image's \/etc\/group/);
    const viaLink = [dir('etc'), dir('usr'), file('usr/pw', PASSWD), link('etc/passwd', '../../../usr/pw')];
    expect((await resolveUser(await image([viaLink], 'app'))).ids).toEqual({ uid: 100, gid: 101 });
  });

  it('a whiteout hides the passwd below; a later layer brings one back', async () => {
    const l1 = [dir('etc'), file('etc/passwd', PASSWD)];
    const l2 = [dir('etc'), file('etc/.wh.passwd', '')];
    const gone = await image([l1, l2], 'app');
    refusedClearly(await resolveUser(gone), gone, 'app', 'EINVAL', /no user "app"/);
    const l3 = [dir('etc'), file('etc/passwd', 'app:x:200:201::/:/bin/sh\n')];
    expect((await resolveUser(await image([l1, l2, l3], 'app'))).ids).toEqual({ uid: 200, gid: 201 });
    // A whited-out etc hides the whole directory.
    const noEtc = await image([l1, [file('.wh.etc', '')]], 'app');
    expect((await resolveUser(noEtc)).error?.code).toBe('EINVAL');
  });

  it('an opaque directory hides the layers below; without the mark they merge', async () => {
    const l1 = [dir('etc'), file('etc/passwd', PASSWD), file('etc/group', GROUP)];
    const opaque = await image([l1, [dir('etc'), file('etc/.wh..wh..opq', ''), file('etc/group', GROUP)]], 'app:staff');
    refusedClearly(await resolveUser(opaque), opaque, 'app:staff', 'EINVAL', /no user "app"/);
    const merged = await image([l1, [dir('etc'), file('etc/group', 'staff:x:301:\n')]], 'app:staff');
    expect((await resolveUser(merged)).ids).toEqual({ uid: 100, gid: 301 });
  });

  it('the view itself: lookup of a whited-out name is null; readFile of a missing file is null', async () => {
    const tag = await image([[dir('etc'), file('etc/a', 'a'), file('etc/b', 'b')], [dir('etc'), file('etc/.wh.a', '')]], '0');
    const r = await store.resolve(tag);
    const view = new ImageView(r.lowerdirs.map((h) => join(r.layersDir, h)), tag);
    expect(await view.lookup(['etc', 'a'])).toBeNull();
    expect((await view.readFile('/etc/b'))?.toString()).toBe('b');
    expect(await view.readFile('/etc/none')).toBeNull();
  });
});

describe('end to end: Sandbox.run as the image User', () => {
  const bb = [dir('bin'), { path: 'bin/busybox', type: 'file', mode: 0o755, data: busybox } as TarEntry];

  it('runs as the in-image user; a hostile passwd gives EINVAL at run, not host data', async () => {
    const good = await image([bb, [dir('etc'), file('etc/passwd', PASSWD), file('etc/group', GROUP)]], 'app:staff');
    const r = await Sandbox.run({ image: good, store, command: ['/bin/busybox', 'id', '-u'], encoding: 'utf8' });
    expect((r.stdout as string).trim()).toBe('100');
    const bad = await image([bb, [dir('etc'), link('etc/passwd', hostPasswd)]], 'hostonly');
    let err: unknown;
    try {
      await Sandbox.run({ image: bad, store, command: ['/bin/busybox', 'id', '-u'], encoding: 'utf8' });
    } catch (e) {
      err = e;
    }
    expect(HutchError.is(err) && err.code).toBe('EINVAL');
    expect((err as Error).message).toContain('hostonly');
    // An explicit user needs no lookup at all.
    const ok = await Sandbox.run({ image: bad, store, user: '5:5', command: ['/bin/busybox', 'id', '-u'], encoding: 'utf8' });
    expect((ok.stdout as string).trim()).toBe('5');
  }, 60_000);
});

// Registry pull and push against a real registry: Debian's docker-registry, started by this
// file on a loopback port and stopped at the end. Images are put there by skopeo (an
// independent producer) and what hutch pushes is read back by skopeo. Auth, errors and
// dropped connections go through a small proxy in front of the registry, also on loopback.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createServer, request, type Server } from 'node:http';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HutchError } from '../../lib/errors.js';
import { ImageStore } from '../../lib/image/store.js';
import { tarBuffer } from '../../lib/image/tarwriter.js';
import { needs } from '../helpers/require.js';
import { removeStore } from '../helpers/store.js';

const has = (c: string) => spawnSync('sh', ['-c', `command -v ${c}`]).status === 0;
const skip = needs(has('docker-registry') && has('skopeo') && has('umoci') && existsSync('/bin/busybox'), 'docker-registry, skopeo, umoci and busybox-static are needed (apt-get install docker-registry skopeo umoci busybox-static)');

const work = mkdtempSync(join(tmpdir(), 'hutch-img-reg-'));
let registry: ChildProcess | undefined;
let regPort = 0;
let proxy: Server | undefined;
let proxyPort = 0;
let proxyMode: 'pass' | 'basic' | 'token' | 'fail' | 'drop' | 'corrupt' = 'pass';
const USER = { username: 'hutch', password: 's3cret' };
const stores: ImageStore[] = [];
function newStore(): ImageStore {
  const s = new ImageStore({ root: join(work, `store-${stores.length}`) });
  stores.push(s);
  return s;
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

const basicOk = (h?: string) => h === `Basic ${Buffer.from(`${USER.username}:${USER.password}`).toString('base64')}`;

/** Forwards to the registry after applying proxyMode. */
function startProxy(): Promise<void> {
  proxy = createServer((req, res) => {
    const auth = req.headers.authorization;
    if (req.url?.startsWith('/token')) {
      if (!basicOk(auth)) return void res.writeHead(401).end();
      return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: 'tok-123' }));
    }
    if (proxyMode === 'basic' && !basicOk(auth)) {
      return void res.writeHead(401, { 'www-authenticate': 'Basic realm="test"' }).end();
    }
    if (proxyMode === 'token' && auth !== 'Bearer tok-123') {
      return void res.writeHead(401, { 'www-authenticate': `Bearer realm="http://127.0.0.1:${proxyPort}/token",service="test",scope="repository:x:pull"` }).end();
    }
    if (proxyMode === 'fail' && req.url?.includes('/blobs/')) return void res.writeHead(503).end('down for maintenance');
    const up = request({ host: '127.0.0.1', port: regPort, method: req.method, path: req.url, headers: req.headers }, (ur) => {
      const isBlobGet = req.method === 'GET' && req.url?.includes('/blobs/sha256:') && ur.statusCode === 200;
      if (isBlobGet && (proxyMode === 'drop' || proxyMode === 'corrupt')) {
        const chunks: Buffer[] = [];
        ur.on('data', (c: Buffer) => chunks.push(c));
        ur.on('end', () => {
          const body = Buffer.concat(chunks);
          if (body.length < 300) {
            // Small blobs (configs) pass; layers are damaged.
            res.writeHead(200, ur.headers).end(body);
          } else if (proxyMode === 'corrupt') {
            body[body.length >> 1] ^= 0xff;
            res.writeHead(200, ur.headers).end(body);
          } else {
            res.writeHead(200, ur.headers);
            res.write(body.subarray(0, body.length >> 1), () => res.socket?.destroy());
          }
        });
        return;
      }
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      ur.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  return new Promise((r) => proxy!.listen(proxyPort, '127.0.0.1', () => r()));
}

beforeAll(async () => {
  if (skip) return;
  regPort = await freePort();
  proxyPort = await freePort();
  writeFileSync(
    join(work, 'registry.yml'),
    `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${join(work, 'registry')}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:${regPort}\n`,
  );
  registry = spawn('docker-registry', ['serve', join(work, 'registry.yml')], { stdio: 'ignore' });
  for (let i = 0; ; i++) {
    const ok = await fetch(`http://127.0.0.1:${regPort}/v2/`).then((r) => r.ok, () => false);
    if (ok) break;
    if (i > 100) throw new Error('docker-registry did not start');
    await new Promise((r) => setTimeout(r, 50));
  }
  await startProxy();
  // An image with two layers (the second whites out a file) from umoci, put there by skopeo.
  const dir = join(work, 'umoci');
  mkdirSync(dir);
  const run = (args: string[]) => execFileSync('umoci', args, { cwd: dir, stdio: 'pipe' });
  run(['init', '--layout', 'lay']);
  run(['new', '--image', 'lay:latest']);
  run(['unpack', ...(process.getuid?.() === 0 ? [] : ['--rootless']), '--image', 'lay:latest', 'bundle']);
  mkdirSync(join(dir, 'bundle/rootfs/bin'));
  mkdirSync(join(dir, 'bundle/rootfs/etc'));
  writeFileSync(join(dir, 'bundle/rootfs/bin/busybox'), readFileSync('/bin/busybox'), { mode: 0o755 });
  symlinkSync('busybox', join(dir, 'bundle/rootfs/bin/sh'));
  writeFileSync(join(dir, 'bundle/rootfs/etc/gone'), 'x');
  run(['repack', '--refresh-bundle', '--image', 'lay:latest', 'bundle']);
  rmSync(join(dir, 'bundle/rootfs/etc/gone'));
  writeFileSync(join(dir, 'bundle/rootfs/etc/hello'), 'hello\n');
  run(['repack', '--image', 'lay:latest', 'bundle']);
  run(['config', '--image', 'lay:latest', '--config.cmd', '/bin/sh', '--config.env', 'FROM_SKOPEO=1']);
  execFileSync('skopeo', ['copy', '-q', '--dest-tls-verify=false', `oci:${join(dir, 'lay')}:latest`, `docker://127.0.0.1:${regPort}/test/app:1`], { stdio: 'pipe' });
}, 120_000);

afterAll(async () => {
  registry?.kill('SIGTERM');
  if (registry && registry.exitCode === null) await new Promise((r) => registry!.once('exit', r));
  if (proxy) await new Promise((r) => proxy!.close(r));
  removeStore(work); // its stores' layers may belong to a user's subordinate ids
});

async function regError(p: Promise<unknown>): Promise<HutchError & { status?: number; reference?: string }> {
  try {
    await p;
  } catch (e) {
    expect(HutchError.is(e), String(e)).toBe(true);
    return e as HutchError & { status?: number };
  }
  throw new Error('expected a failure');
}

function nothingLeft(store: ImageStore) {
  for (const d of ['images', 'layers']) expect(readdirSync(join(store.root, d))).toEqual([]);
  expect(existsSync(join(store.root, 'tags.json'))).toBe(false);
  expect(readdirSync(join(store.root, 'tmp')).filter((n) => n !== 'trash')).toEqual([]);
}

describe.skipIf(skip)('registry', () => {
  it('pulls what skopeo pushed: layers, whiteout, config, tag, progress', async () => {
    proxyMode = 'pass';
    const store = newStore();
    const ref = `127.0.0.1:${regPort}/test/app:1`;
    const progress: number[] = [];
    const img = await store.pull(ref, { insecure: true, onProgress: (p) => progress.push(p.current) });
    expect(img.tags).toEqual([ref]);
    expect(img.layers).toHaveLength(2);
    expect(img.config.cmd).toEqual(['/bin/sh']);
    expect(img.config.env).toContain('FROM_SKOPEO=1');
    const top = join(store.root, 'layers', img.layers[1]!.slice(7));
    expect(readFileSync(join(top, 'etc/hello'), 'utf8')).toBe('hello\n');
    expect(progress.length).toBeGreaterThan(0);
    expect(Math.max(...progress)).toBeGreaterThan(1000);
    // The same image from the OCI layout gives the same id.
    const again = await newStore().import(join(work, 'umoci/lay'));
    expect(again.id).toBe(img.id);
  });

  it('pushes an imported image and the builtin busybox; skopeo reads them back; a re-import matches', async () => {
    proxyMode = 'pass';
    const store = newStore();
    const img = await store.pull(`127.0.0.1:${regPort}/test/app:1`, { insecure: true });
    await store.push(img, `127.0.0.1:${regPort}/pushed/app:v2`, { insecure: true });
    await store.push('busybox', `127.0.0.1:${regPort}/pushed/busybox:latest`, { insecure: true });
    for (const [name, want] of [['pushed/app:v2', img], ['pushed/busybox:latest', await store.get('busybox')]] as const) {
      const out = join(work, `back-${name.replace(/[/:]/g, '-')}`);
      execFileSync('skopeo', ['copy', '-q', '--src-tls-verify=false', `docker://127.0.0.1:${regPort}/${name}`, `oci:${out}:x`], { stdio: 'pipe' });
      const back = await newStore().import(out);
      expect(back.id).toBe(want.id);
      expect(back.layers).toEqual(want.layers);
    }
    const inspect = JSON.parse(execFileSync('skopeo', ['inspect', '--tls-verify=false', `docker://127.0.0.1:${regPort}/pushed/busybox:latest`], { encoding: 'utf8' })) as { Os: string };
    expect(inspect.Os).toBe('linux');
  });

  it('picks linux/amd64 (this host) from a manifest list', async () => {
    proxyMode = 'pass';
    const dir = join(work, 'multi');
    mkdirSync(join(dir, 'blobs/sha256'), { recursive: true });
    const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
    const put = (b: Buffer | string) => {
      writeFileSync(join(dir, 'blobs/sha256', sha(b)), b);
      return { digest: `sha256:${sha(b)}`, size: Buffer.byteLength(b) };
    };
    const arch = process.arch === 'arm64' ? 'arm64' : 'amd64';
    const manifests = ['amd64', 'arm64', 's390x'].map((a) => {
      const layer = tarBuffer([{ path: 'arch', type: 'file', data: a }]);
      const config = JSON.stringify({ architecture: a, os: 'linux', config: { Env: [`ARCH=${a}`] }, rootfs: { type: 'layers', diff_ids: [`sha256:${sha(layer)}`] } });
      const gz = gzipSync(layer);
      const m = JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...put(config) },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...put(gz) }],
      });
      return { mediaType: 'application/vnd.oci.image.manifest.v1+json', ...put(m), platform: { os: 'linux', architecture: a } };
    });
    const index = JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests });
    writeFileSync(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.index.v1+json', ...put(index), annotations: { 'org.opencontainers.image.ref.name': 'multi' } }] }));
    writeFileSync(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    execFileSync('skopeo', ['copy', '-q', '--all', '--dest-tls-verify=false', `oci:${dir}:multi`, `docker://127.0.0.1:${regPort}/test/multi:1`], { stdio: 'pipe' });
    const img = await newStore().pull(`127.0.0.1:${regPort}/test/multi:1`, { insecure: true });
    expect(img.config.env).toEqual([`ARCH=${arch}`]);
    // The local layout import picks the same one.
    expect((await newStore().import(dir)).id).toBe(img.id);
  });

  it('basic auth: refused without credentials (EREGISTRY 401), works with them', async () => {
    proxyMode = 'basic';
    const ref = `127.0.0.1:${proxyPort}/test/app:1`;
    const store = newStore();
    const e = await regError(store.pull(ref, { insecure: true }));
    expect(e.code).toBe('EREGISTRY');
    expect(e.status).toBe(401);
    expect(e.message).toContain(ref);
    expect((await regError(store.pull(ref, { insecure: true, auth: { ...USER, password: 'wrong' } }))).status).toBe(401);
    nothingLeft(store);
    const img = await store.pull(ref, { insecure: true, auth: USER });
    expect(img.layers).toHaveLength(2);
    await store.push(img, `127.0.0.1:${proxyPort}/basic/pushed:1`, { insecure: true, auth: USER });
  });

  it('token auth: the Bearer challenge is answered from the realm with the credentials', async () => {
    proxyMode = 'token';
    const ref = `127.0.0.1:${proxyPort}/test/app:1`;
    const store = newStore();
    const e = await regError(store.pull(ref, { insecure: true }));
    expect(e.code).toBe('EREGISTRY');
    expect(e.status).toBe(401);
    const img = await store.pull(ref, { insecure: true, auth: USER });
    expect(img.layers).toHaveLength(2);
    await store.push(img, `127.0.0.1:${proxyPort}/token/pushed:1`, { insecure: true, auth: USER });
  });

  it('404, 5xx, a dropped connection and a bad digest are EREGISTRY; nothing is left tagged', async () => {
    const ref = `127.0.0.1:${proxyPort}/test/app:1`;
    proxyMode = 'pass';
    const store = newStore();
    const missing = await regError(store.pull(`127.0.0.1:${proxyPort}/test/app:nope`, { insecure: true }));
    expect([missing.code, missing.status, missing.reference]).toEqual(['EREGISTRY', 404, `127.0.0.1:${proxyPort}/test/app:nope`]);
    proxyMode = 'fail';
    const down = await regError(store.pull(ref, { insecure: true }));
    expect([down.code, down.status]).toEqual(['EREGISTRY', 503]);
    proxyMode = 'drop';
    const dropped = await regError(store.pull(ref, { insecure: true }));
    expect(dropped.code).toBe('EREGISTRY');
    proxyMode = 'corrupt';
    const corrupt = await regError(store.pull(ref, { insecure: true }));
    expect(corrupt.code).toBe('EREGISTRY');
    expect(corrupt.message).toContain(ref);
    nothingLeft(store);
    const refused = await regError(store.pull(`127.0.0.1:${await freePort()}/x/y:1`, { insecure: true }));
    expect(refused.code).toBe('EREGISTRY');
    proxyMode = 'pass';
  });
});

import { createReadStream, statSync } from 'node:fs';
import { Readable } from 'node:stream';
import { HutchError, invalid } from '../errors.js';
import { digestHex, sha256hex } from './blob.js';
import { fromManifest } from './import.js';
import { BUILTINS } from './builtin.js';
import { INDEX_TYPES, MANIFEST_TYPES, pickManifest, type Descriptor } from './oci.js';
import { MEDIA, type BlobRef, type Image, type ImageRecord, type Progress } from './types.js';
import type { StoreContext } from './context.js';

/**
 * The OCI distribution API v2, client side: pull and push with anonymous, basic or bearer
 * token auth (the WWW-Authenticate challenge decides), plain http when `insecure`.
 */

export interface RegistryOptions {
  insecure?: boolean;
  auth?: { username: string; password: string };
  onProgress?: (p: Progress) => void;
}

export interface Reference {
  registry: string;
  repository: string;
  tag?: string;
  digest?: string;
  /** As the caller wrote it. */
  text: string;
}

const MANIFEST_ACCEPT = [MEDIA.ociManifest, MEDIA.ociIndex, MEDIA.dockerManifest, MEDIA.dockerList].join(', ');

/** `[host[:port]/]path[:tag][@sha256:...]`; Docker Hub names get `library/` and its host. */
export function parseReference(text: string): Reference {
  if (typeof text !== 'string' || text === '' || /\s/.test(text)) throw invalid('ref', "a reference like 'host:5000/repo:tag'", text);
  let rest = text;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    digestHex(digest, `reference ${text}`);
    rest = rest.slice(0, at);
  }
  let registry = 'registry-1.docker.io';
  const slash = rest.indexOf('/');
  const first = slash >= 0 ? rest.slice(0, slash) : '';
  if (slash >= 0 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    registry = first === 'docker.io' ? 'registry-1.docker.io' : first;
    rest = rest.slice(slash + 1);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
  }
  if (registry === 'registry-1.docker.io' && !rest.includes('/')) rest = `library/${rest}`;
  if (!/^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/.test(rest)) {
    throw invalid('ref', 'a repository of lowercase letters, digits and . _ - /', text);
  }
  if (tag !== undefined && !/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/.test(tag)) throw invalid('ref', 'a tag of letters, digits, _ . -', text);
  if (tag === undefined && digest === undefined) tag = 'latest';
  return { registry, repository: rest, tag, digest, text };
}

function regError(ref: Reference, what: string, status?: number, cause?: unknown): HutchError {
  const s = status === undefined ? '' : ` (HTTP ${status})`;
  const e = new HutchError('EREGISTRY', `${ref.text}: ${what}${s}`, { cause });
  Object.defineProperty(e, 'status', { value: status, enumerable: true });
  Object.defineProperty(e, 'reference', { value: ref.text, enumerable: true });
  return e;
}

/** One registry session: base URL, credentials, the current token. */
class Client {
  private token: string | undefined;
  private basic = false;
  readonly base: string;

  constructor(readonly ref: Reference, private readonly o: RegistryOptions, private readonly scope: string) {
    this.base = `${o.insecure ? 'http' : 'https'}://${ref.registry}`;
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    const h: Record<string, string> = { ...extra };
    if (this.token) h.authorization = `Bearer ${this.token}`;
    else if (this.basic && this.o.auth) h.authorization = `Basic ${Buffer.from(`${this.o.auth.username}:${this.o.auth.password}`).toString('base64')}`;
    return h;
  }

  /** Answers a 401 challenge; false when there is nothing more to try. */
  private async authenticate(res: Response): Promise<boolean> {
    const challenge = res.headers.get('www-authenticate') ?? '';
    const scheme = challenge.split(' ')[0]!.toLowerCase();
    if (scheme === 'basic') {
      if (!this.o.auth || this.basic) return false;
      this.basic = true;
      return true;
    }
    if (scheme !== 'bearer' || this.token) return false;
    const params: Record<string, string> = {};
    for (const m of challenge.slice(6).matchAll(/([a-zA-Z_]+)="([^"]*)"/g)) params[m[1]!.toLowerCase()] = m[2]!;
    if (!params.realm) return false;
    const url = new URL(params.realm);
    if (params.service) url.searchParams.set('service', params.service);
    url.searchParams.set('scope', params.scope ?? this.scope);
    const h: Record<string, string> = {};
    if (this.o.auth) h.authorization = `Basic ${Buffer.from(`${this.o.auth.username}:${this.o.auth.password}`).toString('base64')}`;
    let tres: Response;
    try {
      tres = await fetch(url, { headers: h });
    } catch (e) {
      throw regError(this.ref, `token request to ${url.origin} failed: ${(e as Error).message}`, undefined, e);
    }
    if (!tres.ok) throw regError(this.ref, `token request to ${url.origin} refused`, tres.status);
    const body = (await tres.json().catch(() => ({}))) as { token?: string; access_token?: string };
    const token = body.token ?? body.access_token;
    if (!token) throw regError(this.ref, `token server ${url.origin} sent no token`, tres.status);
    this.token = token;
    return true;
  }

  /** A request with auth retries; rejects with EREGISTRY for anything but `ok` statuses. */
  async request(method: string, path: string, init: { headers?: Record<string, string>; body?: () => RequestInit['body']; ok?: number[] } = {}): Promise<Response> {
    const url = path.startsWith('http://') || path.startsWith('https://') ? path : `${this.base}${path}`;
    for (let attempt = 0; ; attempt++) {
      let res: Response;
      try {
        const body = init.body?.() ?? null;
        res = await fetch(url, {
          method,
          headers: this.headers(init.headers),
          body,
          redirect: 'follow',
          ...(body ? { duplex: 'half' } : {}),
        } as RequestInit);
      } catch (e) {
        throw regError(this.ref, `${method} ${url} failed: ${(e as Error & { cause?: Error }).cause?.message ?? (e as Error).message}`, undefined, e);
      }
      if (res.status === 401 && attempt < 2 && (await this.authenticate(res))) {
        await res.body?.cancel();
        continue;
      }
      if (!(init.ok ?? [200]).includes(res.status)) {
        const text = await res.text().catch(() => '');
        const why = res.status === 401 ? 'unauthorized' : res.status === 404 ? 'not found' : res.status >= 500 ? 'registry error' : 'refused';
        throw regError(this.ref, `${method} ${new URL(url).pathname} ${why}${text ? `: ${text.slice(0, 200).trim()}` : ''}`, res.status);
      }
      return res;
    }
  }
}

async function readLimited(res: Response, ref: Reference, max = 4 * 1024 * 1024): Promise<Buffer> {
  const len = Number(res.headers.get('content-length') ?? 0);
  if (len > max) throw regError(ref, `manifest of ${len} bytes is too large`, res.status);
  try {
    const buf = Buffer.from(await res.arrayBuffer());
    if (buf.length > max) throw regError(ref, `manifest of ${buf.length} bytes is too large`, res.status);
    return buf;
  } catch (e) {
    if (HutchError.is(e)) throw e;
    throw regError(ref, `connection dropped while reading: ${(e as Error).message}`, res.status, e);
  }
}

async function getManifest(c: Client, ref: Reference, reference: string): Promise<{ body: Buffer; mediaType: string; digest: string }> {
  const res = await c.request('GET', `/v2/${ref.repository}/manifests/${reference}`, { headers: { accept: MANIFEST_ACCEPT } });
  const body = await readLimited(res, ref);
  const digest = `sha256:${sha256hex(body)}`;
  if (reference.startsWith('sha256:') && digest !== reference) throw regError(ref, `manifest digest mismatch: got ${digest}, asked for ${reference}`, res.status);
  // By tag, the digest the registry names for what it sent must be what it sent.
  const claimed = res.headers.get('docker-content-digest');
  if (claimed && claimed.startsWith('sha256:') && claimed !== digest) throw regError(ref, `manifest digest mismatch: got ${digest}, the registry says ${claimed}`, res.status);
  const mediaType = (res.headers.get('content-type') ?? '').split(';')[0]!.trim();
  let parsed: { mediaType?: string };
  try {
    parsed = JSON.parse(body.toString('utf8')) as { mediaType?: string };
  } catch {
    throw regError(ref, 'manifest is not JSON', res.status);
  }
  return { body, mediaType: parsed.mediaType ?? mediaType, digest };
}

/** Pulls `ref` into the store and tags it with `ref` as written. */
export async function pull(store: StoreContext, text: string, o: RegistryOptions): Promise<Image> {
  const ref = parseReference(text);
  const c = new Client(ref, o, `repository:${ref.repository}:pull`);
  store.ensure();
  const op = await store.beginOp();
  try {
    let m = await getManifest(c, ref, ref.digest ?? ref.tag!);
    for (let depth = 0; INDEX_TYPES.has(m.mediaType); depth++) {
      if (depth > 4) throw regError(ref, 'manifest lists nested too deep');
      const desc = pickManifest(JSON.parse(m.body.toString('utf8')), `${text} manifest list`);
      m = await getManifest(c, ref, desc.digest);
      if (m.body.length !== desc.size) throw regError(ref, `manifest ${desc.digest}: size mismatch: the registry sent ${m.body.length} bytes, the list says ${desc.size}`);
    }
    if (!MANIFEST_TYPES.has(m.mediaType)) throw regError(ref, `manifest media type ${JSON.stringify(m.mediaType)} is not an image manifest`);
    const blob = async (d: Descriptor, what: string) => {
      digestHex(d.digest, what);
      return c.request('GET', `/v2/${ref.repository}/blobs/${d.digest}`);
    };
    const pending = await fromManifest(
      store,
      op,
      JSON.parse(m.body.toString('utf8')),
      `${text} manifest ${m.digest}`,
      async (d, what) => {
        const buf = await readLimited(await blob(d, what), ref);
        if (buf.length !== d.size) throw regError(ref, `${what}: size mismatch: the registry sent ${buf.length} bytes, the manifest says ${d.size}`);
        if (`sha256:${sha256hex(buf)}` !== d.digest) throw regError(ref, `${what}: digest mismatch: the registry sent sha256:${sha256hex(buf)}, the manifest says ${d.digest}`);
        return buf;
      },
      async (d, what) => {
        const res = await blob(d, what);
        if (!res.body) throw regError(ref, `${what}: empty response`, res.status);
        const stream = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>);
        stream.on('error', () => undefined);
        return (async function* () {
          try {
            for await (const chunk of stream) yield chunk as Buffer;
          } catch (e) {
            throw regError(ref, `${what}: connection dropped: ${(e as Error).message}`, res.status, e);
          }
        })();
      },
      o.onProgress && ((p) => {
        o.onProgress!({ ...p, phase: p.phase.replace(/^(extract|verify)/, 'pull') });
      }),
    );
    // A bare builtin name ('busybox') stays the builtin's; the pulled image gets the full name.
    pending.tags = [BUILTINS.includes(text as (typeof BUILTINS)[number]) ? `docker.io/library/${text}:latest` : text];
    return await store.commit(op, pending);
  } catch (e) {
    if (HutchError.is(e) && e.code === 'EBADIMAGE') throw regError(ref, e.message, undefined, e);
    throw e;
  } finally {
    await op.close();
  }
}

/** OCI equivalents of the media types a store may hold, for an OCI manifest. */
function ociLayerType(t: string): string {
  switch (t) {
    case MEDIA.dockerLayer:
      return MEDIA.ociLayerGzip;
    case 'application/vnd.docker.image.rootfs.diff.tar':
      return MEDIA.ociLayer;
    default:
      return t;
  }
}

async function pushBlob(c: Client, ref: Reference, store: StoreContext, b: BlobRef, o: RegistryOptions, what: string): Promise<void> {
  const path = store.path('blobs', 'sha256', digestHex(b.digest, what));
  let size: number;
  try {
    size = statSync(path).size;
  } catch {
    throw new HutchError('EBADIMAGE', `${what}: blob ${b.digest} is not in the store (prune removed it, or the image predates blob keeping); import it again`);
  }
  const head = await c.request('HEAD', `/v2/${ref.repository}/blobs/${b.digest}`, { ok: [200, 404] });
  if (head.status === 200) {
    o.onProgress?.({ phase: `push ${what} (exists)`, current: size, total: size });
    return;
  }
  const start = await c.request('POST', `/v2/${ref.repository}/blobs/uploads/`, { ok: [202] });
  const location = start.headers.get('location');
  if (!location) throw regError(ref, 'upload started without a Location', start.status);
  const url = new URL(location, c.base);
  url.searchParams.set('digest', b.digest);
  let sent = 0;
  await c.request('PUT', url.toString(), {
    ok: [201],
    headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
    body: () => {
      const file = createReadStream(path);
      file.on('data', (chunk) => {
        sent += chunk.length;
        o.onProgress?.({ phase: `push ${what}`, current: sent, total: size });
      });
      return Readable.toWeb(file) as unknown as RequestInit['body'];
    },
  });
}

/** Pushes an image's blobs (skipping those the registry has) and an OCI manifest to `ref`. */
export async function push(store: StoreContext, rec: ImageRecord, text: string, o: RegistryOptions): Promise<void> {
  const ref = parseReference(text);
  if (ref.digest) throw invalid('ref', 'a reference with a tag, not a digest, to push to', text);
  const c = new Client(ref, o, `repository:${ref.repository}:pull,push`);
  for (const [i, b] of rec.layerBlobs.entries()) await pushBlob(c, ref, store, b, o, `layer ${i + 1}/${rec.layerBlobs.length}`);
  await pushBlob(c, ref, store, rec.configBlob, o, 'config');
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA.ociManifest,
      config: { mediaType: MEDIA.ociConfig, digest: rec.configBlob.digest, size: rec.configBlob.size },
      layers: rec.layerBlobs.map((b) => ({ mediaType: ociLayerType(b.mediaType), digest: b.digest, size: b.size })),
    }),
  );
  await c.request('PUT', `/v2/${ref.repository}/manifests/${ref.tag}`, {
    ok: [201],
    headers: { 'content-type': MEDIA.ociManifest },
    body: () => manifest,
  });
}

import { createHash, type Hash } from 'node:crypto';
import { createReadStream, writeSync } from 'node:fs';
import { Readable } from 'node:stream';
import * as zlib from 'node:zlib';
import { HutchError, STORE_ERRNOS, unsupported } from '../errors.js';

/**
 * Writes all of `buf` to `fd` (at `position`, else at the file offset). A write the store's
 * filesystem refuses (ENOSPC, EDQUOT, EIO...) is `ESTORE` naming `path`, the file in the store.
 */
export function writeFully(fd: number, buf: Buffer, path: string, position: number | null = null): void {
  let off = 0;
  try {
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off, position === null ? null : position + off);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === 'string' && STORE_ERRNOS.has(code)) throw new HutchError('ESTORE', `writing ${path} into the store failed: ${code}`, { errno: code, path, cause: e });
    throw e;
  }
}

export type Compression = 'none' | 'gzip' | 'zstd';

/** Compression named by the first bytes of a stream. */
export function sniff(head: Buffer): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  return 'none';
}

export function sha256hex(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

export const HEX64 = /^[0-9a-f]{64}$/;

/** `sha256:<hex>` → hex, or EBADIMAGE naming `what`. */
export function digestHex(digest: unknown, what: string): string {
  if (typeof digest !== 'string' || !digest.startsWith('sha256:') || !HEX64.test(digest.slice(7))) {
    throw new HutchError('EBADIMAGE', `${what}: ${JSON.stringify(digest)} is not a sha256 digest`);
  }
  return digest.slice(7);
}

/** Reads the first chunk of a stream and gives back a stream that still starts with it. */
async function peek(source: AsyncIterable<Buffer>): Promise<{ head: Buffer; rest: AsyncIterable<Buffer> }> {
  const it = source[Symbol.asyncIterator]();
  const first = await it.next();
  const head = first.done ? Buffer.alloc(0) : Buffer.from(first.value);
  async function* rest(): AsyncGenerator<Buffer> {
    let done = false;
    try {
      if (head.length > 0) yield head;
      for (;;) {
        const n = await it.next();
        if (n.done) {
          done = true;
          return;
        }
        yield Buffer.from(n.value);
      }
    } finally {
      // Stopped early: let the source close (a Readable's iterator destroys it).
      if (!done) await it.return?.();
    }
  }
  return { head, rest: rest() };
}

export interface BlobReading {
  /** Decompressed bytes, capped at `maxBytes`. */
  plain: AsyncIterable<Buffer>;
  compression: Compression;
  /** sha256 of the bytes as given (the blob digest); complete once `plain` is consumed. */
  raw: { hash: Hash; bytes: number };
  /** sha256 of the decompressed bytes (the diff id). */
  diff: { hash: Hash; bytes: number };
}

/**
 * Opens a (possibly compressed) layer stream: hashes the raw bytes, decompresses by the
 * given or sniffed compression, hashes the plain bytes and stops past `maxBytes`.
 * `onRaw` sees every raw chunk (to keep a copy of the blob, or count progress). `hashRaw:
 * false` skips the raw hash (a copy whose digest was checked already).
 */
export async function openBlob(
  source: AsyncIterable<Buffer>,
  opts: { compression?: Compression; maxBytes: number; label: string; onRaw?: (chunk: Buffer) => void; hashRaw?: boolean },
): Promise<BlobReading> {
  const raw = { hash: createHash('sha256'), bytes: 0 };
  const diff = { hash: createHash('sha256'), bytes: 0 };
  const { head, rest } = await peek(source);
  const compression = opts.compression ?? sniff(head);
  async function* tapped(): AsyncGenerator<Buffer> {
    for await (const c of rest) {
      if (opts.hashRaw !== false) raw.hash.update(c);
      raw.bytes += c.length;
      opts.onRaw?.(c);
      yield c;
    }
  }
  let decoded: AsyncIterable<Buffer>;
  let src: Readable | undefined;
  if (compression === 'none') decoded = tapped();
  else {
    let dec: zlib.Gunzip | NodeJS.ReadWriteStream;
    if (compression === 'gzip') dec = zlib.createGunzip();
    else {
      const z = (zlib as unknown as { createZstdDecompress?: () => NodeJS.ReadWriteStream }).createZstdDecompress;
      if (!z) throw unsupported(`${opts.label}: zstd-compressed layers`, 'use Node.js 22.15 or newer (zlib zstd)');
      dec = z();
    }
    src = Readable.from(tapped());
    src.on('error', (e) => (dec as unknown as Readable).destroy(e));
    src.pipe(dec as unknown as NodeJS.WritableStream);
    decoded = dec as unknown as AsyncIterable<Buffer>;
  }
  async function* plain(): AsyncGenerator<Buffer> {
    try {
      for await (const c of decoded) {
        diff.bytes += c.length;
        if (diff.bytes > opts.maxBytes) {
          throw new HutchError('EBADIMAGE', `${opts.label}: more than ${opts.maxBytes} bytes uncompressed (the store's maxLayerBytes)`);
        }
        diff.hash.update(c);
        yield c;
      }
    } catch (e) {
      if (HutchError.is(e)) throw e;
      const code = (e as NodeJS.ErrnoException).code;
      if (typeof code === 'string' && code.startsWith('Z_')) {
        throw new HutchError('EBADIMAGE', `${opts.label}: corrupt ${compression} data: ${(e as Error).message}`, { cause: e });
      }
      throw e;
    } finally {
      // Stopped early (a refused entry, a cap): stop reading the source too, which closes
      // a file or destroys a caller's stream instead of leaving it paused.
      src?.destroy();
    }
  }
  return { plain: plain(), compression, raw, diff };
}

/** A file as an async iterable of chunks. */
export function fileChunks(path: string): AsyncIterable<Buffer> {
  return createReadStream(path, { highWaterMark: 256 * 1024 });
}

/**
 * A small tar writer for the layers hutch generates itself (the builtin images) and for
 * tests that need archives no ordinary tool would write (`..`, absolute names, lying sizes).
 * It writes names exactly as given: sanitising is the reader's job (tar.ts).
 */

export type TarEntryType = 'file' | 'dir' | 'symlink' | 'link' | 'char' | 'block' | 'fifo';

export interface TarEntry {
  path: string;
  type: TarEntryType;
  mode?: number;
  uid?: number;
  gid?: number;
  /** Seconds since the epoch. */
  mtime?: number;
  data?: Uint8Array | string;
  /** Target of a symlink or hardlink. */
  linkpath?: string;
  devmajor?: number;
  devminor?: number;
  /** Extended attributes, written as pax SCHILY.xattr records. */
  xattrs?: Record<string, string>;
  /** Further pax records, written as given (e.g. the GNU.sparse.* keys of a sparse file). */
  pax?: Record<string, string>;
  /** Size written in the header instead of the data's (to make truncated or lying archives). */
  sizeOverride?: number;
}

const TYPEFLAG: Record<TarEntryType, string> = {
  file: '0',
  link: '1',
  symlink: '2',
  char: '3',
  block: '4',
  dir: '5',
  fifo: '6',
};

function octal(buf: Buffer, off: number, len: number, value: number): boolean {
  const s = Math.floor(value).toString(8);
  if (s.length > len - 1) return false;
  buf.write(s.padStart(len - 1, '0') + '\0', off, len, 'ascii');
  return true;
}

function paxRecord(key: string, value: string): Buffer {
  const body = ` ${key}=${value}\n`;
  let len = Buffer.byteLength(body) + 1;
  while (String(len).length + Buffer.byteLength(body) !== len) len = String(len).length + Buffer.byteLength(body);
  return Buffer.from(`${len}${body}`);
}

function pad(n: number): number {
  return (512 - (n % 512)) % 512;
}

function header(name: string, type: string, e: Partial<TarEntry>, size: number, linkname = ''): { block: Buffer; needPax: string[] } {
  const b = Buffer.alloc(512);
  const needPax: string[] = [];
  const nameBytes = Buffer.byteLength(name);
  if (nameBytes <= 100) b.write(name, 0, 100, 'utf8');
  else {
    needPax.push('path');
    b.write(name.slice(0, 99), 0, 100, 'utf8');
  }
  octal(b, 100, 8, e.mode ?? 0o644);
  if (!octal(b, 108, 8, e.uid ?? 0)) needPax.push('uid');
  if (!octal(b, 116, 8, e.gid ?? 0)) needPax.push('gid');
  if (!octal(b, 124, 12, size)) needPax.push('size');
  octal(b, 136, 12, e.mtime ?? 0);
  b.write(type, 156, 1, 'ascii');
  if (Buffer.byteLength(linkname) <= 100) b.write(linkname, 157, 100, 'utf8');
  else needPax.push('linkpath');
  b.write('ustar\0', 257, 6, 'ascii');
  b.write('00', 263, 2, 'ascii');
  octal(b, 329, 8, e.devmajor ?? 0);
  octal(b, 337, 8, e.devminor ?? 0);
  b.fill(' ', 148, 156);
  let sum = 0;
  for (const byte of b) sum += byte;
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'ascii');
  return { block: b, needPax };
}

/** Serialises entries into one tar archive (with pax headers where ustar cannot hold a field). */
export function* tarChunks(entries: Iterable<TarEntry>): Generator<Buffer> {
  for (const e of entries) {
    const data = e.data === undefined ? Buffer.alloc(0) : Buffer.from(e.data);
    const size = e.type === 'file' ? (e.sizeOverride ?? data.length) : (e.sizeOverride ?? 0);
    const name = e.type === 'dir' && !e.path.endsWith('/') ? `${e.path}/` : e.path;
    const link = e.linkpath ?? '';
    const probe = header(name, TYPEFLAG[e.type], e, size, link);
    const records: Buffer[] = [];
    if (probe.needPax.includes('path')) records.push(paxRecord('path', name));
    if (probe.needPax.includes('linkpath')) records.push(paxRecord('linkpath', link));
    if (probe.needPax.includes('uid')) records.push(paxRecord('uid', String(e.uid)));
    if (probe.needPax.includes('gid')) records.push(paxRecord('gid', String(e.gid)));
    if (probe.needPax.includes('size')) records.push(paxRecord('size', String(size)));
    for (const [k, v] of Object.entries(e.xattrs ?? {})) records.push(paxRecord(`SCHILY.xattr.${k}`, v));
    for (const [k, v] of Object.entries(e.pax ?? {})) records.push(paxRecord(k, v));
    if (records.length > 0) {
      const body = Buffer.concat(records);
      yield header('PaxHeader', 'x', { mode: 0o644 }, body.length).block;
      yield body;
      yield Buffer.alloc(pad(body.length));
    }
    yield probe.block;
    if (e.type === 'file' && data.length > 0) {
      yield data;
      yield Buffer.alloc(pad(data.length));
    }
  }
  yield Buffer.alloc(1024);
}

/** The whole archive in memory: for small generated layers and test fixtures. */
export function tarBuffer(entries: Iterable<TarEntry>): Buffer {
  return Buffer.concat([...tarChunks(entries)]);
}

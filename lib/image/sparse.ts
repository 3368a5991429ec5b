import { Pax, type ReadEntry } from 'tar';
import type { HutchError } from '../errors.js';

/**
 * PAX sparse entries, format 1.0 (what GNU tar writes with `--sparse --posix`): the extended
 * header carries `GNU.sparse.major=1`, `GNU.sparse.minor=0`, `GNU.sparse.name` (the real
 * name; the ustar name is a `GNUSparseFile.<pid>/...` placeholder) and `GNU.sparse.realsize`;
 * the entry's data starts with the map as decimal lines (the number of segments, then an
 * offset and a size per segment), padded to 512 bytes, followed by the segments' bytes.
 * Holes are never written: the extractor writes each segment at its offset and truncates the
 * file to its real size.
 */

// The tar package keeps only the pax keys it knows; GNU.sparse.* records are read here from
// the same text it parses, and kept per parsed header (the entry's `extended`).
const sparseKeys = new WeakMap<object, Map<string, string>>();
const parsePax = Pax.parse.bind(Pax);
Pax.parse = (str: string, ex?: Parameters<typeof Pax.parse>[1], global?: boolean): Pax => {
  const p = parsePax(str, ex, global);
  if (global) return p;
  const kv = new Map(ex ? sparseKeys.get(ex) : undefined);
  for (const line of str.split('\n')) {
    const m = /^\d+ (GNU\.sparse\.[a-z]+)=(.*)$/.exec(line);
    if (m) kv.set(m[1]!, m[2]!);
  }
  if (kv.size > 0) sparseKeys.set(p, kv);
  return p;
};

export interface SparseInfo {
  /** The entry's real name (GNU.sparse.name). */
  name: string;
  /** The file's size, holes included. */
  realSize: number;
}

/** Makes the EBADIMAGE for an entry (tar.ts's `bad`). */
export type Refuse = (label: string, entry: string, why: string) => HutchError;

/** The sparse description of an entry (format 1.0), undefined for an ordinary one; other sparse formats are refused. */
export function sparseInfo(e: ReadEntry, label: string, bad: Refuse): SparseInfo | undefined {
  const kv = e.extended ? sparseKeys.get(e.extended) : undefined;
  if (!kv) return undefined;
  const major = kv.get('GNU.sparse.major');
  const minor = kv.get('GNU.sparse.minor');
  if (major !== '1' || minor !== '0') {
    throw bad(label, e.path, `is a sparse file in GNU format ${major ?? '0'}.${minor ?? 'x'}; only PAX sparse 1.0 is read (write it with GNU tar --sparse --posix)`);
  }
  const name = kv.get('GNU.sparse.name');
  const real = kv.get('GNU.sparse.realsize') ?? '';
  if (name === undefined || name === '') throw bad(label, e.path, 'is a sparse file without GNU.sparse.name');
  if (!/^\d{1,16}$/.test(real) || !Number.isSafeInteger(Number(real))) throw bad(label, name, `has a bad GNU.sparse.realsize ${JSON.stringify(real)}`);
  return { name, realSize: Number(real) };
}

/** Most segments one sparse entry may list (the map is read into memory). */
const MAX_SEGMENTS = 1 << 20;

/**
 * Reads a sparse entry's data as it streams: the map first, then each segment's bytes,
 * handed to `write(data, position)`. `end()` checks that the data held exactly what the
 * map promised.
 */
export class SparseReader {
  private text = '';
  private consumed = 0;
  private numbers: number[] = [];
  private want = -1;
  private skip = 0;
  private segments: { offset: number; size: number }[] | null = null;
  private seg = 0;
  private done = 0;
  /** Bytes of file data (the segments). */
  dataBytes = 0;

  constructor(
    private readonly bad: Refuse,
    private readonly label: string,
    private readonly name: string,
    private readonly info: SparseInfo,
    private readonly storedSize: number,
    private readonly write: (data: Buffer, position: number) => void,
  ) {}

  push(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length) {
      if (this.segments === null) {
        off = this.readMap(chunk, off);
        continue;
      }
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - off);
        this.skip -= n;
        off += n;
        continue;
      }
      const s = this.segments[this.seg];
      if (s === undefined) throw this.bad(this.label, this.name, 'has more data than its sparse map lists');
      const n = Math.min(s.size - this.done, chunk.length - off);
      this.write(chunk.subarray(off, off + n), s.offset + this.done);
      this.dataBytes += n;
      this.done += n;
      off += n;
      if (this.done === s.size) {
        this.seg++;
        this.done = 0;
        while (this.segments[this.seg]?.size === 0) this.seg++;
      }
    }
  }

  end(): void {
    if (this.segments === null || this.skip > 0 || this.seg < this.segments.length) {
      throw this.bad(this.label, this.name, 'ends before the data its sparse map lists');
    }
  }

  /** Consumes map text from `chunk` at `off`; returns the new offset. */
  private readMap(chunk: Buffer, off: number): number {
    const nl = chunk.indexOf(0x0a, off);
    const end = nl < 0 ? chunk.length : nl + 1;
    this.text += chunk.toString('latin1', off, end);
    this.consumed += end - off;
    if (this.text.length > 21) throw this.bad(this.label, this.name, 'has a sparse map with a number too long');
    if (nl < 0) return end;
    const line = this.text.slice(0, -1);
    this.text = '';
    if (!/^\d{1,20}$/.test(line) || !Number.isSafeInteger(Number(line))) throw this.bad(this.label, this.name, `has a bad sparse map line ${JSON.stringify(line)}`);
    const v = Number(line);
    if (this.want < 0) {
      if (v > MAX_SEGMENTS) throw this.bad(this.label, this.name, `has a sparse map of ${v} segments (at most ${MAX_SEGMENTS})`);
      this.want = v * 2;
    } else {
      this.numbers.push(v);
    }
    if (this.numbers.length === this.want) this.parsedMap();
    return end;
  }

  private parsedMap(): void {
    const segs: { offset: number; size: number }[] = [];
    let last = 0;
    let data = 0;
    for (let i = 0; i < this.numbers.length; i += 2) {
      const offset = this.numbers[i]!;
      const size = this.numbers[i + 1]!;
      if (offset < last || offset + size > this.info.realSize) {
        throw this.bad(this.label, this.name, `has a sparse map segment ${offset}+${size} that overlaps another or passes the real size ${this.info.realSize}`);
      }
      last = offset + size;
      data += size;
      segs.push({ offset, size });
    }
    this.skip = (512 - (this.consumed % 512)) % 512;
    if (this.consumed + this.skip + data !== this.storedSize) {
      throw this.bad(this.label, this.name, `has a sparse map listing ${data} bytes of data, but the entry holds ${this.storedSize - this.consumed - this.skip}`);
    }
    this.numbers = [];
    this.segments = segs;
    while (this.segments[this.seg]?.size === 0) this.seg++;
  }
}

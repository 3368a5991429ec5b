// PAX sparse entries (format 1.0) are extracted with their holes kept: archives from GNU tar
// (--sparse --posix --sparse-version=1.0) and from a writer in this file; malformed maps and
// other sparse formats are refused with EBADIMAGE.
import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HutchError } from '../../lib/errors.js';
import { ImageStore } from '../../lib/image/store.js';
import { tarBuffer } from '../../lib/image/tarwriter.js';

const made: string[] = [];
afterEach(() => {
  for (const d of made.splice(0)) rmSync(d, { recursive: true, force: true });
});
function scratch(): string {
  const d = mkdtempSync(join(tmpdir(), 'hutch-sparse-'));
  made.push(d);
  return d;
}

async function importFile(tarFile: string): Promise<{ store: ImageStore; layer: string }> {
  const store = new ImageStore({ root: join(scratch(), 'store') });
  const img = await store.import(tarFile);
  return { store, layer: join(store.root, 'layers', img.layers[0]!.slice(7)) };
}

async function refusal(tar: Buffer): Promise<HutchError> {
  const f = join(scratch(), 'bad.tar');
  writeFileSync(f, tar);
  const store = new ImageStore({ root: join(scratch(), 'store') });
  try {
    await store.import(f);
  } catch (e) {
    expect(HutchError.is(e), String(e)).toBe(true);
    expect((e as HutchError).code, (e as HutchError).message).toBe('EBADIMAGE');
    return e as HutchError;
  }
  throw new Error('the archive was accepted');
}

function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return `${len}${body}`;
}

/** One ustar header block (name, typeflag, size), checksummed. */
function header(name: string, type: string, size: number, mode = 0o644): Buffer {
  const b = Buffer.alloc(512);
  b.write(name, 0, 100, 'utf8');
  b.write(`${mode.toString(8).padStart(7, '0')}\0`, 100);
  b.write('0000000\0', 108);
  b.write('0000000\0', 116);
  b.write(`${size.toString(8).padStart(11, '0')}\0`, 124);
  b.write(`${(1_700_000_000).toString(8).padStart(11, '0')}\0`, 136);
  b.write(type, 156);
  b.write('ustar\0', 257);
  b.write('00', 263);
  b.fill(' ', 148, 156);
  let sum = 0;
  for (const byte of b) sum += byte;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return b;
}

const pad = (b: Buffer) => Buffer.concat([b, Buffer.alloc((512 - (b.length % 512)) % 512)]);

/**
 * A PAX sparse 1.0 entry, as GNU tar writes it: GNU.sparse.* records, a placeholder name, the
 * map as decimal lines padded to 512, then the segments' bytes. `pax` adds or overrides records.
 */
function sparseEntry(name: string, realSize: number, segments: { offset: number; data: Buffer }[], o: { pax?: Record<string, string>; map?: string; storedSize?: number } = {}): Buffer {
  const records: Record<string, string> = { 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.name': name, 'GNU.sparse.realsize': String(realSize), ...o.pax };
  const paxBody = Buffer.from(Object.entries(records).map(([k, v]) => paxRecord(k, v)).join(''));
  const map = o.map ?? `${segments.length}\n${segments.map((s) => `${s.offset}\n${s.data.length}\n`).join('')}`;
  const data = Buffer.concat([pad(Buffer.from(map)), ...segments.map((s) => s.data)]);
  return Buffer.concat([header('PaxHeader/x', 'x', paxBody.length), pad(paxBody), header(`GNUSparseFile.0/${name}`, '0', o.storedSize ?? data.length), pad(data)]);
}

const archive = (...entries: Buffer[]) => Buffer.concat([...entries, Buffer.alloc(1024)]);
const blocksBytes = (p: string) => statSync(p).blocks * 512;

describe('PAX sparse 1.0 entries', () => {
  it('a GNU tar --sparse --posix --sparse-version=1.0 archive: same bytes, holes kept', async () => {
    const src = scratch();
    const f = join(src, 'big');
    const fd = openSync(f, 'w');
    writeSync(fd, Buffer.from('head'), 0, 4, 0);
    writeSync(fd, Buffer.alloc(8192, 0x61), 0, 8192, 3 * 1024 * 1024);
    writeSync(fd, Buffer.from('tail'), 0, 4, 9 * 1024 * 1024);
    ftruncateSync(fd, 16 * 1024 * 1024);
    closeSync(fd);
    mkdirSync(join(src, 'd'));
    writeFileSync(join(src, 'd', 'plain'), 'plain\n');
    const tarFile = join(scratch(), 'sparse.tar');
    execFileSync('tar', ['--sparse', '--posix', '--sparse-version=1.0', '-C', src, '-cf', tarFile, 'big', 'd']);
    // GNU tar did write a 1.0 sparse entry.
    expect(readFileSync(tarFile).includes('GNU.sparse.major=1')).toBe(true);
    const { layer } = await importFile(tarFile);
    const out = join(layer, 'big');
    expect(statSync(out).size).toBe(16 * 1024 * 1024);
    expect(readFileSync(out).equals(readFileSync(f))).toBe(true);
    expect(blocksBytes(out)).toBeLessThan(1024 * 1024);
    expect(readFileSync(join(layer, 'd', 'plain'), 'utf8')).toBe('plain\n');
  });

  it('an archive from our writer: leading, middle and trailing holes, an empty segment at the end', async () => {
    const real = 64 * 1024 * 1024;
    const segs = [
      { offset: 1024 * 1024, data: Buffer.alloc(5000, 0x41) },
      { offset: 40 * 1024 * 1024, data: Buffer.from('middle') },
      { offset: real, data: Buffer.alloc(0) },
    ];
    const f = join(scratch(), 's.tar');
    writeFileSync(f, archive(tarBuffer([{ path: 'etc', type: 'dir', mode: 0o755 }]).subarray(0, 512), sparseEntry('etc/sparse', real, segs)));
    const { layer } = await importFile(f);
    const out = join(layer, 'etc', 'sparse');
    const st = statSync(out);
    expect(st.size).toBe(real);
    expect(st.mode & 0o7777).toBe(0o644);
    expect(blocksBytes(out)).toBeLessThan(1024 * 1024);
    const got = readFileSync(out);
    const want = Buffer.alloc(real);
    for (const s of segs) s.data.copy(want, s.offset);
    expect(got.equals(want)).toBe(true);
  });

  it('refuses overlapping segments, a map past the real size, data short of the map, a bad map line', async () => {
    const x = (n: number) => Buffer.alloc(n, 0x78);
    expect((await refusal(archive(sparseEntry('s', 100, [{ offset: 10, data: x(20) }, { offset: 20, data: x(5) }])))).message).toMatch(/overlaps/);
    expect((await refusal(archive(sparseEntry('s', 100, [{ offset: 90, data: x(20) }])))).message).toMatch(/real size/);
    expect((await refusal(archive(sparseEntry('s', 1000, [{ offset: 0, data: x(20) }], { map: '1\n0\n600\n' })))).message).toMatch(/sparse map listing/);
    expect((await refusal(archive(sparseEntry('s', 100, [{ offset: 0, data: x(20) }], { map: '1\n-3\n20\n' })))).message).toMatch(/bad sparse map line/);
  });

  it('refuses other sparse formats, a sparse name with .. and a sparse file through a symlink', async () => {
    const seg = [{ offset: 0, data: Buffer.from('x') }];
    expect((await refusal(archive(sparseEntry('s', 10, seg, { pax: { 'GNU.sparse.major': '0', 'GNU.sparse.minor': '1', 'GNU.sparse.map': '0,1' } })))).message).toMatch(/GNU format 0\.1/);
    expect((await refusal(archive(sparseEntry('../../s', 10, seg)))).path).toBe('../../s');
    const link = tarBuffer([{ path: 'l', type: 'symlink', linkpath: '/tmp' }]).subarray(0, 512);
    expect((await refusal(archive(link, sparseEntry('l/s', 10, seg)))).message).toMatch(/symlink/);
  });
});

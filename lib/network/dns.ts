/**
 * The few parts of DNS messages (RFC 1035) the resolver needs, hand-written: a query's one
 * question, the A records (with TTL) of an upstream answer, and answers made here (refusals,
 * fixed `dns.hosts` entries, empty AAAA). Everything else of an upstream answer is passed on
 * unread. Every read is bounds-checked; a malformed message parses to null, never a throw.
 */

export const TYPE_A = 1;
export const TYPE_CNAME = 5;
export const TYPE_AAAA = 28;
export const RCODE_NOERROR = 0;
export const RCODE_FORMERR = 1;
export const RCODE_SERVFAIL = 2;
export const RCODE_NXDOMAIN = 3;
export const RCODE_NOTIMP = 4;
export const RCODE_REFUSED = 5;

export interface Question {
  id: number;
  /** Lowercase, no trailing dot; '' for the root. */
  name: string;
  type: number;
  cls: number;
  /** Opcode (0: standard query). */
  opcode: number;
  /** Recursion desired. */
  rd: boolean;
  /** Offset just past the question: header + question are copied into an answer. */
  end: number;
}

export interface ARecord {
  name: string;
  address: string;
  ttl: number;
}

/** A name at `off`, following compression pointers (at most 32); null when malformed. */
function readName(buf: Buffer, off: number): { name: string; end: number } | null {
  const labels: string[] = [];
  let end = -1;
  let jumps = 0;
  let total = 0;
  for (;;) {
    if (off >= buf.length) return null;
    const len = buf[off]!;
    if (len === 0) {
      if (end < 0) end = off + 1;
      break;
    }
    if ((len & 0xc0) === 0xc0) {
      if (off + 1 >= buf.length || ++jumps > 32) return null;
      if (end < 0) end = off + 2;
      off = ((len & 0x3f) << 8) | buf[off + 1]!;
      continue;
    }
    if (len > 63 || off + 1 + len > buf.length) return null;
    total += len + 1;
    if (total > 255) return null;
    labels.push(buf.toString('latin1', off + 1, off + 1 + len));
    off += 1 + len;
  }
  return { name: labels.join('.').toLowerCase(), end };
}

/** The one question of a query; null when it is not a query with exactly one question. */
export function parseQuery(buf: Buffer): Question | null {
  if (buf.length < 12) return null;
  const flags = buf.readUInt16BE(2);
  if (flags & 0x8000) return null; // a response
  if (buf.readUInt16BE(4) !== 1) return null;
  const n = readName(buf, 12);
  if (n === null || n.end + 4 > buf.length) return null;
  return {
    id: buf.readUInt16BE(0),
    name: n.name,
    type: buf.readUInt16BE(n.end),
    cls: buf.readUInt16BE(n.end + 2),
    opcode: (flags >> 11) & 0xf,
    rd: (flags & 0x100) !== 0,
    end: n.end + 4,
  };
}

/** The id, response code and A records of an answer; null when malformed. */
export function parseAnswer(buf: Buffer): { id: number; rcode: number; truncated: boolean; records: ARecord[]; cnames: { name: string; target: string }[] } | null {
  if (buf.length < 12) return null;
  const flags = buf.readUInt16BE(2);
  const qd = buf.readUInt16BE(4);
  const an = buf.readUInt16BE(6);
  let off = 12;
  for (let i = 0; i < qd; i++) {
    const n = readName(buf, off);
    if (n === null) return null;
    off = n.end + 4;
  }
  const records: ARecord[] = [];
  const cnames: { name: string; target: string }[] = [];
  for (let i = 0; i < an; i++) {
    const n = readName(buf, off);
    if (n === null || n.end + 10 > buf.length) return null;
    const type = buf.readUInt16BE(n.end);
    const ttl = buf.readUInt32BE(n.end + 4);
    const len = buf.readUInt16BE(n.end + 8);
    const data = n.end + 10;
    if (data + len > buf.length) return null;
    if (type === TYPE_A && len === 4) records.push({ name: n.name, address: `${buf[data]}.${buf[data + 1]}.${buf[data + 2]}.${buf[data + 3]}`, ttl });
    if (type === TYPE_CNAME) {
      const t = readName(buf, data);
      if (t !== null) cnames.push({ name: n.name, target: t.name });
    }
    off = data + len;
  }
  return { id: buf.readUInt16BE(0), rcode: flags & 0xf, truncated: (flags & 0x200) !== 0, records, cnames };
}

/** The A records of `name` and of the names its CNAME chain leads to (at most 16 links). */
export function chainRecords(name: string, a: { records: ARecord[]; cnames: { name: string; target: string }[] }): ARecord[] {
  const chain = new Set([name]);
  let cur = name;
  for (let i = 0; i < 16; i++) {
    const next = a.cnames.find((c) => c.name === cur);
    if (!next || chain.has(next.target)) break;
    chain.add(next.target);
    cur = next.target;
  }
  return a.records.filter((r) => chain.has(r.name));
}

/** A query for `name` of `type`, for an upstream. */
export function buildQuery(id: number, name: string, type: number): Buffer {
  const parts = name === '' ? [] : name.split('.');
  const q = Buffer.alloc(12 + parts.reduce((s, l) => s + l.length + 1, 0) + 1 + 4);
  q.writeUInt16BE(id, 0);
  q.writeUInt16BE(0x0100, 2); // RD
  q.writeUInt16BE(1, 4);
  let off = 12;
  for (const l of parts) {
    q[off++] = l.length;
    off += q.write(l, off, 'latin1');
  }
  q[off++] = 0;
  q.writeUInt16BE(type, off);
  q.writeUInt16BE(1, off + 2);
  return q;
}

/**
 * An answer to `query` made here: its header and question copied, QR RA set, `rcode`, and
 * A records for the question's name (TTL each).
 */
export function buildAnswer(query: Buffer, q: Question, rcode: number, addresses: readonly string[] = [], ttl = 60): Buffer {
  const head = Buffer.from(query.subarray(0, q.end));
  head.writeUInt16BE(0x8000 | (q.opcode << 11) | (q.rd ? 0x100 : 0) | 0x80 | (rcode & 0xf), 2);
  head.writeUInt16BE(1, 4);
  head.writeUInt16BE(addresses.length, 6);
  head.writeUInt16BE(0, 8);
  head.writeUInt16BE(0, 10);
  const rrs = addresses.map((a) => {
    const rr = Buffer.alloc(16);
    rr.writeUInt16BE(0xc00c, 0); // the question's name
    rr.writeUInt16BE(TYPE_A, 2);
    rr.writeUInt16BE(1, 4);
    rr.writeUInt32BE(ttl, 6);
    rr.writeUInt16BE(4, 10);
    a.split('.').forEach((o, i) => (rr[12 + i] = Number(o)));
    return rr;
  });
  return Buffer.concat([head, ...rrs]);
}

/** A header-only error answer for a message that did not parse as a query (FORMERR). */
export function formErr(buf: Buffer): Buffer | null {
  if (buf.length < 12 || buf.readUInt16BE(2) & 0x8000) return null;
  const h = Buffer.alloc(12);
  buf.copy(h, 0, 0, 2);
  h.writeUInt16BE(0x8000 | RCODE_FORMERR, 2);
  return h;
}

/**
 * The name check of HTTP and TLS connections (ports 80, 443) to admitted addresses, without
 * terminating TCP: the kernel forwards each connection itself, and only the first data
 * segments of a new one are held in this process's netfilter queue until the TLS ClientHello's
 * SNI or the HTTP request's Host is read (sniOf/hostOf, sni-proxy.ts) and decided by the
 * sandbox's policy. Then every held segment is released in order (the connection goes on in
 * the kernel, later packets never come here) or the connection is refused (TCP reset to the
 * sandbox at once, and a violation). So the bytes of an allowed connection cross the host's
 * stack once, as with plain NAT.
 *
 * How the kernel and this file talk (nat.ts for `inet hutch`, addon/nfqueue.cc for the queue's
 * table):
 * - a sandbox's forward chain marks the conntrack entry of a new TCP connection to an admitted
 *   address on 80/443 "pending for queue N" (`pendingMark(N)`, N this process's queue);
 * - this process's table `ip hutchq<N>` (forward hook, just before `inet hutch`) sends every
 *   packet from the sandbox of a pending connection to queue N, without a bypass: if nothing
 *   reads the queue the packet is dropped, never forwarded unchecked;
 * - a verdict here sets the packet mark and repeats the table's chain (NF_REPEAT): `allow`
 *   turns the conntrack mark into `checked` (later packets skip the queue), `refuse` rejects
 *   with a TCP reset, `pass` lets a segment without data through (the handshake's ACK);
 * - `inet hutch` resets any packet of a pending connection that did not come through the
 *   queue with `pass` (the queue's table is gone: this process died, and the kernel deleted
 *   the table its socket owned). The packet mark cannot be forged by the sandbox: it is
 *   cleared when a packet crosses the veth into the host's namespace.
 *
 * One queue per hutch process (a queue number binds to one socket), found free at first use,
 * closed when its last sandbox closes (the kernel then deletes the table).
 */
import { HutchError, errnoName } from '../errors.js';
import { isFailure, native, type Watch } from '../native.js';
import { HEAD_MAX, HELLO_MAX, hostOf, sniOf } from './sni-proxy.js';

/** Conntrack marks (`ct mark`): pending for queue N, and checked. */
export const PENDING_BASE = 0x48510000;
export const PENDING_MASK = 0xffff0000;
export const CHECKED = 0x48520000;
/** Packet marks (`meta mark`) a verdict sets (cleared by `inet hutch`); the sandbox's own packets arrive with mark 0. */
export const MARK_BASE = 0x48530000;
export const ALLOW = 0x48530001;
export const REFUSE = 0x48530002;
export const PASS = 0x48530003;

export function pendingMark(queue: number): number {
  return (PENDING_BASE | queue) >>> 0;
}

const NF_DROP = 0;
const NF_REPEAT = 4;

/** A connection whose name is still incomplete this long after its first data: no name. */
const FIRST_BYTES_MS = 10_000;
/** Connections being checked at once per sandbox; past it, new ones are refused. */
const MAX_FLOWS = 4096;
/** Segments and bytes held for one connection before its name is read (retransmissions included); past them, refused. */
const MAX_HELD = 256;
const MAX_HELD_BYTES = 256 * 1024;
/** A connection that sends nothing this long after its SYN is forgotten (its data is then refused). */
const IDLE_MS = 300_000;
/** A decided connection is remembered this long (packets already queued get the same verdict). */
const DECIDED_MS = 30_000;

const FIRST_QUEUE = 0x4800;
const QUEUES = 0x800;

export interface NameCheck {
  /** true, or the reason the connection is refused (may wait for `ask`); name null: none was sent. */
  decide(name: string | null, dst: { address: string; port: number }): Promise<true | string>;
  refused(v: { host: string | null; address: string; port: number; reason: string }): void;
}

interface Segment {
  id: number;
  seq: number;
  data: Buffer;
}

interface Flow {
  src: string;
  dst: { address: string; port: number };
  held: Segment[];
  heldBytes: number;
  verdict: 'allow' | 'refuse' | null;
  /** Where the stream starts: the SYN's sequence number + 1. */
  base: number;
  deciding: boolean;
  timer: NodeJS.Timeout | null;
}

let queue: { number: number; fd: number; watch: Watch } | null = null;
let users = 0;
const checks = new Map<string, NameCheck>();
const flows = new Map<string, Flow>();
const perSandbox = new Map<string, number>();

const FIN = 0x01;
const SYN = 0x02;
const RST = 0x04;

function verdict(id: number, v: number, mark?: number): void {
  if (!queue) return;
  native().nfqVerdict(queue.fd, queue.number, id, v, mark);
}

function readPending(): void {
  if (!queue) return;
  for (const p of native().nfqRead(queue.fd)) onPacket(p);
}

function onPacket(p: ReturnType<ReturnType<typeof native>['nfqRead']>[number]): void {
  if (p.proto !== 6 || p.src === undefined || p.data === undefined) return verdict(p.id, NF_DROP);
  const key = `${p.src}:${p.sport}>${p.dst}:${p.dport}`;
  let flow = flows.get(key);
  // A SYN that is not a retransmission of this flow's: a new connection on the same ports (a
  // decided flow's verdict must never carry over to it).
  if (flow && p.flags! & SYN && (flow.verdict !== null || flow.held.length > 0 || flow.base !== ((p.seq! + 1) >>> 0))) {
    forget(key, flow);
    flow = undefined;
  }
  if (flow?.verdict === 'refuse') return verdict(p.id, NF_REPEAT, REFUSE);
  if (flow?.verdict === 'allow') return verdict(p.id, NF_REPEAT, ALLOW);
  const check = checks.get(p.src);
  if (!check) return verdict(p.id, NF_REPEAT, REFUSE);
  const dst = { address: p.dst!, port: p.dport! };
  if (p.flags! & SYN) {
    // Data in a SYN (TCP Fast Open) would reach the server before any name is read: dropped;
    // the client's kernel sends the SYN again without it (and stops trying Fast Open there).
    if (p.data.length > 0) return verdict(p.id, NF_DROP);
    if (!flow) {
      if ((perSandbox.get(p.src) ?? 0) >= MAX_FLOWS) {
        check.refused({ host: null, ...dst, reason: 'not allowed (too many connections being checked)' });
        return verdict(p.id, NF_REPEAT, REFUSE);
      }
      // The stream starts right after the SYN's sequence number: the name is read from there.
      const f: Flow = { src: p.src, dst, held: [], heldBytes: 0, base: (p.seq! + 1) >>> 0, verdict: null, deciding: false, timer: null };
      f.timer = setTimeout(() => forget(key, f), IDLE_MS).unref();
      flows.set(key, f);
      perSandbox.set(p.src, (perSandbox.get(p.src) ?? 0) + 1);
    }
    return verdict(p.id, NF_REPEAT, PASS);
  }
  if (!flow) {
    if (p.data.length === 0) return verdict(p.id, NF_REPEAT, PASS);
    // Its SYN was not seen here, or too long ago: where its stream starts is not known.
    check.refused({ host: null, ...dst, reason: 'not allowed (no name in time)' });
    return verdict(p.id, NF_REPEAT, REFUSE);
  }
  const f = flow;
  // No data (the handshake's ACK, a FIN or RST): nothing to read, let it through; a connection
  // that closes before sending anything is forgotten.
  if (p.data.length === 0) {
    verdict(p.id, NF_REPEAT, PASS);
    if (p.flags! & (FIN | RST) && f.held.length === 0 && !f.deciding) forget(key, f);
    return;
  }
  // Before the stream's start: not a segment the sandbox's kernel sends; never forwarded.
  if (((p.seq! - f.base) | 0) < 0) return verdict(p.id, NF_DROP);
  if (f.held.length === 0 && f.timer) {
    clearTimeout(f.timer); // the idle timer: from now on, FIRST_BYTES_MS for the name
    f.timer = null;
  }
  f.held.push({ id: p.id, seq: p.seq!, data: p.data });
  if (f.deciding) return;
  const limit = f.dst.port === 443 ? HELLO_MAX : HEAD_MAX;
  // Segments past a gap that never fills (the sandbox's kernel does not send those): bounded.
  f.heldBytes += p.data.length;
  if (f.held.length > MAX_HELD || f.heldBytes > MAX_HELD_BYTES) return decideFlow(key, f, null, 'not allowed (no name in time)');
  const bytes = contiguous(f, limit);
  const parse = f.dst.port === 443 ? sniOf : hostOf;
  let name = parse(bytes);
  if (name === undefined && bytes.length >= limit) name = null;
  if (name === undefined) {
    f.timer ??= setTimeout(() => decideFlow(key, f, null), FIRST_BYTES_MS).unref();
    return;
  }
  decideFlow(key, f, name);
}

function forget(key: string, f: Flow): void {
  if (flows.get(key) !== f) return;
  flows.delete(key);
  if (f.timer) clearTimeout(f.timer);
  const n = (perSandbox.get(f.src) ?? 1) - 1;
  if (n > 0) perSandbox.set(f.src, n);
  else perSandbox.delete(f.src);
}

/** The held bytes from the flow's first sequence number on, up to the first gap (at most `limit` + a segment). */
function contiguous(f: Flow, limit: number): Buffer {
  const segs = f.held.map((s) => ({ rel: (s.seq - f.base) >>> 0, data: s.data })).sort((a, b) => a.rel - b.rel);
  const parts: Buffer[] = [];
  let end = 0;
  for (const s of segs) {
    if (s.rel > end || end >= limit) break;
    if (s.rel + s.data.length <= end) continue; // a retransmission of bytes held already
    parts.push(s.data.subarray(end - s.rel));
    end = s.rel + s.data.length;
  }
  return Buffer.concat(parts);
}

/** Decides the connection by `name` (or refuses it for `refusal`), then releases or refuses every held segment. */
function decideFlow(key: string, f: Flow, name: string | null, refusal: string | null = null): void {
  if (f.deciding) return;
  f.deciding = true;
  if (f.timer) clearTimeout(f.timer);
  f.timer = null;
  const check = checks.get(f.src);
  const answer = refusal !== null || !check ? Promise.resolve(refusal ?? 'not allowed') : check.decide(name, f.dst).catch(() => 'not allowed');
  void answer.then((v) => {
    f.verdict = v === true ? 'allow' : 'refuse';
    if (v !== true) check?.refused({ host: name, address: f.dst.address, port: f.dst.port, reason: v });
    // Released in sequence order, so the server sees the stream as it was sent.
    const held = f.held.sort((a, b) => ((a.seq - f.base) >>> 0) - ((b.seq - f.base) >>> 0));
    f.held = [];
    // Each with the mark: any of them may be gone (the kernel drops every queued packet of
    // the namespace when any netfilter hook is removed, e.g. another sandbox's nat chain), and
    // whichever gets through first turns the connection checked.
    for (const s of held) verdict(s.id, NF_REPEAT, f.verdict === 'refuse' ? REFUSE : ALLOW);
    setTimeout(() => forget(key, f), DECIDED_MS).unref();
  });
}

/**
 * This process's queue, opened (with its table) on first use: its number, for the sandbox's
 * forward chain. Each call takes a reference, given back by `releaseQueue`.
 */
export function acquireQueue(): number {
  if (queue) {
    users++;
    return queue.number;
  }
  const n = native();
  const start = process.pid % QUEUES;
  let last: { step: string; errno: number; detail?: string } | null = null;
  for (let i = 0; i < 64; i++) {
    const number = FIRST_QUEUE + ((start + i) % QUEUES);
    const fd = n.nfqOpen(number);
    if (isFailure(fd)) {
      last = fd;
      continue; // bound by another process (EPERM)
    }
    const t = n.nfqTable(number, { pending: pendingMark(number), checked: CHECKED, allow: ALLOW, refuse: REFUSE, pass: PASS });
    if (t !== true) {
      n.nfqClose(fd, number);
      last = t;
      if (t.errno === 17) continue; // EEXIST: a table of that number (another process's)
      break;
    }
    const watch = new n.Watch(fd, () => readPending());
    watch.unref();
    queue = { number, fd, watch };
    users = 1;
    return number;
  }
  const why = last ? `${last.step}: ${errnoName(last.errno)}${last.detail ? ` (${last.detail})` : ''}` : 'no queue number free';
  throw new HutchError('ESETUP', `network: opening the netfilter queue of the name check failed (${why}); it needs CONFIG_NETFILTER_NETLINK_QUEUE, CONFIG_NETFILTER_XT_TARGET_NFQUEUE and CONFIG_NFT_COMPAT`, { step: 'network', errno: last ? errnoName(last.errno) : undefined });
}

/** Gives back a reference; the last one closes the queue (the kernel deletes its table). */
export function releaseQueue(): void {
  if (!queue || --users > 0) return;
  abandonQueue();
}

/** This process's queue number, null when it has none open. */
export function queueNumber(): number | null {
  return queue?.number ?? null;
}

/**
 * Closes the queue and its table now, whatever sandboxes still use them: what the kernel does
 * when this process dies (the tests prove the fail-closed path with it).
 */
export function abandonQueue(): void {
  if (!queue) return;
  users = 0;
  queue.watch.close();
  native().nfqClose(queue.fd, queue.number);
  queue = null;
  for (const f of flows.values()) if (f.timer) clearTimeout(f.timer);
  flows.clear();
  perSandbox.clear();
}

/** Sends the connections of the sandbox at `address` to `check` until the returned function is called. */
export function onNameCheck(address: string, check: NameCheck): () => void {
  checks.set(address, check);
  return () => {
    if (checks.get(address) === check) checks.delete(address);
  };
}

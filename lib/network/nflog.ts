/**
 * Refused packets, as the kernel saw them: a sandbox's forward chain logs each refusal (rate
 * limited in the rule, 50/s burst 100 per sandbox) to this process's NFLOG group with the
 * reason as prefix; the addon reads the group (nflog.cc) and the records go to the sandbox
 * whose address sent them. One group per hutch process, bound on first use; when none can be
 * bound the refusals still happen, only unreported (`nflogGroup()` null).
 */
import { isFailure, native, type Watch } from '../native.js';

export interface RefusedPacket {
  reason: string;
  address: string;
  port: number | null;
  protocol: 'tcp' | 'udp';
}

const FIRST_GROUP = 0x4800;
const GROUPS = 0x800;
let reader: { group: number; fd: number; watch: Watch } | null | undefined;
const listeners = new Map<string, (p: RefusedPacket) => void>();

function readPending(fd: number): void {
  for (const r of native().nflogRead(fd)) {
    const cb = listeners.get(r.src);
    if (cb && (r.proto === 6 || r.proto === 17)) cb({ reason: r.prefix, address: r.dst, port: r.dport, protocol: r.proto === 6 ? 'tcp' : 'udp' });
    else if (cb) cb({ reason: r.prefix, address: r.dst, port: null, protocol: 'udp' });
  }
}

/** Reads every record already queued, now (before a refused-packet counter is compared with them). */
export function drainRefused(): void {
  if (reader) readPending(reader.fd);
}

/** This process's NFLOG group, bound on first call; null when none could be bound. */
export function nflogGroup(): number | null {
  if (reader !== undefined) return reader?.group ?? null;
  const n = native();
  reader = null;
  const start = FIRST_GROUP + (process.pid % GROUPS);
  for (let i = 0; i < 32; i++) {
    const group = FIRST_GROUP + ((start - FIRST_GROUP + i) % GROUPS);
    const fd = n.nflogOpen(group);
    if (isFailure(fd)) continue;
    const watch = new n.Watch(fd, () => readPending(fd));
    watch.unref();
    reader = { group, fd, watch };
    break;
  }
  return reader?.group ?? null;
}

/** Sends the refusals of packets from `address` (a sandbox) to `cb` until the returned function is called. */
export function onRefusedPacket(address: string, cb: (p: RefusedPacket) => void): () => void {
  listeners.set(address, cb);
  return () => {
    if (listeners.get(address) === cb) listeners.delete(address);
  };
}

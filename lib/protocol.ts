/**
 * The control protocol to init (addon/init/protocol.h is the C side): SOCK_SEQPACKET, one
 * message per request or report, host byte order (little-endian on every Linux hutch runs on).
 */
import { EXEC_STEPS as EXEC_STEP_NAMES } from './errors.js';

type ExecStep = (typeof EXEC_STEP_NAMES)[number];

export const MSG = { EXEC: 1, KILL: 2, STARTED: 101, FAILED: 102, EXITED: 103, PROTOCOL_ERROR: 104, VIOLATION: 105 } as const;
export const EXEC_FLAGS = { SECCOMP: 1, NO_NEW_PRIVS: 2, TTY: 4, KEEP_GROUPS: 8, SECCOMP_NOTIFY: 16 } as const;

/** Steps of an exec inside the sandbox (MSG_FAILED), by number. */
export const EXEC_STEPS: Record<number, ExecStep> = Object.fromEntries(EXEC_STEP_NAMES.map((name, i) => [i + 1, name]));

export interface ExecRequest {
  id: number;
  uid: number;
  gid: number;
  caps: bigint;
  noNewPrivs: boolean;
  /** setgroups is denied in the sandbox (a one-id map written unprivileged): init leaves the groups alone. */
  keepGroups?: boolean;
  rlimits: { resource: number; soft: number; hard: number }[];
  seccomp: Buffer | null;
  /** The program refuses by notifying: init installs it with a listener and reports refusals (MSG_VIOLATION). */
  seccompNotify?: boolean;
  cwd: string;
  argv: string[];
  env: string[];
  /** A pty of this size instead of stdio fds: init sends its master back with MSG_STARTED. */
  tty?: { columns: number; rows: number };
}

const EXEC_HEADER = 48;
/** struct tty_req: columns, rows (u16 each), pad. */
const TTY_REQ = 8;
const RLIM_INFINITY = 0xffffffffffffffffn;

function rlim(v: number): bigint {
  return v === Infinity || v < 0 ? RLIM_INFINITY : BigInt(Math.floor(v));
}

/** Writes rlimit records (resource u32, pad, soft u64, hard u64: 24 bytes each; Infinity or a negative value is RLIM_INFINITY); returns the offset after them. */
export function writeRlimits(buf: Buffer, off: number, rlimits: readonly { resource: number; soft: number; hard: number }[]): number {
  for (const l of rlimits) {
    buf.writeUInt32LE(l.resource, off);
    buf.writeBigUInt64LE(rlim(l.soft), off + 8);
    buf.writeBigUInt64LE(rlim(l.hard), off + 16);
    off += 24;
  }
  return off;
}

export function encodeExec(r: ExecRequest): Buffer {
  const strings = Buffer.from([r.cwd, ...r.argv, ...r.env].join('\0') + '\0', 'utf8');
  const prog = r.seccomp ?? Buffer.alloc(0);
  const ttyLen = r.tty ? TTY_REQ : 0;
  const buf = Buffer.alloc(EXEC_HEADER + ttyLen + r.rlimits.length * 24 + prog.length + strings.length);
  buf.writeUInt32LE(MSG.EXEC, 0);
  buf.writeUInt32LE(r.id, 4);
  buf.writeUInt32LE(r.uid, 8);
  buf.writeUInt32LE(r.gid, 12);
  buf.writeBigUInt64LE(r.caps, 16);
  buf.writeUInt32LE((r.seccomp ? EXEC_FLAGS.SECCOMP : 0) | (r.noNewPrivs ? EXEC_FLAGS.NO_NEW_PRIVS : 0) | (r.tty ? EXEC_FLAGS.TTY : 0) | (r.keepGroups ? EXEC_FLAGS.KEEP_GROUPS : 0) | (r.seccomp && r.seccompNotify ? EXEC_FLAGS.SECCOMP_NOTIFY : 0), 24);
  buf.writeUInt32LE(r.rlimits.length, 28);
  buf.writeUInt32LE(prog.length, 32);
  buf.writeUInt32LE(r.argv.length, 36);
  buf.writeUInt32LE(r.env.length, 40);
  buf.writeUInt32LE(strings.length, 44);
  let off = EXEC_HEADER;
  if (r.tty) {
    buf.writeUInt16LE(r.tty.columns, off);
    buf.writeUInt16LE(r.tty.rows, off + 2);
    off += TTY_REQ;
  }
  off = writeRlimits(buf, off, r.rlimits);
  prog.copy(buf, off);
  off += prog.length;
  strings.copy(buf, off);
  return buf;
}

export function encodeKill(id: number, signal: number, group: boolean): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(MSG.KILL, 0);
  b.writeUInt32LE(id, 4);
  b.writeInt32LE(signal, 8);
  b.writeUInt32LE(group ? 1 : 0, 12);
  return b;
}

export type InitMessage =
  | { type: 'started'; id: number; pid: number; fd?: number }
  | { type: 'failed'; id: number; errno: number; step: ExecStep }
  | { type: 'exited'; id: number; status: number; utimeUs: number; stimeUs: number; maxrssKb: number }
  | { type: 'protocol-error'; id: number; code: number }
  /** A call the exec's seccomp program refused (nr >= 0), or only a count (nr -1); `dropped`: refusals not reported before it. */
  | { type: 'violation'; id: number; pid: number; nr: number; arch: number; errno: number; dropped: number };

export function decode(m: Buffer): InitMessage | undefined {
  if (m.length < 16) return undefined;
  const type = m.readUInt32LE(0);
  const id = m.readUInt32LE(4);
  switch (type) {
    case MSG.STARTED: {
      // A pty's master, when init sent one (addon/fdpass.cc: Recv).
      const fd = (m as Buffer & { fd?: number }).fd;
      return fd === undefined ? { type: 'started', id, pid: m.readInt32LE(8) } : { type: 'started', id, pid: m.readInt32LE(8), fd };
    }
    case MSG.FAILED:
      return { type: 'failed', id, errno: m.readInt32LE(8), step: EXEC_STEPS[m.readUInt32LE(12)] ?? 'exec' };
    case MSG.EXITED:
      if (m.length < 40) return undefined;
      return {
        type: 'exited',
        id,
        status: m.readInt32LE(8),
        utimeUs: Number(m.readBigUInt64LE(16)),
        stimeUs: Number(m.readBigUInt64LE(24)),
        maxrssKb: Number(m.readBigUInt64LE(32)),
      };
    case MSG.PROTOCOL_ERROR:
      return { type: 'protocol-error', id, code: m.readUInt32LE(8) };
    case MSG.VIOLATION: {
      if (m.length < 32) return undefined;
      const countOnly = (m.readUInt32LE(28) & 1) !== 0;
      return { type: 'violation', id, pid: m.readInt32LE(8), nr: countOnly ? -1 : m.readInt32LE(12), arch: m.readUInt32LE(16), errno: m.readUInt32LE(20), dropped: m.readUInt32LE(24) };
    }
    default:
      return undefined;
  }
}

/** Decodes a wait status: exit code or terminating signal number. */
export function waitStatus(status: number): { code: number | null; signal: number | null } {
  const sig = status & 0x7f;
  if (sig === 0) return { code: (status >> 8) & 0xff, signal: null };
  return { code: null, signal: sig };
}

/**
 * The plan a template's fork receives from the host (addon/zygote/helper.c, struct hz_plan):
 * a fixed header, the rlimits, the compiled seccomp program, and NUL-ended strings.
 */
import type { RlimitSetting } from '../limits.js';
import { writeRlimits } from '../protocol.js';

export interface ForkPlan {
  uid: number;
  gid: number;
  caps: bigint;
  rlimits: readonly Pick<RlimitSetting, 'resource' | 'soft' | 'hard'>[];
  seccomp: Buffer | null;
  scratchSize: string;
  shmSize: string;
  hostname: string;
  masked: readonly string[];
  readonly: readonly string[];
  /** Mount points of the template not carried into forks (the zygote's own files). */
  skip: readonly string[];
  readonlyRoot: boolean;
  /** fork(): the task is hutch's init (its binary is the last fd sent with the plan). */
  asInit?: boolean;
  /** The host gives the fork's network namespace a link: the fork says 'L' once it exists and waits for 'C'. */
  network?: boolean;
  /** Before Linux 6.8 (no overlay "lowerdir+"): the layers go to overlay as one "lowerdir" list. */
  lowerList?: boolean;
  /** Before 6.6 (tmpfs keeps no user.* xattrs): upper/ and work/ are in a directory on the store's disk, sent after the layers. */
  diskUpper?: boolean;
}

const MAGIC = 0x315a5048; // "HPZ1"
const HEADER = 56;

export function encodePlan(p: ForkPlan): Buffer {
  const list = (xs: readonly string[]): string => xs.map((x) => `${x}\0`).join('') + '\0';
  const strings = Buffer.from(`${p.scratchSize}\0${p.shmSize}\0${p.hostname}\0${list(p.masked)}${list(p.readonly.map((r) => r))}${list(p.skip)}`);
  const prog = p.seccomp ?? Buffer.alloc(0);
  const buf = Buffer.alloc(HEADER + p.rlimits.length * 24 + prog.length + strings.length);
  buf.writeUInt32LE(MAGIC, 0);
  buf.writeUInt32LE(p.uid, 4);
  buf.writeUInt32LE(p.gid, 8);
  buf.writeUInt32LE(p.rlimits.length, 12);
  buf.writeBigUInt64LE(p.caps, 16);
  buf.writeUInt32LE(prog.length, 24);
  buf.writeUInt32LE(strings.length, 28);
  buf.writeUInt32LE(p.readonlyRoot ? 1 : 0, 32);
  buf.writeUInt32LE(p.asInit ? 1 : 0, 36);
  buf.writeUInt32LE(p.network ? 1 : 0, 40);
  buf.writeUInt32LE(p.lowerList ? 1 : 0, 44);
  buf.writeUInt32LE(p.diskUpper ? 1 : 0, 48);
  const off = writeRlimits(buf, HEADER, p.rlimits);
  prog.copy(buf, off);
  strings.copy(buf, off + prog.length);
  return buf;
}

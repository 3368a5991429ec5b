/**
 * A plan and the resources made for it, as the flat buffer addon/plan.h declares: a header,
 * then the ops the setup child carries out in order, each naming the step its failure reports.
 * Little-endian (every architecture hutch builds for). A test checks these numbers against the
 * addon's (`native().planLayout`).
 */
import { constants } from 'node:os';
import { HutchError } from '../errors.js';
import { SETUP_STEPS, type SetupStep } from '../setup-errors.js';
import type { MountAttr, SandboxPlan } from './plan.js';
import { takeInjectedFailure } from './testing.js';

export const PLAN_MAGIC = 0x4e4c5048; // "HPLN"
export const PLAN_VERSION = 1;
export const PLAN_MAX = 128 * 1024;
export const PLAN_MAX_FDS = 253;
export const HEADER_SIZE = 32;
export const OP_SIZE = 24;
/** Field offsets, as `offsetof` gives them in addon/plan.h. */
export const OFFSETS = {
  'plan_header.magic': 0, 'plan_header.version': 4, 'plan_header.header_size': 6, 'plan_header.length': 8,
  'plan_header.op_count': 12, 'plan_header.fd_count': 16, 'plan_header.fail_step': 20, 'plan_header.fail_errno': 24,
  'plan_op.type': 0, 'plan_op.step': 2, 'plan_op.size': 4, 'plan_op.fd': 8, 'plan_op.flags': 12, 'plan_op.nstr': 14,
  'plan_op.attrs': 16,
} as const;
export const OPS = {
  HOSTNAME: 1, CHDIR_LAYERS: 2, OVERLAY_BEGIN: 3, ROOT_MOUNTPOINT: 4, UPPER_DIR: 5, SETID: 6, SCRATCH: 7,
  OVERLAY_FINISH: 8, BIND: 9, MOUNT: 10, DEV_NODE: 11, SYMLINK: 12, MASK: 13, READONLY: 14, READONLY_ROOT: 15,
  PIVOT_ROOT: 16, LOCK_MOUNTS: 17,
} as const;
export const FLAGS = {
  LEGACY: 1, FILE: 2, PATH: 4, MOUNT_ATTR_RDONLY: 0x1, MOUNT_ATTR_NOSUID: 0x2, MOUNT_ATTR_NODEV: 0x4, MOUNT_ATTR_NOEXEC: 0x8,
} as const;

const ATTR: Record<MountAttr, number> = {
  rdonly: FLAGS.MOUNT_ATTR_RDONLY, nosuid: FLAGS.MOUNT_ATTR_NOSUID, nodev: FLAGS.MOUNT_ATTR_NODEV, noexec: FLAGS.MOUNT_ATTR_NOEXEC,
};
const attrs = (a: MountAttr[]): number => a.reduce((m, x) => m | ATTR[x], 0);
/** Each setup step's number (its index in SETUP_STEPS, as addon/steps.h numbers them). */
const STEP_NUMBER = new Map<string, number>(SETUP_STEPS.map((s, i) => [s, i]));

/** Key/value pairs as one list (Array.prototype.flat goes through V8's runtime: slow on this path). */
function pairs(kv: readonly (readonly [string, string])[], into: string[]): string[] {
  for (const [k, v] of kv) into.push(k, v);
  return into;
}

/** What start made for the plan: the names and fds only known then. */
export interface PlanResources {
  hostname: string;
  /** The idmapped trees of the layers (per-sandbox id ranges), parallel to plan.overlay.layers, or null. */
  layerFds: number[] | null;
  /**
   * One per bind mount of the plan, in order: its detached tree and whether it is a file; or,
   * in user mode (the parent may not clone host mounts), fd -1 and the child clones the source.
   */
  binds: { fd: number; file: boolean }[];
  /** The on-disk directory holding upper/ and work/ (upper kind 'disk' or 'dir'). */
  upperDir: string | null;
}

interface Op {
  type: number;
  step: SetupStep;
  strs: string[];
  fd?: number;
  flags?: number;
  attrs?: number;
}

/** The encoded plan and the fds it names, in index order. */
export function encodePlan(plan: SandboxPlan, res: PlanResources): { buf: Buffer; fds: number[] } {
  const fds: number[] = [];
  const ops: Op[] = [];
  const legacy = plan.overlay.mode === 'legacy';
  ops.push({ type: OPS.HOSTNAME, step: 'hostname', strs: [res.hostname] });
  // With host root's ids still: the store's dirs may be closed to the sandbox's range.
  ops.push({ type: OPS.CHDIR_LAYERS, step: 'layers', strs: [plan.overlay.layersDir] });
  let layerFd = -1;
  if (res.layerFds) {
    if (legacy || res.layerFds.length !== plan.overlay.layers.length) {
      throw new HutchError('EINVAL', 'plan: idmapped layer trees need the lowerdir+ overlay path and one tree per layer');
    }
    layerFd = fds.length;
    fds.push(...res.layerFds);
  }
  ops.push({ type: OPS.OVERLAY_BEGIN, step: 'overlay', strs: plan.overlay.layers, fd: layerFd, flags: legacy ? FLAGS.LEGACY : 0 });
  ops.push({ type: OPS.ROOT_MOUNTPOINT, step: 'root_attach', strs: [plan.rootMountpoint] });
  if (plan.upper.kind !== 'tmpfs') {
    if (!res.upperDir) throw new HutchError('EINVAL', `plan: a writable layer of kind ${plan.upper.kind} needs its directory`);
    ops.push({ type: OPS.UPPER_DIR, step: 'scratch', strs: [res.upperDir] });
  }
  ops.push({ type: OPS.SETID, step: 'setid', strs: [plan.idMap.setgroups ? 'setgroups' : 'keep-groups'] });
  if (plan.upper.kind === 'tmpfs') ops.push({ type: OPS.SCRATCH, step: 'scratch', strs: ['tmpfs', String(plan.upper.sizeBytes)] });
  ops.push({ type: OPS.OVERLAY_FINISH, step: 'overlay', strs: [plan.overlay.legacyData ?? ''], flags: legacy ? FLAGS.LEGACY : 0 });
  let b = 0;
  for (const m of plan.mounts) {
    switch (m.kind) {
      case 'bind': {
        const t = res.binds[b++];
        if (!t) throw new HutchError('EINVAL', 'plan: fewer bind trees than bind mounts');
        if (t.fd < 0) {
          const a: MountAttr[] = m.readonly ? ['rdonly', 'nosuid', 'nodev'] : ['nosuid', 'nodev'];
          ops.push({ type: OPS.BIND, step: 'bind', strs: [m.target, m.source], fd: -1, flags: FLAGS.PATH | (t.file ? FLAGS.FILE : 0), attrs: attrs(a) });
          break;
        }
        ops.push({ type: OPS.BIND, step: 'bind', strs: [m.target], fd: fds.length, flags: t.file ? FLAGS.FILE : 0 });
        fds.push(t.fd);
        break;
      }
      case 'fs':
        ops.push({ type: OPS.MOUNT, step: m.step, strs: pairs(m.options, [m.target, m.fstype]), attrs: attrs(m.attrs) });
        break;
      case 'devNode':
        ops.push({ type: OPS.DEV_NODE, step: 'dev', strs: [m.host, m.target] });
        break;
      case 'symlink':
        ops.push({ type: OPS.SYMLINK, step: 'dev', strs: [m.path, m.text] });
        break;
    }
  }
  if (b !== res.binds.length) throw new HutchError('EINVAL', 'plan: more bind trees than bind mounts');
  const maskAttrs = attrs(plan.maskDir.attrs);
  for (const p of plan.masked) ops.push({ type: OPS.MASK, step: 'mask', strs: pairs(plan.maskDir.options, [p]), attrs: maskAttrs });
  for (const p of plan.readonly) ops.push({ type: OPS.READONLY, step: 'readonly', strs: [p], attrs: attrs(plan.readonlyAttrs) });
  if (plan.readonlyRoot) ops.push({ type: OPS.READONLY_ROOT, step: 'readonly', strs: ['/'], attrs: FLAGS.MOUNT_ATTR_RDONLY });
  ops.push({ type: OPS.PIVOT_ROOT, step: 'pivot_root', strs: ['/'] });
  ops.push({ type: OPS.LOCK_MOUNTS, step: 'lock_mounts', strs: ['unshare(CLONE_NEWNS)'] });
  if (fds.length > PLAN_MAX_FDS) {
    throw new HutchError('EINVAL', `invalid option mounts: ${fds.length} mount trees (layers and mounts) in one sandbox, the most is ${PLAN_MAX_FDS}; use fewer mounts or flatten the image`);
  }

  // Each string's UTF-8 length, measured once; the strings are written straight into the
  // buffer below (no Buffer per string: about 70 of them per sandbox).
  const sizes: number[] = [];
  let length = HEADER_SIZE;
  for (const op of ops) {
    let len = OP_SIZE;
    for (const s of op.strs) {
      if (s.includes('\0')) throw new HutchError('EINVAL', `plan: a NUL byte in ${JSON.stringify(s.slice(0, 64))}`);
      len += Buffer.byteLength(s, 'utf8') + 1;
    }
    const size = (len + 7) & ~7;
    sizes.push(size);
    length += size;
  }
  if (length > PLAN_MAX) {
    throw new HutchError('EINVAL', `the sandbox's plan is ${length} bytes, more than ${PLAN_MAX}: too many layers or mounts (or too long paths); flatten the image or use fewer mounts`);
  }
  const buf = Buffer.alloc(length);
  const fail = takeInjectedFailure();
  buf.writeUInt32LE(PLAN_MAGIC, 0);
  buf.writeUInt16LE(PLAN_VERSION, 4);
  buf.writeUInt16LE(HEADER_SIZE, 6);
  buf.writeUInt32LE(length, 8);
  buf.writeUInt32LE(ops.length, 12);
  buf.writeUInt32LE(fds.length, 16);
  buf.writeInt32LE(fail ? SETUP_STEPS.indexOf(fail.step as (typeof SETUP_STEPS)[number]) : -1, 20);
  buf.writeInt32LE(fail ? (constants.errno as Record<string, number>)[fail.errno]! : 0, 24);
  let at = HEADER_SIZE;
  for (let i = 0; i < ops.length; i++) {
    const op = ops[i]!;
    const size = sizes[i]!;
    const step = STEP_NUMBER.get(op.step) ?? -1;
    if (step < 0) throw new HutchError('EINVAL', `plan: ${op.step} is not a setup step`);
    buf.writeUInt16LE(op.type, at);
    buf.writeUInt16LE(step, at + 2);
    buf.writeUInt32LE(size, at + 4);
    buf.writeInt32LE(op.fd ?? -1, at + 8);
    buf.writeUInt16LE(op.flags ?? 0, at + 12);
    buf.writeUInt16LE(op.strs.length, at + 14);
    buf.writeUInt32LE(op.attrs ?? 0, at + 16);
    // Each string and its NUL (the buffer is zero-filled: the NUL is there already).
    let s = at + OP_SIZE;
    for (const x of op.strs) s += buf.write(x, s, 'utf8') + 1;
    at += size;
  }
  return { buf, fds };
}

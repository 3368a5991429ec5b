// The sandbox plan (lib/plan/): its decisions, its encoding, and the addon agreeing with both
// (addon/plan.h's layout, exported at load as planLayout), as errors.test.ts does for steps.h.
import { describe, expect, it } from 'vitest';
import { featuresOf } from '../../lib/host/features.js';
import { ImageStore } from '../../lib/index.js';
import { native } from '../../lib/native.js';
import { FLAGS, HEADER_SIZE, OFFSETS, OP_SIZE, OPS, PLAN_MAGIC, PLAN_MAX, PLAN_MAX_FDS, PLAN_VERSION, encodePlan } from '../../lib/plan/encode.js';
import { planSandbox, type SandboxPlan } from '../../lib/plan/index.js';
import { resolveSandboxOptions } from '../../lib/options.js';
import type { ResolvedImage } from '../../lib/image/types.js';

const store = new ImageStore({ root: process.env.HUTCH_ROOT ?? '/var/tmp/hutch-test-store' });
const image: ResolvedImage = {
  image: { id: 'a'.repeat(64) } as ResolvedImage['image'],
  layersDir: '/store/layers',
  lowerdirs: ['1'.repeat(64), '2'.repeat(64)],
  hostBinds: [],
};
const NEW = featuresOf('6.8.0');
const OLD = featuresOf('6.1.0');
const res = { hostname: 'h', layerFds: null, binds: [], upperDir: null };

/** The ops of an encoded plan: [type name, step name, strings]. */
function ops(buf: Buffer): [string, string, string[]][] {
  const names = Object.fromEntries(Object.entries(OPS).map(([k, v]) => [v, k]));
  const steps = native().steps;
  const out: [string, string, string[]][] = [];
  for (let at = HEADER_SIZE; at < buf.length;) {
    const size = buf.readUInt32LE(at + 4);
    const nstr = buf.readUInt16LE(at + 14);
    const strs = buf.subarray(at + OP_SIZE, at + size).toString('utf8').split('\0').slice(0, nstr);
    out.push([names[buf.readUInt16LE(at)]!, steps[buf.readUInt16LE(at + 2)]!, strs]);
    at += size;
  }
  return out;
}

describe('plan layout (addon/plan.h and lib/plan/encode.ts agree)', () => {
  it('has the same magic, version, sizes, offsets, op numbers and flags', () => {
    const l = native().planLayout;
    expect(l.magic).toBe(PLAN_MAGIC);
    expect(l.version).toBe(PLAN_VERSION);
    expect(l.max).toBe(PLAN_MAX);
    expect(l.maxFds).toBe(PLAN_MAX_FDS);
    expect(l.headerSize).toBe(HEADER_SIZE);
    expect(l.opSize).toBe(OP_SIZE);
    expect(l.offsets).toEqual(OFFSETS);
    expect(l.ops).toEqual(OPS);
    expect(l.flags).toEqual(FLAGS);
  });

  it('the addon refuses a malformed plan before anything is cloned', () => {
    const opts = resolveSandboxOptions({ image: 'busybox' });
    const { buf, fds } = encodePlan(planSandbox(opts, image, store, NEW), res);
    const clone = { uidMap: '0 100000 65536\n', gidMap: '0 100000 65536\n', cgroupFd: -1, joinFiles: [] };
    const bad = (mutate: (b: Buffer) => void): Buffer => {
      const b = Buffer.from(buf);
      mutate(b);
      return b;
    };
    expect(() => native().cloneSandbox(bad((b) => b.writeUInt32LE(0, 0)), fds, clone)).toThrow(/bad magic/);
    expect(() => native().cloneSandbox(bad((b) => b.writeUInt16LE(PLAN_VERSION + 1, 4)), fds, clone)).toThrow(/version/);
    expect(() => native().cloneSandbox(buf.subarray(0, buf.length - 8), fds, clone)).toThrow(/length/);
    expect(() => native().cloneSandbox(buf, [5], clone)).toThrow(/fd_count/);
    expect(() => native().cloneSandbox(bad((b) => b.writeUInt16LE(999, HEADER_SIZE)), fds, clone)).toThrow(/unknown op type/);
    expect(() => native().cloneSandbox(bad((b) => b.writeUInt16LE(999, HEADER_SIZE + 2)), fds, clone)).toThrow(/step out of range/);
    // A string that runs past its op (its NUL overwritten, up to the op's padding).
    const size = buf.readUInt32LE(HEADER_SIZE + 4);
    expect(() => native().cloneSandbox(bad((b) => b.fill(0x41, HEADER_SIZE + OP_SIZE, HEADER_SIZE + size)), fds, clone)).toThrow(/not terminated/);
    // No silent defaults for the clone's options.
    expect(() => native().cloneSandbox(buf, fds, { ...clone, uidMap: '' })).toThrow(/uidMap/);
    expect(() => native().cloneSandbox(buf, fds, { gidMap: clone.gidMap, cgroupFd: -1, joinFiles: [] } as never)).toThrow(/uidMap/);
    expect(() => native().cloneSandbox(buf, fds, { ...clone, cgroupFd: undefined } as never)).toThrow(/cgroupFd/);
    expect(() => native().cloneSandbox(buf, fds, { ...clone, joinFiles: undefined } as never)).toThrow(/joinFiles/);
    expect(() => native().cloneSandbox({} as never, fds, clone)).toThrow(/Buffer/);
  });
});

describe('plan encoding', () => {
  it('writes each string whole with its NUL, multi-byte UTF-8 included, every op 8-byte aligned', () => {
    const opts = resolveSandboxOptions({ image: 'busybox' });
    const hostname = 'h\u00e9-\u7bb1-\u{1f4e6}';
    const { buf } = encodePlan(planSandbox(opts, image, store, NEW), { ...res, hostname });
    const decoded = ops(buf);
    expect(decoded[0]).toEqual(['HOSTNAME', 'hostname', [hostname]]);
    expect(decoded[1]![2]).toEqual(['/store/layers']);
    expect(decoded.at(-1)![0]).toBe('LOCK_MOUNTS');
    for (let at = HEADER_SIZE, i = 0; at < buf.length; i++) {
      const size = buf.readUInt32LE(at + 4);
      expect(size % 8).toBe(0);
      // The op's strings and their NULs fit in it, the rest of it is padding (zeros).
      const nstr = buf.readUInt16LE(at + 14);
      const body = buf.subarray(at + OP_SIZE, at + size);
      const used = decoded[i]![2].reduce((n, x) => n + Buffer.byteLength(x) + 1, 0);
      expect(body.subarray(0, used).toString('utf8').split('\0').slice(0, nstr)).toEqual(decoded[i]![2]);
      expect(body.subarray(used).every((b) => b === 0)).toBe(true);
      at += size;
    }
    expect(buf.readUInt32LE(8)).toBe(buf.length);
  });
});

describe('planSandbox decides', () => {
  it('every mount in order, /dev and its shm size included, and the ops the child walks', () => {
    const opts = resolveSandboxOptions({ image: 'busybox', hostname: 'box', mounts: [{ source: '/tmp', target: '/data' }] });
    const plan = planSandbox(opts, image, store, NEW);
    expect(plan.mounts.map((m) => (m.kind === 'bind' ? `bind ${m.target}` : m.kind === 'fs' ? `${m.fstype} ${m.target}` : m.kind === 'devNode' ? `node ${m.target}` : `link ${m.path}`))).toEqual([
      'bind data', 'proc /proc', 'tmpfs /dev', 'node /dev/null', 'node /dev/zero', 'node /dev/full', 'node /dev/random',
      'node /dev/urandom', 'node /dev/tty', 'devpts /dev/pts', 'tmpfs /dev/shm', 'link /dev/ptmx', 'link /dev/fd',
      'link /dev/stdin', 'link /dev/stdout', 'link /dev/stderr',
    ]);
    const shm = plan.mounts.find((m) => m.kind === 'fs' && m.target === '/dev/shm');
    expect(shm).toMatchObject({ options: [['mode', '1777'], ['size', String(64 * 1024 * 1024)]] });
    const { buf, fds } = encodePlan(plan, { ...res, hostname: 'box', binds: [{ fd: 7, file: false }] });
    expect(fds).toEqual([7]);
    const o = ops(buf);
    expect(o.slice(0, 9)).toEqual([
      ['HOSTNAME', 'hostname', ['box']],
      ['CHDIR_LAYERS', 'layers', ['/store/layers']],
      ['OVERLAY_BEGIN', 'overlay', image.lowerdirs],
      ['ROOT_MOUNTPOINT', 'root_attach', [plan.rootMountpoint]],
      ['SETID', 'setid', ['setgroups']],
      ['SCRATCH', 'scratch', ['tmpfs', String(1024 ** 3)]],
      ['OVERLAY_FINISH', 'overlay', ['']],
      ['BIND', 'bind', ['data']],
      ['MOUNT', 'proc', ['/proc', 'proc']],
    ]);
    expect(o.slice(-2)).toEqual([['PIVOT_ROOT', 'pivot_root', ['/']], ['LOCK_MOUNTS', 'lock_mounts', ['unshare(CLONE_NEWNS)']]]);
    expect(o.filter(([t]) => t === 'MASK').map(([, , s]) => s[0])).toContain('proc/kcore');
  });

  it('the overlay path and the writable layer from the kernel, not in C++', () => {
    const opts = resolveSandboxOptions({ image: 'busybox' });
    const p6 = planSandbox(opts, image, store, NEW);
    expect(p6.overlay).toMatchObject({ mode: 'lowerdir+', legacyData: null });
    expect(p6.upper).toEqual({ kind: 'tmpfs', sizeBytes: 1024 ** 3 });
    expect(p6.warmable).toBe(true);
    const p61: SandboxPlan = planSandbox(opts, image, store, OLD);
    expect(p61.overlay).toMatchObject({ mode: 'legacy', legacyData: `userxattr,lowerdir=${image.lowerdirs.join(':')}` });
    expect(p61.upper).toEqual({ kind: 'dir' });
    expect(p61.warmable).toBe(false);
    expect(planSandbox(resolveSandboxOptions({ image: 'busybox', limits: { disk: '64MiB' } }), image, store, OLD).upper).toEqual({ kind: 'disk', sizeBytes: 64 * 1024 * 1024 });
    const legacyOps = ops(encodePlan(p61, { ...res, upperDir: '/store/upper/x' }).buf);
    expect(legacyOps.find(([t]) => t === 'UPPER_DIR')).toEqual(['UPPER_DIR', 'scratch', ['/store/upper/x']]);
    expect(legacyOps.find(([t]) => t === 'OVERLAY_FINISH')![2]).toEqual([p61.overlay.legacyData]);
    expect(() => encodePlan(p61, res)).toThrow(/needs its directory/);
  });

  it('refuses before anything is made what the host cannot do', () => {
    const many: ResolvedImage = { ...image, lowerdirs: Array.from({ length: 80 }, (_, i) => i.toString(16).padStart(64, '0')) };
    expect(() => planSandbox(resolveSandboxOptions({ image: 'busybox' }), many, store, OLD)).toThrow(expect.objectContaining({ code: 'EUNSUPPORTED', message: expect.stringMatching(/80 layers.*Linux 6\.8/) }));
    expect(planSandbox(resolveSandboxOptions({ image: 'busybox' }), many, store, NEW).overlay.layers).toHaveLength(80);
    expect(() => planSandbox(resolveSandboxOptions({ image: 'busybox', limits: { io: { readBps: '1MiB' } } } as never), image, store, NEW)).toThrow(expect.objectContaining({ code: 'EUNSUPPORTED' }));
  });

  it('encodes nothing it cannot carry', () => {
    const plan = planSandbox(resolveSandboxOptions({ image: 'busybox' }), image, store, NEW);
    expect(() => encodePlan(plan, { ...res, hostname: 'a\0b' })).toThrow(/NUL/);
    expect(() => encodePlan(plan, { ...res, binds: [{ fd: 3, file: false }] })).toThrow(/more bind trees/);
    const huge = { ...plan, masked: Array.from({ length: 2000 }, (_, i) => `m/${'x'.repeat(80)}${i}`) };
    expect(() => encodePlan(huge, res)).toThrow(expect.objectContaining({ code: 'EINVAL', message: expect.stringMatching(/plan is \d+ bytes/) }));
  });
});

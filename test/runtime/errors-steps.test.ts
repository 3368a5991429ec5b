// Issue 14 §4: every setup step, failed once through the tests' hook (lib/plan/testing.ts,
// carried in the plan), must come out as ESETUP with that step, the errno, the path the step
// is about and the known hint, and leave nothing behind: no cgroup, no child process, no
// owner record, no mount, no fd. The hook fails the step where it runs (in the parent for
// clone and id_map, else in the setup child), so the error travels the real path.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { kernelFeatures } from '../../lib/host/features.js';
import { ImageStore, Sandbox } from '../../lib/index.js';
import { failSetupOnce } from '../../lib/plan/testing.js';
import { SETUP_STEPS } from '../../lib/setup-errors.js';
import { rmdirSubtreeRoot, sandboxCgroupsIn, subtreeRoots } from '../helpers/leaks.js';

const skip = process.getuid?.() !== 0;
// Sandboxes of this file get a cgroup parent of their own, so that "no cgroup left" is about
// them only, whatever other files run meanwhile.
const parentName = `hutch-steps-${randomBytes(3).toString('hex')}`;
let root: string;
let store: ImageStore;

type Expect = { errno: string; path: string | RegExp; hint?: RegExp };
const layer = (): string => lowerdirs[0]!;
let lowerdirs: string[] = [];
const EXPECT: Record<(typeof SETUP_STEPS)[number], () => Expect> = {
  clone: () => ({ errno: 'EPERM', path: 'clone3', hint: /user namespaces may be disabled/ }),
  sync: () => ({ errno: 'EIO', path: 'prctl(PR_SET_PDEATHSIG)' }),
  id_map: () => ({ errno: 'EPERM', path: /^\/proc\/\d+\/uid_map$/ }),
  cgroup: () => ({ errno: 'EACCES', path: /tasks$|^CLONE_INTO_CGROUP$/ }),
  setid: () => ({ errno: 'EPERM', path: 'setgroups' }),
  hostname: () => ({ errno: 'EINVAL', path: 'steps-host' }),
  mount_ns: () => ({ errno: 'ENOSPC', path: 'unshare(CLONE_NEWUSER|CLONE_NEWNS)', hint: /too many user or mount namespaces/ }),
  mount_private: () => ({ errno: 'EINVAL', path: '/' }),
  // Before 6.6 the writable layer is a directory in the store, opened by the same step.
  scratch: () => ({ errno: 'ENOMEM', path: kernelFeatures().tmpfsUserXattr ? 'tmpfs' : new RegExp(`^${root}/`), hint: /disk limit does not fit in memory/ }),
  layers: () => ({ errno: 'ENOENT', path: join(root, 'layers'), hint: /layers directory is missing/ }),
  overlay: () => ({ errno: 'EINVAL', path: layer(), hint: /overlayfs refused the layers/ }),
  root_attach: () => ({ errno: 'ENOENT', path: join(root, 'mnt') }),
  bind: () => ({ errno: 'ENOTDIR', path: 'data', hint: /a file where a directory is needed/ }),
  proc: () => ({ errno: 'EPERM', path: '/proc', hint: /host's \/proc is partly hidden/ }),
  dev: () => ({ errno: 'EACCES', path: '/dev' }),
  mask: () => ({ errno: 'EACCES', path: 'proc/acpi' }),
  readonly: () => ({ errno: 'EACCES', path: 'proc/bus' }),
  pivot_root: () => ({ errno: 'EINVAL', path: '/' }),
  lock_mounts: () => ({ errno: 'ENOSPC', path: 'unshare(CLONE_NEWNS)' }),
  loopback: () => ({ errno: 'ENODEV', path: 'lo' }),
  fds: () => ({ errno: 'EMFILE', path: 'fcntl' }),
  exec_init: () => ({ errno: 'EACCES', path: 'hutch-init' }),
};

/** The pids whose parent is this process. */
function children(): string[] {
  return readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
    try {
      return readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1]!.split(' ')[1] === String(process.pid);
    } catch {
      return false;
    }
  });
}
/** What a failed create must not leave: cgroups under this file's parent, children, records, mounts, fds. */
function state(): Record<string, unknown> {
  const cgroups = subtreeRoots().filter((p) => p.endsWith(`/${parentName}`)).flatMap((p) => sandboxCgroupsIn(p));
  let records: string[] = [];
  try {
    records = readdirSync(join(root, 'sandboxes'));
  } catch {}
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(root));
  return { cgroups, children: children().sort(), records, mounts, fds: readdirSync('/proc/self/fd').length };
}

describe.skipIf(skip)('every setup step fails cleanly (the tests\' failure hook)', () => {
  beforeAll(async () => {
    process.env.HUTCH_CGROUP_PARENT = `/${parentName}`;
    root = mkdtempSync('/var/tmp/hutch-steps-');
    store = new ImageStore({ root });
    lowerdirs = (await store.resolve('busybox')).lowerdirs;
    // One sandbox first: what is made once per process (the init memfd, the mountpoint, id
    // namespaces) is made before the counts are taken.
    await Sandbox.run({ image: 'busybox', store, command: 'true' });
    await Sandbox.settle();
  });
  afterAll(async () => {
    await Sandbox.settle();
    delete process.env.HUTCH_CGROUP_PARENT;
    for (const p of subtreeRoots().filter((x) => x.endsWith(`/${parentName}`))) {
      try {
        rmdirSubtreeRoot(p);
      } catch {}
    }
    rmSync(root, { recursive: true, force: true });
  });

  it.each([...SETUP_STEPS])('%s', async (step) => {
    const want = EXPECT[step]();
    const before = state();
    failSetupOnce(step, want.errno);
    const e = await Sandbox.create({ image: 'busybox', store, hostname: 'steps-host', mounts: [{ source: '/tmp', target: '/data' }] }).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'ESETUP', step, errno: want.errno });
    const err = e as { path?: string; hint?: string; message: string };
    if (typeof want.path === 'string') expect(err.path).toBe(want.path);
    else expect(err.path).toMatch(want.path);
    if (want.hint) {
      expect(err.hint).toMatch(want.hint);
      expect(err.message).toContain(err.hint);
    } else {
      expect(err.hint).toBeUndefined();
    }
    expect(err.message).toMatch(new RegExp(`^sandbox setup failed at ${step}: `));
    await Sandbox.settle();
    expect({ step, ...state() }).toEqual({ step, ...before });
    // Once: the next start is not failed.
    const r = await Sandbox.run({ image: 'busybox', store, command: 'echo ok', encoding: 'utf8' });
    expect(r.stdout).toBe('ok\n');
    await Sandbox.settle();
    expect(state()).toEqual(before);
  });
});

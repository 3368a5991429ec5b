/**
 * crun and runc as peers: an OCI bundle over the same read-only rootfs the other peers use,
 * state under a temporary --root, every container removed at the end.
 *
 * Hybrid cgroup hosts (v1 controllers plus a cgroup2 mount at /sys/fs/cgroup/unified that
 * carries a controller, e.g. hugetlb): crun refuses to run ("cgroups in hybrid mode not
 * supported, drop all controllers from cgroupv2"); the check comes before the cgroup manager
 * is chosen, so --cgroup-manager=disabled does not help. crun decides the mode by looking at
 * the mounts, so in a mount namespace without the cgroup2 mount it sees a plain v1 host and
 * works. The benchmark makes that namespace once (unshare --mount=<file>, kept alive by a bind
 * mount on a private mount point, then `umount -l /sys/fs/cgroup/unified` inside it) and runs
 * crun through `nsenter --mount=<file>`; the nsenter exec is measured as its own peer so the
 * wrapper's cost is visible. runc handles hybrid hosts (it uses the v1 controllers) and runs
 * directly.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { defer } from './cleanup.js';

export interface OciSetup {
  bundle: string;
  /** argv prefix for crun (with the nsenter wrapper on hybrid hosts), without the run arguments. */
  crun: string[] | null;
  runc: string[] | null;
  /** argv prefix of the crun wrapper alone (to time it with /bin/true), or null when crun runs directly. */
  wrapper: string[] | null;
  notes: string[];
  crunRoot: string;
  runcRoot: string;
}

function run(argv: string[]): string {
  return execFileSync(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', timeout: 30_000 });
}

function statfsType(path: string): string | null {
  for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f[1] === path) return f[2] ?? null;
  }
  return null;
}

/** True when crun would see a hybrid host whose cgroup2 mount has controllers. */
export function crunNeedsHiddenCgroup2(): boolean {
  if (statfsType('/sys/fs/cgroup') !== 'tmpfs' || statfsType('/sys/fs/cgroup/unified') !== 'cgroup2') return false;
  try {
    return readFileSync('/sys/fs/cgroup/unified/cgroup.controllers', 'utf8').trim() !== '';
  } catch {
    return false;
  }
}

/**
 * The bundle's config.json: the namespaces hutch uses (user with the same id range as the
 * store's shifted layers, pid, network, ipc, uts, mount, cgroup), a read-only root, /proc, a
 * tmpfs /dev, no terminal, a few capabilities, no_new_privs.
 */
function config(rootfs: string, range: { uid: number; gid: number; size: number } | null): unknown {
  const caps = ['CAP_KILL', 'CAP_NET_BIND_SERVICE'];
  const namespaces = ['pid', 'network', 'ipc', 'uts', 'mount', 'cgroup'].map((type) => ({ type }));
  if (range) namespaces.push({ type: 'user' });
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args: ['/bin/true'],
      env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      cwd: '/',
      noNewPrivileges: true,
      capabilities: { bounding: caps, effective: caps, permitted: caps },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }],
    },
    root: { path: rootfs, readonly: true },
    hostname: 'bench',
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    ],
    linux: {
      namespaces,
      ...(range
        ? {
            uidMappings: [{ containerID: 0, hostID: range.uid, size: range.size }],
            gidMappings: [{ containerID: 0, hostID: range.gid, size: range.size }],
          }
        : {}),
      maskedPaths: ['/proc/kcore', '/proc/keys', '/proc/timer_list', '/proc/sched_debug'],
      readonlyPaths: ['/proc/sys', '/proc/sysrq-trigger', '/proc/bus', '/proc/fs', '/proc/irq'],
    },
  };
}

/** Removes every container a runtime still lists under its --root (after an interrupted run). */
function sweep(prefix: string[], root: string): void {
  let ids: string[] = [];
  try {
    if (!existsSync(root) || readdirSync(root).length === 0) return;
    ids = run([...prefix, 'list', '-q']).split('\n').map((s) => s.trim()).filter(Boolean);
  } catch {
    return;
  }
  for (const id of ids) {
    try {
      run([...prefix, 'delete', '--force', id]);
    } catch {
      /* reported by the next list */
    }
  }
}

/**
 * Writes the bundle and prepares both runtimes. `range` is the host range the rootfs is owned
 * by (the store's shift), mapped to root inside.
 */
export function prepareOci(tmp: string, rootfs: string, range: { uid: number; gid: number; size: number } | null, have: { crun: boolean; runc: boolean }): OciSetup {
  const bundle = join(tmp, 'bundle');
  mkdirSync(bundle, { recursive: true });
  writeFileSync(join(bundle, 'config.json'), JSON.stringify(config(rootfs, range), null, 1));
  const crunRoot = join(tmp, 'crun-state');
  const runcRoot = join(tmp, 'runc-state');
  mkdirSync(crunRoot, { recursive: true });
  mkdirSync(runcRoot, { recursive: true });
  const notes: string[] = [];
  let crun: string[] | null = null;
  let wrapper: string[] | null = null;
  if (have.crun) {
    if (crunNeedsHiddenCgroup2()) {
      const nsDir = join(tmp, 'ns');
      const nsFile = join(nsDir, 'mnt');
      mkdirSync(nsDir, { recursive: true });
      try {
        // A bind of the directory onto itself, made private: unshare --mount=<file> needs a
        // non-shared mount to pin the namespace on.
        run(['mount', '--bind', nsDir, nsDir]);
        defer('crun namespace dir', () => run(['umount', '-l', nsDir]));
        run(['mount', '--make-private', nsDir]);
        writeFileSync(nsFile, '');
        run(['unshare', `--mount=${nsFile}`, '--propagation', 'private', 'umount', '-l', '/sys/fs/cgroup/unified']);
        defer('crun mount namespace', () => run(['umount', '-l', nsFile]));
        wrapper = ['nsenter', `--mount=${nsFile}`, '--'];
        crun = [...wrapper, 'crun', '--root', crunRoot];
        notes.push('crun: hybrid cgroups with controllers in the cgroup2 mount; run through `nsenter --mount=<ns>` where /sys/fs/cgroup/unified is unmounted (see docs/performance.md)');
      } catch (e) {
        notes.push(`crun: could not make a mount namespace without the cgroup2 mount: ${(e as Error).message}`);
      }
    } else {
      crun = ['crun', '--root', crunRoot];
    }
    if (crun) {
      const c = crun;
      defer('crun containers', () => sweep(c, crunRoot));
    }
  }
  const runc = have.runc ? ['runc', '--root', runcRoot] : null;
  if (runc) defer('runc containers', () => sweep(runc, runcRoot));
  return { bundle, crun, runc, wrapper, notes, crunRoot, runcRoot };
}

/**
 * Which cgroup layout this host has, read once from /proc/self/mountinfo and
 * /proc/self/cgroup: pure v2, pure v1, or hybrid (v1 controllers plus a cgroup2 mount
 * holding few or no controllers, as systemd's "hybrid" mode and this project's CI host).
 */
import { readFileSync } from 'node:fs';

/**
 * The controllers hutch uses on v1, in the order their cgroup.procs are joined (see v1.ts).
 * freezer only where the sandbox has no cgroup2 leaf (pure v1): cgroup.freeze serves elsewhere.
 */
export const V1_CONTROLLERS = ['cpuset', 'memory', 'pids', 'cpu', 'cpuacct', 'blkio', 'freezer'] as const;
export type V1Controller = (typeof V1_CONTROLLERS)[number];

/** One mounted cgroup hierarchy and where the calling process sits in it. */
export interface CgroupHierarchy {
  /** Mount point, e.g. /sys/fs/cgroup/memory or /sys/fs/cgroup. */
  mount: string;
  /** Root of the mount inside the hierarchy (mountinfo field 4; '/' unless a bind or a cgroup namespace). */
  mountRoot: string;
  /** v1: the controllers this hierarchy carries (e.g. ['cpu', 'cpuacct'] when co-mounted); v2: []. */
  controllers: string[];
  /** The calling process's cgroup as /proc/self/cgroup names it, e.g. /process_api/80d7... */
  callerPath: string | null;
  /** The calling process's cgroup directory under `mount`, or null when it is not visible through this mount. */
  callerDir: string | null;
}

export interface CgroupHost {
  kind: 'v2' | 'v1' | 'hybrid';
  /** The cgroup2 hierarchy, when mounted (v2 and hybrid). */
  unified: CgroupHierarchy | null;
  /** v1 hierarchies by controller name (co-mounted controllers share one object). */
  v1: ReadonlyMap<string, CgroupHierarchy>;
  /** Controllers available to the calling process's cgroup in the unified hierarchy (its cgroup.controllers). */
  unifiedControllers: string[];
  /** Whether any swap device is active (/proc/swaps), read at detection. */
  swapActive: boolean;
}

/** Undoes mountinfo's octal escapes (\040 for space...). */
function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

function callerDirFor(mount: string, mountRoot: string, callerPath: string | null): string | null {
  if (callerPath === null) return null;
  const root = mountRoot === '/' ? '' : mountRoot;
  if (root !== '' && callerPath !== root && !callerPath.startsWith(root + '/')) return null;
  const rel = callerPath.slice(root.length);
  return rel === '' || rel === '/' ? mount : mount + rel;
}

/** Parses mountinfo and /proc/<pid>/cgroup text; exported for tests. */
export function parseCgroupHost(mountinfo: string, procCgroup: string, swaps = ''): CgroupHost {
  const v1Paths = new Map<string, string>(); // controller -> caller path
  let v2Path: string | null = null;
  for (const line of procCgroup.split('\n')) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line);
    if (!m) continue;
    const path = m[3]!.replace(/ \(deleted\)$/, '');
    if (m[1] === '0' && m[2] === '') v2Path = path;
    else for (const c of m[2]!.split(',')) if (c !== '') v1Paths.set(c, path);
  }

  const v1 = new Map<string, CgroupHierarchy>();
  let unified: CgroupHierarchy | null = null;
  for (const line of mountinfo.split('\n')) {
    const dash = line.indexOf(' - ');
    if (dash < 0) continue;
    const pre = line.slice(0, dash).split(' ');
    const post = line.slice(dash + 3).split(' ');
    const fstype = post[0];
    const mountRoot = unescapeMountinfo(pre[3] ?? '/');
    const mount = unescapeMountinfo(pre[4] ?? '');
    if (fstype === 'cgroup2') {
      if (unified === null) {
        unified = { mount, mountRoot, controllers: [], callerPath: v2Path, callerDir: callerDirFor(mount, mountRoot, v2Path) };
      }
    } else if (fstype === 'cgroup') {
      const opts = (post[2] ?? '').split(',');
      const controllers = opts.filter((o) => (V1_CONTROLLERS as readonly string[]).includes(o) || ['devices', 'hugetlb', 'net_cls', 'net_prio', 'perf_event', 'rdma', 'misc'].includes(o));
      if (controllers.length === 0) continue; // name=systemd and other named hierarchies
      if (controllers.some((c) => v1.has(c))) continue; // a second (bind) mount of the same hierarchy
      const callerPath = v1Paths.get(controllers[0]!) ?? null;
      const h: CgroupHierarchy = { mount, mountRoot, controllers, callerPath, callerDir: callerDirFor(mount, mountRoot, callerPath) };
      for (const c of controllers) v1.set(c, h);
    }
  }
  const hasV1 = V1_CONTROLLERS.some((c) => c !== 'freezer' && v1.has(c));
  const kind = hasV1 ? (unified ? 'hybrid' : 'v1') : 'v2';
  const swapActive = swaps.split('\n').slice(1).some((l) => l.trim() !== '');
  return { kind, unified, v1, unifiedControllers: [], swapActive };
}

let cached: CgroupHost | undefined;

/**
 * Detects the cgroup layout once and caches it. A host with neither v1 controllers nor a
 * cgroup2 mount reports kind 'v2' with `unified: null`; drivers then fail EUNSUPPORTED.
 */
export function detectCgroups(): CgroupHost {
  if (cached) return cached;
  const read = (p: string) => {
    try {
      return readFileSync(p, 'utf8');
    } catch {
      return '';
    }
  };
  const host = parseCgroupHost(read('/proc/self/mountinfo'), read('/proc/self/cgroup'), read('/proc/swaps'));
  if (host.unified?.callerDir) {
    host.unifiedControllers = read(`${host.unified.callerDir}/cgroup.controllers`).trim().split(/\s+/).filter(Boolean);
  }
  cached = host;
  return host;
}

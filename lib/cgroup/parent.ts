/** Where hutch's subtree lies in each hierarchy, and sandbox id checks. */
import { invalid, unsupported } from '../errors.js';
import type { CgroupHierarchy, CgroupHost } from './detect.js';
import { ID_PATTERN } from './files.js';

/** The subtree root for one hierarchy: `parent` (a cgroup path) under the mount, or `<caller>/hutch`. */
export function subtreeRootFor(h: CgroupHierarchy, parentPath: string | null, field: string): string {
  if (parentPath === null) {
    if (h.callerDir === null) {
      throw unsupported(
        `cgroups under the calling process's cgroup (${h.callerPath ?? 'unknown'}, not visible through ${h.mount})`,
        'set HUTCH_CGROUP_PARENT to a cgroup path visible under the cgroup mount',
      );
    }
    return `${h.callerDir}/hutch`;
  }
  const root = h.mountRoot === '/' ? '' : h.mountRoot;
  if (root !== '' && !parentPath.startsWith(root + '/')) {
    throw invalid(field, `a cgroup path under ${h.mountRoot}, the root of the cgroup mount ${h.mount}`, parentPath);
  }
  const dir = h.mount + parentPath.slice(root.length);
  // The caller's own cgroup or an ancestor would put the caller's cgroup among "sandbox"
  // directories (prune would kill it) and make hutch write a cgroup it did not create.
  if (h.callerDir !== null && (h.callerDir === dir || h.callerDir.startsWith(dir + '/'))) {
    throw invalid(field, `a cgroup that does not contain the calling process (it is in ${h.callerDir})`, parentPath);
  }
  return dir;
}

/** Turns the parent option (cgroup path or a directory under any cgroup mount) into a cgroup path. */
export function parentCgroupPath(host: CgroupHost, parent: string | undefined, field: string): string | null {
  if (parent === undefined || parent === '') return null;
  const forms = "an absolute cgroup path ('/hutch.slice/sandboxes') or a directory under a cgroup mount";
  if (typeof parent !== 'string' || !parent.startsWith('/') || parent.split('/').some((p) => p === '..' || p === '.')) {
    throw invalid(field, forms, parent);
  }
  const clean = parent.replace(/\/+$/, '').replace(/\/+/g, '/');
  const mounts = [host.unified, ...host.v1.values()].filter((h): h is CgroupHierarchy => h !== null);
  for (const h of mounts) {
    if (clean.startsWith(h.mount + '/')) {
      const rel = clean.slice(h.mount.length);
      return (h.mountRoot === '/' ? '' : h.mountRoot) + rel;
    }
    if (clean === h.mount) throw invalid(field, `${forms}, below the mount's root (not ${h.mount} itself)`, parent);
  }
  return clean;
}

export function checkId(id: string): void {
  if (typeof id !== 'string' || !ID_PATTERN.test(id)) {
    throw invalid('id', 'letters, digits, ".", "_" or "-" (1 to 128, not starting with "." or "-"), usable as a cgroup directory name', id);
  }
}


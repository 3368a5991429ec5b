/**
 * Sandbox.checkHost() and `hutch doctor`: what this host offers hutch, what depends on each
 * feature, and how to get it when it is missing.
 */
import { existsSync, readFileSync } from 'node:fs';
import { detectCgroups } from './cgroup/detect.js';
import { diskMethod } from './disk.js';
import { kernelAtLeast, kernelFeatures } from './host/features.js';
import { idRangeMode } from './idrange.js';
import { cgroupDriver } from './cgroup/driver.js';
import { DELEGATION_FIX, type NoCgroupDriver } from './cgroup/none.js';
import { idSourceKind } from './host/ids.js';
import { hostMode, type HostMode } from './host/mode.js';

/**
 * One feature of the host as {@link Sandbox.checkHost} found it.
 *
 * @example
 * ```ts
 * const { checks } = await Sandbox.checkHost();
 * const userns = checks.find((c) => c.name === 'user namespaces');
 * if (userns && !userns.ok) console.error(`${userns.detail}; needed for ${userns.neededFor}; fix: ${userns.fix}`);
 * ```
 */
export interface HostCheck {
  /** Short name, e.g. 'user namespaces'. */
  name: string;
  /** True when the feature is there and usable. */
  ok: boolean;
  /** What was found (a version, a layout, a count). */
  detail: string;
  /** What in hutch depends on it. */
  neededFor: string;
  /** How to get it when missing. */
  fix?: string;
}

/**
 * What this host offers hutch ({@link Sandbox.checkHost}, `npx hutch doctor`).
 * docs/host-requirements.md explains each check.
 *
 * @example
 * ```ts
 * const report = await Sandbox.checkHost();
 * if (!report.ok) {
 *   console.error(`hutch cannot run here (Linux ${report.kernel}, cgroups ${report.cgroups}):`);
 *   for (const c of report.checks) if (!c.ok) console.error(` - ${c.name}: ${c.fix ?? c.detail}`);
 * }
 * ```
 */
export interface HostReport {
  /** The kernel release, as `uname -r` prints it. */
  kernel: string;
  /** True when the Node process runs as root (euid 0), in the host's user namespace or another. */
  root: boolean;
  /** Where hutch runs: host root, root of a user namespace that is not the host's, or an ordinary user (API.md "Where hutch runs"). */
  mode: HostMode;
  /** The cgroup layout: unified v2, legacy v1, hybrid (v1 controllers with a v2 tree), or none found. */
  cgroups: 'v2' | 'v1' | 'hybrid' | 'none';
  /**
   * True when everything a default sandbox needs is here (kernel, root, user namespaces,
   * overlayfs and overlay in a user namespace, clone3 + pidfd, the new mount API).
   * Optional features may still be missing: see `checks`.
   */
  ok: boolean;
  /** One entry per feature, the optional ones included. */
  checks: HostCheck[];
}

function read(p: string): string {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

export async function checkHost(): Promise<HostReport> {
  const checks: HostCheck[] = [];
  const f = kernelFeatures();
  const k = f.kernelRelease;
  const add = (c: HostCheck): void => void checks.push(c);
  const upgrade = (v: string): string => `upgrade to Linux ${v} or newer (this is ${k})`;
  add({ name: 'kernel', ok: kernelAtLeast(5, 12), detail: k, neededFor: 'everything: clone3, pidfd, the new mount API, overlay in user namespaces', fix: upgrade('5.12') });
  const isRoot = process.geteuid?.() === 0;
  const mode = hostMode();
  const modeDetail = { root: 'host root', 'userns-root': 'root of a user namespace that is not the host\'s (a pod with hostUsers: false, a rootless container)', user: `an ordinary user (uid ${process.getuid?.()})` }[mode];
  add({ name: 'mode', ok: true, detail: `${mode}: ${modeDetail}`, neededFor: 'what follows: where ids, cgroups, the store and the network link come from (docs/rootless.md)' });
  const ids = idSourceKind();
  add({
    name: 'sandbox ids',
    ok: ids.kind !== 'single',
    detail: `${ids.kind}: ${ids.note}`,
    neededFor: 'image files keeping their owners inside; a sandbox root that is not the caller',
    fix: ids.kind === 'single' ? ids.note.replace(/^one id \([^)]*\): /, '') : undefined,
  });
  const maxNs = Number(read('/proc/sys/user/max_user_namespaces').trim() || '0');
  add({ name: 'user namespaces', ok: maxNs > 0, detail: `user.max_user_namespaces=${maxNs}`, neededFor: 'every sandbox (root inside is not root outside)', fix: 'sysctl -w user.max_user_namespaces=15000' });
  const fss = read('/proc/filesystems');
  const overlay = /\toverlay\n/.test(fss) || existsSync('/sys/module/overlay');
  add({ name: 'overlayfs', ok: overlay, detail: overlay ? 'available' : 'not loaded', neededFor: 'the copy-on-write root of every sandbox', fix: 'modprobe overlay' });
  add({ name: 'overlayfs in a user namespace', ok: kernelAtLeast(5, 11), detail: kernelAtLeast(5, 11) ? 'yes (5.11+)' : 'no', neededFor: 'mounting the root inside the sandbox', fix: upgrade('5.11') });
  add({ name: 'clone3 + pidfd', ok: kernelAtLeast(5, 7), detail: kernelAtLeast(5, 7) ? 'yes (CLONE_PIDFD, CLONE_INTO_CGROUP)' : 'no', neededFor: 'starting sandboxes, watching exits on the event loop, race-free cgroup placement', fix: upgrade('5.7') });
  add({ name: 'new mount API', ok: kernelAtLeast(5, 12), detail: kernelAtLeast(5, 12) ? 'fsopen, open_tree, move_mount, mount_setattr' : 'incomplete', neededFor: 'fd-based mounts that a planted symlink cannot redirect', fix: upgrade('5.12') });
  add({ name: 'idmapped mounts', ok: kernelAtLeast(6, 3), detail: kernelAtLeast(6, 3) ? 'yes (tmpfs and overlay lowers)' : 'partial or none', neededFor: 'a host uid range per sandbox (stronger isolation between sandboxes)', fix: upgrade('6.3') });
  // What lib/plan/ and lib/idrange.ts decide from these features: no path below falls back
  // quietly, so each choice is reported here.
  let rangeMode: 'per-sandbox' | 'shared' | undefined;
  try {
    rangeMode = idRangeMode();
  } catch {
    rangeMode = undefined;
  }
  const perSandbox = rangeMode === 'per-sandbox';
  add({
    name: 'per-sandbox id ranges',
    ok: perSandbox,
    detail: perSandbox ? 'each sandbox maps to a host uid range of its own (idmapped layers)'
      : mode !== 'root' ? 'outside root mode every sandbox shares the ids the caller owns (idmapped layers need CAP_SYS_ADMIN over the store\'s filesystem)'
      : process.env.HUTCH_SHARED_RANGE === '1' ? 'all sandboxes share one unprivileged range (HUTCH_SHARED_RANGE=1)'
        : f.overlayLowerdirPlus ? 'all sandboxes share one unprivileged range (the configured range holds only one)' : 'all sandboxes share one unprivileged range',
    neededFor: 'two sandboxes never sharing a host uid (an escape from one cannot touch another)',
    fix: mode !== 'root' ? 'run hutch as host root' : f.overlayLowerdirPlus ? 'unset HUTCH_SHARED_RANGE, or give hutch a larger range in /etc/subuid' : upgrade('6.8'),
  });
  add({
    name: 'overlay layers one by one',
    ok: f.overlayLowerdirPlus,
    detail: f.overlayLowerdirPlus ? 'lowerdir+ (fsconfig per layer)' : 'mount(2) data: an image holds at most about 60 layers',
    neededFor: 'images with many layers; per-sandbox id ranges',
    fix: upgrade('6.8'),
  });
  add({
    name: 'writable layer in memory',
    ok: f.tmpfsUserXattr,
    detail: f.tmpfsUserXattr ? 'tmpfs (its size is limits.disk)' : 'a directory in the store (a loop image when limits.disk is set); no warm starts',
    neededFor: 'ephemeral sandboxes that leave nothing on disk; warm starts of Sandbox.run',
    fix: upgrade('6.6'),
  });
  const root = process.env.HUTCH_ROOT ?? (process.geteuid?.() === 0 ? '/var/lib/hutch' : undefined);
  if (root) {
    const m = diskMethod(root);
    add({
      name: 'persistent disk quota',
      ok: true,
      detail: m === 'project-quota' ? `XFS project quotas on the store (${root})` : `loop-mounted ext4 images in the store (${root}); XFS with prjquota would use project quotas`,
      neededFor: 'limits.disk of persistent: true sandboxes',
    });
  }
  let cg: HostReport['cgroups'] = 'none';
  try {
    const h = detectCgroups();
    cg = h.kind;
    const v1 = [...h.v1.keys()].sort();
    const parts: string[] = [h.kind];
    if (v1.length) parts.push(`v1 controllers: ${v1.join(' ')}`);
    if (h.unified) parts.push(`cgroup2 controllers: ${h.unifiedControllers.join(' ') || 'none'}`);
    add({ name: 'cgroups', ok: true, detail: parts.join('; '), neededFor: 'memory, cpu, pids and io limits, usage, OOM detection' });
    let driver: string;
    try {
      const d = cgroupDriver();
      driver = d.kind === 'none' ? `none: ${(d as NoCgroupDriver).reason}` : `${d.kind}, under ${d.subtreeRoots[0] ?? '?'}`;
    } catch (e) {
      driver = `none: ${(e as Error).message}`;
    }
    const delegated = !driver.startsWith('none');
    add({
      name: 'cgroup for sandboxes',
      ok: delegated,
      detail: delegated ? driver : `${driver}; sandboxes run with rlimits, timeouts and output caps only: limits.memory, memorySwap, cpus, cpuset, pids and io are EUNSUPPORTED, and the default pids limit becomes a default nproc rlimit of 1024`,
      neededFor: 'memory, cpu, pids and io limits, usage, OOM detection, pause',
      fix: delegated ? undefined : DELEGATION_FIX,
    });
    const pids = delegated && (h.v1.has('pids') || (h.unified !== null && h.unifiedControllers.includes('pids')));
    add({
      name: 'default pids limit',
      ok: pids,
      detail: pids ? 'sandboxes that set no limits.pids get pids.max 1024' : delegated ? 'no pids controller: sandboxes that set no limits.pids run without the default 1024 (an explicit limits.pids is EUNSUPPORTED)' : 'no cgroup: sandboxes that set neither limits.pids nor limits.nproc get an nproc rlimit of 1024 instead (counted per sandbox: per user namespace)',
      neededFor: 'stopping a fork bomb in a sandbox that sets no limits',
      fix: delegated ? 'enable the pids controller (cgroup v2: +pids in the parent cgroup.subtree_control; v1: mount -t cgroup -o pids cgroup /sys/fs/cgroup/pids)' : DELEGATION_FIX,
    });
  } catch (e) {
    add({ name: 'cgroups', ok: false, detail: String((e as Error).message), neededFor: 'memory, cpu, pids and io limits, usage, OOM detection', fix: 'mount cgroup2 at /sys/fs/cgroup' });
  }
  const seccomp = /^Seccomp:/m.test(read('/proc/self/status'));
  add({ name: 'seccomp', ok: seccomp, detail: seccomp ? 'filter mode available' : 'not built in', neededFor: 'the default syscall filter', fix: 'a kernel with CONFIG_SECCOMP_FILTER' });
  // Egress by name: the name check holds a connection's first packets in a netfilter queue
  // (lib/network/nfqueue.ts) reached through the xtables NFQUEUE target (nft_compat).
  // Built in, or a module the kernel loads at first use (nfnetlink and nft_compat request them).
  const moduleFile = (name: string) => ['', '.xz', '.zst', '.gz'].some((z) => existsSync(`/lib/modules/${k}/kernel/net/netfilter/${name}.ko${z}`));
  const queue = existsSync('/proc/net/netfilter/nfnetlink_queue') || moduleFile('nfnetlink_queue');
  const nfqTarget = /^NFQUEUE$/m.test(read('/proc/net/ip_tables_targets')) || moduleFile('xt_NFQUEUE');
  add({
    name: 'egress by name',
    ok: mode === 'root' && queue && nfqTarget,
    detail: mode !== 'root' ? `not in mode ${mode}: the name check sits on the host side of a veth` : queue && nfqTarget ? 'the netfilter queue and the NFQUEUE target (built in or as modules)' : `${queue ? '' : 'nfnetlink_queue '}${nfqTarget ? '' : 'xt_NFQUEUE '}missing`,
    neededFor: "network.domains, deny and ask (the DNS and SNI/Host check)",
    fix: mode !== 'root' ? 'run hutch as host root' : 'modprobe nfnetlink_queue xt_NFQUEUE nft_compat (a kernel with CONFIG_NETFILTER_NETLINK_QUEUE, CONFIG_NETFILTER_XT_TARGET_NFQUEUE, CONFIG_NFT_COMPAT)',
  });
  add({
    name: 'templates',
    ok: mode === 'root',
    detail: mode === 'root' ? 'available (host root)' : `not in mode ${mode}: each fork's layers and /proc are mounted by the host, and on cgroup v1 it moves the fork (another uid) into its cgroup`,
    neededFor: 'Sandbox.template (warm interpreters, docs/templates.md)',
    fix: 'run hutch as host root (Sandbox.create, Sandbox.run and pools work in every mode)',
  });
  const bb = existsSync('/bin/busybox');
  add({ name: 'busybox-static', ok: bb, detail: bb ? '/bin/busybox' : 'missing', neededFor: "the builtin 'busybox' image", fix: 'apt-get install busybox-static' });
  const essential = ['kernel', 'mode', 'user namespaces', 'overlayfs', 'overlayfs in a user namespace', 'clone3 + pidfd', 'new mount API'];
  return { kernel: k, root: isRoot, mode, cgroups: cg, ok: checks.filter((c) => essential.includes(c.name)).every((c) => c.ok), checks };
}

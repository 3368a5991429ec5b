/**
 * The host side of a sandbox's start, for `Sandbox.create`: the plan (lib/plan/: every
 * decision, and every refusal, before anything is made), then what it needs made — the owner
 * record, the writable layer's disk when there is one, the cgroup, the id range, the detached
 * trees the child mounts (layers, host dirs, volumes) — then the child itself, cloned now or a
 * blank made ahead (lib/warm.ts) released, given the encoded plan; its setup is awaited. On any failure everything made here
 * is undone, in reverse, before the error is thrown.
 */
import { realpathSync, statSync } from 'node:fs';
import { randomHex } from './random.js';
import { join } from 'node:path';
import { cgroupDriver, type SandboxCgroup } from './cgroup/driver.js';
import { prepareUpper, type PersistentDisk } from './disk.js';
import { HutchError } from './errors.js';
import { acquireIds, type SandboxIds } from './idrange.js';
import { cloneMaps } from './host/ids.js';
import { hostMode } from './host/mode.js';
import type { ImageStore } from './image/store.js';
import type { ResolvedImage } from './image/types.js';
import { isFailure, native, type NativeFailure, type ClonedInit } from './native.js';
import type { ResolvedSandboxOptions } from './options.js';
import { encodePlan, planSandbox } from './plan/index.js';
import { setupError } from './setup-errors.js';
import { isDirFd, killAndReap, waitSetup } from './child-setup.js';
import type { Trace } from './trace.js';
import { takeBlank } from './warm.js';
import { linkAbandoned, linkCloned, linksAhead, takeLink } from './network/linkpool.js';

export { DEFAULT_DISK_BYTES } from './plan/index.js';

/** A sandbox whose init runs: what Sandbox keeps of its start. */
export interface StartedSandbox {
  id: string;
  ids: SandboxIds;
  cgroup: SandboxCgroup;
  disk: PersistentDisk | null;
  spawned: ClonedInit;
  /** Sandbox.run: the key of the blank to make for the next run like this one, or null. */
  warmKey: string | null;
}

export interface StartHooks {
  /** Sandbox.run: use and make blanks (an ephemeral tmpfs layer only). */
  warm: boolean;
  /** Called once the child exists, before its setup is awaited. */
  spawned?(s: StartedSandbox): void;
  /** Called when the start fails after `spawned` was, before the child is killed. */
  failed?(): void;
}

export async function startSandbox(opts: ResolvedSandboxOptions, store: ImageStore, image: ResolvedImage, tr: Trace, hooks: StartHooks): Promise<StartedSandbox> {
  const n = native();
  const plan = planSandbox(opts, image, store);
  // Sandbox.run: a blank made ahead for this store and these limits saves the clone, the
  // cgroup and the id range (lib/warm.ts); an ephemeral tmpfs layer only (no disk to make).
  // A userspace bridge takes a link made ahead instead (network/linkpool.ts): a blank has a netns of its own.
  const userspaceNet = opts.network.mode === 'bridge' && opts.network.backend === 'userspace' ? opts.network : null;
  const ahead = userspaceNet !== null && linksAhead(userspaceNet);
  const warmKey = hooks.warm && plan.warmable && !ahead ? `${image.layersDir}\0${image.image.id}\0${JSON.stringify(opts.limits.cgroup)}` : null;
  const blank = warmKey !== null ? await takeBlank(warmKey) : undefined;
  const id = blank?.id ?? randomHex(6);
  const ids = blank?.ids ?? acquireIds(image.layersDir);
  tr.mark('ids');
  const fds: number[] = [];
  let cgroup: SandboxCgroup | null = null;
  let spawned: ClonedInit | undefined;
  let disk: PersistentDisk | null = null;
  let marked = false;
  let started: StartedSandbox | undefined;
  let linked = false;
  try {
    // The owner record comes first: a prune in another process then never takes this
    // sandbox's cgroup or disk, made below, for a crashed one's.
    if (!blank) await store.markInUse(image.image.id, id); // a blank's was written with it
    marked = true;
    tr.mark('record');
    if (plan.upper.kind !== 'tmpfs') disk = await prepareUpper(plan.upper, store.root, id, ids);
    cgroup = blank?.cgroup ?? cgroupDriver().create(id, plan.cgroup.limits, disk && plan.cgroup.ioOnDisk ? { ioDevice: disk.device } : undefined);
    if (blank) spawned = blank.spawned; // from here on, a failure kills it like any child
    tr.mark('cgroup');
    const binds: { fd: number; file: boolean }[] = [];
    // Outside host root: no cloning of mounts here (it needs CAP_SYS_ADMIN over the mount
    // namespace's owner, which an ordinary user never has and a pod should not need); the child
    // clones each source in its own namespace (PLAN_F_PATH).
    const pathBinds = hostMode() !== 'root';
    for (const m of plan.mounts) {
      if (m.kind !== 'bind') continue;
      if (pathBinds) {
        binds.push(pathBind(m.source));
        continue;
      }
      const t = n.openTree(m.source, m.readonly);
      if (isFailure(t)) throw setupError(t);
      fds.push(t.fd);
      // The tree is what the user named: a path that reaches elsewhere through a symlink
      // (swapped in, or not) is refused rather than followed.
      if (t.real !== m.source) {
        throw new HutchError('EINVAL', `invalid option mounts: source ${m.source} resolves through a symlink to ${t.real}; name the real path`, { path: m.source });
      }
      binds.push({ fd: t.fd, file: !isDirFd(t.fd) });
    }
    let layerFds: number[] | null = null;
    if (ids.layersUserns !== null) {
      layerFds = [];
      for (const hex of plan.overlay.layers) {
        const t = n.openTree(join(plan.overlay.layersDir, hex), true, ids.layersUserns);
        if (isFailure(t)) throw setupError({ ...t, step: 'layers' });
        fds.push(t.fd);
        layerFds.push(t.fd);
      }
    }
    tr.mark('trees');
    const encoded = encodePlan(plan, { hostname: plan.hostname ?? `hutch-${id}`, layerFds, binds, upperDir: disk?.upperDir ?? null });
    let s: ClonedInit | NativeFailure | undefined;
    if (blank) {
      const r = n.startBlank(blank.spawned.pid, encoded.buf, encoded.fds);
      if (!isFailure(r)) s = blank.spawned;
      else {
        // The blank died while it waited (killed by someone): start the ordinary way, in
        // its cgroup and id range, once it is reaped.
        spawned = undefined;
        await killAndReap(blank.spawned);
      }
    }
    const maps = cloneMaps(ids, plan.idMap.size);
    // A userspace link made ahead for this plan: the clone joins its namespaces (linkpool.ts).
    const link = !s && userspaceNet ? await takeLink(userspaceNet, maps) : null;
    s ??= n.cloneSandbox(encoded.buf, encoded.fds, {
      ...maps,
      ...(link ? { linkUserns: link.userns, linkNetns: link.netns } : {}),
      cgroupFd: cgroup.cloneIntoFd ?? -1,
      // v1: the child joins these itself, first thing (SandboxCgroup.joinFiles).
      joinFiles: [...cgroup.joinFiles],
    });
    if (link) {
      linkCloned(link, isFailure(s) ? null : id);
      linked = true;
    }
    tr.mark('clone');
    cgroup.closeCloneFd(); // one fd fewer per live sandbox (10,000 live: bench/live.ts)
    for (const fd of fds.splice(0)) n.close(fd);
    ids.parkNamespace(); // and one more when many are live
    if (isFailure(s)) throw setupError(s);
    spawned = s;
    started = { id, ids, cgroup, disk, spawned: s, warmKey };
    hooks.spawned?.(started);
    const setup = await waitSetup(s);
    tr.mark('setup');
    if (setup) throw setupError(setup);
  } catch (e) {
    for (const fd of fds) n.close(fd);
    if (started) hooks.failed?.();
    if (spawned) await killAndReap(spawned);
    if (linked) await linkAbandoned(id);
    await cgroup?.destroy().catch(() => undefined);
    await disk?.release().catch(() => undefined);
    if (marked) await store.release(id).catch(() => undefined);
    ids.release();
    throw e;
  }
  return started!;
}

/** A bind the child clones by path (user mode): refused when the path reaches elsewhere through a symlink, as in root mode. */
function pathBind(source: string): { fd: number; file: boolean } {
  let real: string;
  let dir: boolean;
  try {
    real = realpathSync(source);
    dir = statSync(real).isDirectory();
  } catch (e) {
    throw new HutchError('ESETUP', `sandbox setup failed at bind: ${source}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { step: 'bind', errno: (e as NodeJS.ErrnoException).code, path: source });
  }
  if (real !== source) {
    throw new HutchError('EINVAL', `invalid option mounts: source ${source} resolves through a symlink to ${real}; name the real path`, { path: source });
  }
  return { fd: -1, file: !dir };
}

/**
 * Host-side networking of a sandbox: `resolveNetwork` (options.ts) validates, then
 * `attachNetwork` gives the sandbox (already in its own user + net namespace) a /30 on a
 * veth pair with shaping and filtering, `releaseNetwork` takes it all away, and
 * `pruneNetwork` removes what crashed processes left.
 *
 * Attach order: lease (O_EXCL) -> the shared nftables table checked (netlink; made once per
 * host with one nft process) -> per-sandbox rules, only with outbound 'nat' or ports (one nft
 * process) -> veth pair with its peer born in the sandbox's netns -> shaping -> addresses, up,
 * default route (all rtnetlink from the addon: no process for a plain or shaped link). Any
 * failure undoes every step before the error reaches the caller.
 *
 * Release hands the deletions to a worker thread and returns: a link delete waits for an RCU
 * grace period (~20 ms). The lease goes only once everything is gone, so until then the slot is
 * not reused and a crash leaves it to prune; `settleNetwork()` waits for the pending ones.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { HutchError } from '../errors.js';
import {
  EMPTY_LEASE_GRACE_MS,
  type Lease,
  leaseAgeMs,
  leaseFiles,
  leasePath,
  ownerAlive,
  processStart,
  readLease,
  removeLease,
  slotAddresses,
  slotNetwork,
  takeLease,
} from './lease.js';
import { forwardingRecords, openLink, openUplinks, recordUplinks, restoreForwardingIfIdle, uplinksToOpen, withForwardingLock } from './forwarding.js';
import { addSandboxRules, deleteTableIfIdle, ensureTable, hutchLinksOnHost, removeSandboxRules } from './nat.js';
import { deleteLinks, settleDeletions } from './netlink.js';
import { type NetworkPlan, type ResolvedPort, hostRoutes, networkStateDir } from './options.js';
import { applyShaping } from './tc.js';
import { SANDBOX_INTERFACE, configurePair, createPair, enableRouteLocalnet, hostInterfaceName, ifbName } from './veth.js';
import { attachUserspace, isUserspace, releaseUserspace } from './userspace.js';
import { hostMode } from '../host/mode.js';


export { resolveNetwork, networkStateDir, DEFAULT_RANGE, DEFAULT_STATE_DIR } from './options.js';
export { pastaPid } from './userspace.js';
export { networkBackend, type NetworkBackend } from './userspace-options.js';
export type { NetworkOptions, NetworkPlan, BridgePlan, PortMapping, HostPort, ResolvedPort, ResolvedHostPort, Rate } from './options.js';
export type { Lease } from './lease.js';
export type { EgressRequest, EgressRefusal, AskFunction } from './policy.js';
export type { Violation } from './violations.js';
export { hostsLines, hostsFile, HOST_ALIAS } from './hosts.js';

/** A sandbox's link, as `attachNetwork` made it. Pass it to `releaseNetwork`. */
export interface NetworkAttachment {
  /** The sandbox's address (eth0). */
  readonly address: string;
  /** The host side's address: the sandbox's default gateway, `host.hutch.internal` inside. */
  readonly hostAddress: string;
  readonly interface: 'eth0';
  /** The host-side veth, `hx<8 hex>`. */
  readonly hostInterface: string;
  readonly prefixLength: 30;
  readonly id: string;
  /** Internal: what release removes. */
  readonly slot: string;
  readonly stateDir: string;
  readonly ifb: string | null;
  readonly ports: readonly ResolvedPort[];
  readonly nat: boolean;
  /** Internal: the sandbox has nftables chains of its own (nat or ports). */
  readonly rules: boolean;
  /** Internal: egress by name (a set of admitted addresses, hutch's resolver). */
  readonly names: boolean;
  /** Internal: 'userspace' for a pasta link (userspace.ts); absent for a veth. */
  readonly backend?: 'userspace';
}

/** What a slot may own; `rules` absent (older leases) or a null `made` means "maybe". */
type Made = { nat: boolean; ifb: boolean; ports: readonly ResolvedPort[]; rules?: boolean; names?: boolean };

interface Release {
  /** Resolves when the caller may go on: ports unpublished, the rest handed to the background. */
  handoff: Promise<void>;
  /** Resolves when every link, rule and the lease are gone. */
  done: Promise<void>;
}

const releases = new WeakMap<NetworkAttachment, Release>();
/** Teardowns still running, for `settleNetwork`. */
const pending = new Set<Promise<void>>();
/** Failures of teardowns nobody awaited, reported by the next `settleNetwork`. */
let backgroundFailures: unknown[] = [];

let ownerStartCache: string | undefined;
function ownerStart(): string {
  return (ownerStartCache ??= processStart('self') ?? '');
}

/**
 * Warms up what the first bridge sandbox of a process would otherwise pay for: the addon's
 * netlink sockets and the shared nftables table (one `nft` process when the host has none yet).
 * Optional; `attachNetwork` does the same on first use.
 */
export async function prepareNetwork(plan: NetworkPlan): Promise<void> {
  if (plan.mode === 'none' || plan.backend === 'userspace') return;
  await ensureTable();
}

/**
 * Gives the sandbox whose init is host pid `pid` its link. `null` for mode 'none' (the
 * sandbox's netns keeps only `lo`, which the sandbox setup brings up).
 *
 * @throws HutchError ESETUP (step 'network') when a netlink request or nft fails, after undoing
 *   what was made; EINVAL when a published port was taken meanwhile by another sandbox.
 */
export async function attachNetwork(plan: NetworkPlan, id: string, pid: number, logGroup: number | null = null): Promise<NetworkAttachment | null> {
  if (plan.mode === 'none') return null;
  if (!Number.isInteger(pid) || pid < 1) throw new HutchError('EINVAL', `attachNetwork: pid must be a positive integer, got ${String(pid)}`);
  if (plan.backend === 'userspace') return attachUserspace(plan, id, pid);
  const nat = plan.outbound === 'nat';
  const forwards = nat || plan.ports.length > 0;
  const rules = forwards || plan.hostPorts.length > 0;
  const { slot, network } = takeLease(
    plan.stateDir,
    plan.range,
    (s) => ({ version: 1, id, ownerPid: process.pid, ownerStart: ownerStart(), sandboxPid: pid, slot: s, ports: [...plan.ports], nat, ifb: plan.egressBps !== null, rules, created: new Date().toISOString() }),
    hostRoutes().map((r) => r.cidr),
  );
  const { address, hostAddress } = slotAddresses(network);
  const host = hostInterfaceName(slot);
  const ifb = plan.egressBps !== null ? ifbName(slot) : null;
  const attachment: NetworkAttachment = {
    address,
    hostAddress,
    interface: SANDBOX_INTERFACE,
    hostInterface: host,
    prefixLength: 30,
    id,
    slot,
    stateDir: plan.stateDir,
    ifb,
    ports: plan.ports,
    nat,
    rules,
    names: plan.names !== null,
  };
  let rulesAdded = false;
  try {
    // The table filters hx* links from their first packet: it must exist before the link does.
    // Under the state dir's lock, after the lease: a prune deletes an idle table only under
    // the same lock and only when it sees no lease, so it cannot delete it between this check
    // and the link (which would leave the link unfiltered: the host reachable).
    await withForwardingLock(plan.stateDir, () => ensureTable());
    if (rules) {
      const sandboxRules = { slot, host, address, outbound: plan.outbound, allow: plan.allow, ports: plan.ports, hostPorts: plan.hostPorts, names: plan.names ? { lists: plan.names, logGroup } : null };
      if (forwards) {
        // Uplinks recorded, then guarded (in the sandbox's transaction), then opened: forwarding.ts.
        await withForwardingLock(plan.stateDir, async () => {
          const guard = uplinksToOpen(plan.stateDir);
          recordUplinks(plan.stateDir, guard);
          await addSandboxRules({ ...sandboxRules, guard });
          rulesAdded = true;
          openUplinks(guard);
        });
      } else {
        await addSandboxRules({ ...sandboxRules, guard: [] });
        rulesAdded = true;
      }
    }
    createPair(host, pid);
    applyShaping(host, ifb, plan.egressBps, plan.ingressBps);
    if (plan.ports.length > 0) enableRouteLocalnet(host);
    if (forwards) openLink(host);
    configurePair(host, pid, hostAddress, address);
  } catch (e) {
    try {
      // The rules transaction is atomic: when it failed nothing of it exists, and removing its
      // port elements would remove another sandbox's (the usual reason it failed).
      await teardown(plan.stateDir, slot, { nat, ifb: ifb !== null, ports: plan.ports, rules: rulesAdded, names: plan.names !== null });
    } catch (cleanup) {
      if (e instanceof Error) (e as Error & { cleanupError?: unknown }).cleanupError = cleanup;
    }
    throw e;
  }
  return attachment;
}

/**
 * Removes the link (its peer goes with it), the ifb and qdiscs, the nftables rules and the
 * lease. Returns once the sandbox's published ports are free again (nft, only for a sandbox
 * with ports) and the rest is handed to a worker: a plain or shaped link's release costs
 * microseconds on the caller's path. `{ wait: true }` waits for all of it and rejects on a
 * failure; otherwise a failure is kept for `settleNetwork()` and the lease stays for prune.
 * Idempotent: a second call shares the first call's work.
 */
export function releaseNetwork(handle: NetworkAttachment | null, options: { wait?: boolean } = {}): Promise<void> {
  if (handle === null) return Promise.resolve();
  let r = releases.get(handle);
  if (!r) {
    r = startRelease(handle);
    releases.set(handle, r);
  }
  return options.wait ? r.done : r.handoff;
}

function startRelease(h: NetworkAttachment): Release {
  if (isUserspace(h)) {
    const done = releaseUserspace(h);
    track(done);
    return { handoff: Promise.resolve(), done };
  }
  const made: Made = { nat: h.nat, ifb: h.ifb !== null, ports: h.ports, rules: h.rules, names: h.names };
  let handoff: Promise<void>;
  let done: Promise<void>;
  if (h.rules && h.ports.length > 0) {
    // A host port stays published until its elements go: free it before returning, so the
    // caller can publish it again at once; the lease forgets the ports with it.
    handoff = removeSandboxRules(h.slot, h.hostInterface, h.address, made).then(() => forgetPorts(h.stateDir, h.slot));
    done = handoff.then(
      async () => void (await teardown(h.stateDir, h.slot, { ...made, ports: [] }, { rules: false })),
      async () => void (await teardown(h.stateDir, h.slot, made)),
    );
  } else {
    done = teardown(h.stateDir, h.slot, made).then(() => undefined);
    handoff = Promise.resolve();
  }
  track(done);
  return { handoff, done };
}

function track(p: Promise<void>): void {
  pending.add(p);
  p.catch((e: unknown) => void backgroundFailures.push(e)).finally(() => pending.delete(p));
}

/** The lease without its ports or rules, once they are gone (prune and port checks read it). */
function forgetPorts(stateDir: string, slot: string): void {
  const lease = readLease(stateDir, `${slot}.lease`);
  if (lease === null) return;
  try {
    writeFileSync(leasePath(stateDir, slot), JSON.stringify({ ...lease, ports: [], rules: false }), { mode: 0o600 });
  } catch {
    // The lease still names the ports: prune removes their (already gone) elements again.
  }
}

/**
 * Waits for every release of this process still running in the background, and rejects
 * with the first failure among those nobody awaited (then forgets them). Tests call it
 * before checking that nothing is left; a process that is about to exit may call it too.
 */
export async function settleNetwork(): Promise<void> {
  while (pending.size > 0) await Promise.allSettled([...pending]);
  await settleDeletions();
  const failures = backgroundFailures;
  backgroundFailures = [];
  if (failures.length > 0) {
    const first = failures[0];
    if (failures.length === 1) throw first;
    throw new HutchError('ESETUP', `network: ${failures.length} releases failed; the first: ${first instanceof Error ? first.message : String(first)}`, { step: 'network', cause: first });
  }
}

/**
 * Everything a slot may own, in reverse order of creation; every step tolerates "already
 * gone" and runs even when an earlier one failed; `made` null (a lease never filled in)
 * removes everything a slot may have (the first error is kept). The lease goes last and only
 * when all else went, so a failed teardown is retried by the next prune.
 */
async function teardown(stateDir: string, slot: string, made: Made | null, opts: { rules?: boolean } = {}): Promise<boolean> {
  const host = hostInterfaceName(slot);
  const { address } = slotAddresses(slotNetwork(slot));
  const links = made === null || made.ifb ? [host, ifbName(slot)] : [host];
  const rules = opts.rules ?? (made === null || made.rules !== false);
  const results = await Promise.allSettled([
    deleteLinks(links),
    rules ? removeSandboxRules(slot, host, address, made) : Promise.resolve(),
  ]);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  removeLease(stateDir, slot);
  // The last link gone: forwarding flags hutch set go back (a cheap no-op when none were set).
  return restoreForwardingIfIdle(stateDir);
}

export interface PruneResult {
  /** Slots (8 hex) whose link, rules and lease were removed. */
  removed: string[];
  /** True when forwarding flags hutch had turned on were put back (forwarding.ts). */
  restoredForwarding: boolean;
}

/**
 * Removes the leftovers of sandboxes whose owner is gone: for each lease in the state dir,
 * `isLive(lease)` (default: the owning process still runs) false -> link, ifb, qdiscs, rules
 * and lease are removed. A lease file still empty after 30 s counts as dead. When no hutch
 * link is left on the host, the forwarding flags hutch turned on are put back and the nftables table is removed.
 */
export async function pruneNetwork(
  isLive: (lease: Lease) => boolean = ownerAlive,
  options: { stateDir?: string } = {},
): Promise<PruneResult> {
  const stateDir = options.stateDir ?? networkStateDir();
  // This process's own releases first: their leases are live, but the links and table checks below must see them gone.
  await settleNetwork().catch(() => undefined);
  // Outside host root there are no veths, leases or host rules: a userspace link's pasta dies
  // with its owner (PR_SET_PDEATHSIG) and the rest with the sandbox's netns.
  if (hostMode() !== 'root' && options.stateDir === undefined) return { removed: [], restoredForwarding: false };
  const removed: string[] = [];
  let first: unknown;
  let restoredForwarding = false;
  for (const name of leaseFiles(stateDir)) {
    const slot = name.slice(0, 8);
    const lease = readLease(stateDir, name);
    if (lease === null) {
      const age = leaseAgeMs(stateDir, name);
      if (age === undefined || age < EMPTY_LEASE_GRACE_MS) continue;
    } else if (isLive(lease)) {
      continue;
    }
    try {
      if (await teardown(stateDir, slot, lease)) restoredForwarding = true;
      removed.push(slot);
    } catch (e) {
      first ??= e;
    }
  }
  if (leaseFiles(stateDir).length === 0 && hutchLinksOnHost().length === 0) {
    // Flags first: the table holds the guards of the uplinks that are still open.
    if (await restoreForwardingIfIdle(stateDir).catch((e: unknown) => ((first ??= e), false))) restoredForwarding = true;
    // A record still there (its restore failed) keeps the table: its guard must stay while the flag is on.
    // Leases checked again under the lock an attach holds while it makes sure of the table.
    if (forwardingRecords(stateDir).length === 0) {
      mkdirSync(stateDir, { recursive: true, mode: 0o700 }); // the lock lives there (a fresh host has none yet)
      await withForwardingLock(stateDir, async () => {
        if (leaseFiles(stateDir).length === 0) await deleteTableIfIdle();
      });
    }
  }
  if (first !== undefined) throw first;
  return { removed, restoredForwarding };
}

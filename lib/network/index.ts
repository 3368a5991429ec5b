/**
 * Host-side networking of a sandbox: `resolveNetwork` (options.ts) validates, then
 * `attachNetwork` gives the sandbox (already in its own user + net namespace) a /30 on a
 * veth pair with shaping and filtering, `releaseNetwork` takes it all away, and
 * `pruneNetwork` removes what crashed processes left.
 *
 * Attach order: lease (O_EXCL) -> nftables rules (keyed by the interface name, so the link
 * is filtered from its first packet) -> host links -> sysctls of the link -> tc and the
 * sandbox side in parallel. Any failure undoes every step before the error reaches the caller.
 */
import { HutchError } from '../errors.js';
import {
  EMPTY_LEASE_GRACE_MS,
  type Lease,
  leaseAgeMs,
  leaseFiles,
  ownerAlive,
  processStart,
  readLease,
  removeLease,
  slotAddresses,
  slotNetwork,
  takeLease,
} from './lease.js';
import { addSandboxRules, deleteTableIfIdle, enableForwarding, hutchLinksOnHost, removeSandboxRules, restoreForwarding } from './nat.js';
import { type NetworkPlan, type ResolvedPort, hostRoutes, networkStateDir } from './options.js';
import { applyShaping } from './tc.js';
import { SANDBOX_INTERFACE, configurePeer, createHostLinks, deleteLink, enableRouteLocalnet, hostInterfaceName, ifbName } from './veth.js';

export { resolveNetwork, networkStateDir, DEFAULT_RANGE, DEFAULT_STATE_DIR } from './options.js';
export type { NetworkOptions, NetworkPlan, BridgePlan, PortMapping, ResolvedPort, Rate } from './options.js';
export type { Lease } from './lease.js';
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
}

const releases = new WeakMap<NetworkAttachment, Promise<void>>();

/**
 * Gives the sandbox whose init is host pid `pid` its link. `null` for mode 'none' (the
 * sandbox's netns keeps only `lo`, which the sandbox setup brings up).
 *
 * @throws HutchError ESETUP (step 'network') when a host command fails, after undoing what
 *   was made; EINVAL when a published port was taken meanwhile by another sandbox.
 */
export async function attachNetwork(plan: NetworkPlan, id: string, pid: number): Promise<NetworkAttachment | null> {
  if (plan.mode === 'none') return null;
  if (!Number.isInteger(pid) || pid < 1) throw new HutchError('EINVAL', `attachNetwork: pid must be a positive integer, got ${String(pid)}`);
  const ownerStart = processStart('self') ?? '';
  const { slot, network } = takeLease(
    plan.stateDir,
    plan.range,
    (s) => ({ version: 1, id, ownerPid: process.pid, ownerStart, sandboxPid: pid, slot: s, ports: [...plan.ports], nat: plan.outbound === 'nat', ifb: plan.egressBps !== null, created: new Date().toISOString() }),
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
    nat: plan.outbound === 'nat',
  };
  let rulesAdded = false;
  try {
    await addSandboxRules({ slot, host, address, hostAddress, outbound: plan.outbound, allow: plan.allow, ports: plan.ports });
    rulesAdded = true;
    await createHostLinks(host, pid, hostAddress, ifb);
    if (plan.ports.length > 0) enableRouteLocalnet(host);
    if (plan.outbound === 'nat' || plan.ports.length > 0) enableForwarding(plan.stateDir);
    await Promise.all([applyShaping(host, ifb, plan.egressBps, plan.ingressBps), configurePeer(pid, address, hostAddress)]);
  } catch (e) {
    try {
      // The rules transaction is atomic: when it failed nothing of it exists, and removing its
      // port elements would remove another sandbox's (the usual reason it failed).
      await teardown(plan.stateDir, slot, { nat: attachment.nat, ifb: ifb !== null, ports: plan.ports }, rulesAdded);
    } catch (cleanup) {
      if (e instanceof Error) (e as Error & { cleanupError?: unknown }).cleanupError = cleanup;
    }
    throw e;
  }
  return attachment;
}

/**
 * Removes the link (its peer goes with it), the ifb and qdiscs, the nftables rules and the
 * lease. Idempotent: a second call returns the first call's promise. Nothing the caller needs
 * waits on it, so the caller may leave it running (a veth delete waits for an RCU grace period).
 */
export function releaseNetwork(handle: NetworkAttachment | null): Promise<void> {
  if (handle === null) return Promise.resolve();
  let p = releases.get(handle);
  if (!p) {
    p = teardown(handle.stateDir, handle.slot, { nat: handle.nat, ifb: handle.ifb !== null, ports: handle.ports });
    releases.set(handle, p);
  }
  return p;
}

/**
 * Everything a slot may own, in reverse order of creation; every step tolerates "already
 * gone" and runs even when an earlier one failed; `made` null (a lease never filled in) removes everything a slot may have (the first error is kept). The lease goes
 * last and only when all else went, so a failed teardown is retried by the next prune.
 */
async function teardown(
  stateDir: string,
  slot: string,
  made: { nat: boolean; ifb: boolean; ports: readonly ResolvedPort[] } | null,
  rules = true,
): Promise<void> {
  const host = hostInterfaceName(slot);
  const { address } = slotAddresses(slotNetwork(slot));
  const results = await Promise.allSettled([
    deleteLink(host),
    made === null || made.ifb ? deleteLink(ifbName(slot)) : Promise.resolve(),
    rules ? removeSandboxRules(slot, host, address, made) : Promise.resolve(),
  ]);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  removeLease(stateDir, slot);
}

export interface PruneResult {
  /** Slots (8 hex) whose link, rules and lease were removed. */
  removed: string[];
  /** True when ip_forward was put back to the value it had before hutch. */
  restoredForwarding: boolean;
}

/**
 * Removes the leftovers of sandboxes whose owner is gone: for each lease in the state dir,
 * `isLive(lease)` (default: the owning process still runs) false -> link, ifb, qdiscs, rules
 * and lease are removed. A lease file still empty after 30 s counts as dead. When no hutch
 * link is left on the host, the nftables table is removed and ip_forward restored.
 */
export async function pruneNetwork(
  isLive: (lease: Lease) => boolean = ownerAlive,
  options: { stateDir?: string } = {},
): Promise<PruneResult> {
  const stateDir = options.stateDir ?? networkStateDir();
  const removed: string[] = [];
  let first: unknown;
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
      await teardown(stateDir, slot, lease);
      removed.push(slot);
    } catch (e) {
      first ??= e;
    }
  }
  let restoredForwarding = false;
  if (leaseFiles(stateDir).length === 0 && hutchLinksOnHost().length === 0) {
    await deleteTableIfIdle();
    restoredForwarding = restoreForwarding(stateDir);
  }
  if (first !== undefined) throw first;
  return { removed, restoredForwarding };
}

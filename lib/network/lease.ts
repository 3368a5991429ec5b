/**
 * Address leases: one file per /30 under the state dir, created with O_EXCL so two hutch
 * processes never take the same subnet. The file name is the subnet's address in hex, and
 * every host-side name derives from it (link `hx<hex>`, ifb `hx<hex>i`, nft chains
 * `fwd_<hex>`/`in_<hex>`), so `prune` can remove what a crashed owner left even when the
 * lease was created but never filled in.
 */
import { mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { randomInt } from 'node:crypto';
import { HutchError, hostFailure } from '../errors.js';
import { type Cidr, formatCidr, formatIpv4, overlaps, size } from './cidr.js';
import { isAlive, processStart } from '../host/liveness.js';
import { createLease, leaseAge, removeLease as removeLeaseFile } from '../host/lease.js';

export { processStart };

/** A published port (NetworkOptions.ports), resolved: the lease records it, options.ts makes it. */
export interface ResolvedPort {
  readonly host: number;
  readonly sandbox: number;
  readonly protocol: 'tcp' | 'udp';
}

export interface Lease {
  version: 1;
  /** Sandbox id. */
  id: string;
  /** The hutch process that made the link, and its start time (guards against pid reuse). */
  ownerPid: number;
  ownerStart: string;
  /** Host pid of the sandbox's init. */
  sandboxPid: number;
  /** 8 hex digits: the /30's network address. */
  slot: string;
  ports: ResolvedPort[];
  /** outbound 'nat' (its nftables elements), and whether an ifb shapes egress. */
  nat: boolean;
  ifb: boolean;
  /**
   * Whether the sandbox has nftables chains and elements of its own (outbound 'nat' or ports;
   * a plain link is filtered by the table's skeleton alone). Absent in leases of older hutch
   * versions, which made them for every link: read as true.
   */
  rules?: boolean;
  created: string;
}

const SUFFIX = '.lease';
/** A lease file still empty after this long belongs to a process that died while creating it. */
export const EMPTY_LEASE_GRACE_MS = 30_000;

export function slotHex(network: number): string {
  return network.toString(16).padStart(8, '0');
}

export function slotNetwork(slot: string): number {
  return parseInt(slot, 16) >>> 0;
}

/** Names of the lease files in `stateDir` (none when it does not exist). */
export function leaseFiles(stateDir: string): string[] {
  try {
    return readdirSync(stateDir).filter((n) => /^[0-9a-f]{8}\.lease$/.test(n));
  } catch {
    return [];
  }
}

export function leasePath(stateDir: string, slot: string): string {
  return join(stateDir, `${slot}${SUFFIX}`);
}

/** The lease, or null when the file is gone, empty (being written) or unreadable. */
export function readLease(stateDir: string, name: string): Lease | null {
  try {
    const text = readFileSync(join(stateDir, name), 'utf8');
    if (text.length === 0) return null;
    const l = JSON.parse(text) as Lease;
    return l.version === 1 ? l : null;
  } catch {
    return null;
  }
}

/** Age of a lease file in ms, or undefined when it is gone. */
export function leaseAgeMs(stateDir: string, name: string): number | undefined {
  return leaseAge(join(stateDir, name));
}

/** True while the process that wrote the lease is still the same process. */
export function ownerAlive(lease: Lease): boolean {
  return isAlive({ pid: lease.ownerPid, start: lease.ownerStart });
}

/**
 * Takes a free /30 in `range` that no host route (other than a default route or a hutch
 * link) overlaps, and writes its lease. Starts at a random slot so concurrent processes
 * rarely contend; a taken slot (EEXIST) moves on to the next.
 *
 * @throws HutchError ESETUP (step 'network') when the range is full or the dir is unwritable.
 */
export function takeLease(
  stateDir: string,
  range: Cidr,
  fill: (slot: string) => Lease,
  routes: readonly Cidr[],
): { slot: string; network: number; lease: Lease } {
  try {
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw hostFailure('ESETUP', `network: cannot create the lease directory ${stateDir}`, e);
  }
  const taken = new Set(leaseFiles(stateDir));
  const slots = size(range) / 4;
  const start = slots > 1 ? randomInt(slots) : 0;
  for (let i = 0; i < slots; i++) {
    const network = (range.network + ((start + i) % slots) * 4) >>> 0;
    const slot = slotHex(network);
    if (taken.has(`${slot}${SUFFIX}`)) continue;
    const subnet = { network, prefix: 30 };
    if (routes.some((r) => overlaps(r, subnet))) continue;
    const lease = fill(slot);
    try {
      if (createLease(leasePath(stateDir, slot), JSON.stringify(lease))) return { slot, network, lease };
    } catch (e) {
      throw hostFailure('ESETUP', `network: cannot write the lease ${leasePath(stateDir, slot)}`, e);
    }
  }
  throw new HutchError('ESETUP', `network: no free /30 left in ${formatCidr(range)} (${slots} sandboxes); widen network.range or HUTCH_NET_RANGE, or prune`, {
    step: 'network',
    path: stateDir,
  });
}

export function removeLease(stateDir: string, slot: string): void {
  removeLeaseFile(leasePath(stateDir, slot));
}

/** Addresses of a slot: the host side takes .1, the sandbox .2 of the /30. */
export function slotAddresses(network: number): { hostAddress: string; address: string } {
  return { hostAddress: formatIpv4(network + 1), address: formatIpv4(network + 2) };
}

/**
 * The veth pair: host side `hx<slot>` with the /30's first address, sandbox side `eth0`
 * (created directly in the sandbox's netns, so no separate move) with the second address
 * and a default route via the host side. Made through rtnetlink from the addon (netlink.ts).
 */
import { writeFileSync } from 'node:fs';
import { hostFailure } from '../errors.js';
import { configureHostSide, configurePeerSide, createVeth } from './netlink.js';

/** Name of the sandbox side inside its netns. */
export const SANDBOX_INTERFACE = 'eth0';

export function hostInterfaceName(slot: string): string {
  return `hx${slot}`;
}

/** The ifb that carries the sandbox's egress for shaping (the `i` keeps it matching `hx<hex>`). */
export function ifbName(slot: string): string {
  return `hx${slot}i`;
}

/** The pair, both ends down: the peer is born in the netns of `pid` as eth0. */
export function createPair(host: string, pid: number): void {
  createVeth(host, SANDBOX_INTERFACE, pid);
}

/**
 * Addresses, up, and the sandbox's default route. addrgenmode none on both ends: no IPv6
 * link-local address on a link that carries IPv4 only. The host side first, so the sandbox's
 * first packet finds its gateway's address in place.
 */
export function configurePair(host: string, pid: number, hostAddress: string, address: string): void {
  configureHostSide(host, hostAddress, 30);
  configurePeerSide(pid, SANDBOX_INTERFACE, address, 30, hostAddress);
}

/**
 * route_localnet on hutch's own link only: lets a connection to 127.0.0.1:hostPort, DNATed
 * in the output hook, leave through this link (the kernel otherwise drops a loopback source
 * on a non-loopback device); nat.ts masquerades it to the host address so replies come back.
 */
export function enableRouteLocalnet(host: string): void {
  const path = `/proc/sys/net/ipv4/conf/${host}/route_localnet`;
  try {
    writeFileSync(path, '1');
  } catch (e) {
    throw hostFailure('ESETUP', `network: writing ${path}`, e);
  }
}

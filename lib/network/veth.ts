/**
 * The veth pair: host side `hx<slot>` with the /30's first address, sandbox side `eth0`
 * (created directly in the sandbox's netns, so no separate move) with the second address
 * and a default route via the host side. Commands are built as text (one `ip -batch` per
 * side); each builder is pure so a netlink version in the addon can replace the runner.
 */
import { writeFileSync } from 'node:fs';
import { hostFailure } from '../errors.js';
import { run, stderrOf } from './run.js';

/** Name of the sandbox side inside its netns. */
export const SANDBOX_INTERFACE = 'eth0';

export function hostInterfaceName(slot: string): string {
  return `hx${slot}`;
}

/** The ifb that carries the sandbox's egress for shaping (the `i` keeps it matching `hx<hex>`). */
export function ifbName(slot: string): string {
  return `hx${slot}i`;
}

/**
 * Host side: the pair (peer straight into the netns of `pid`), its address, an ifb when
 * egress is shaped. addrgenmode none: no IPv6 link-local address on a link that carries IPv4 only.
 */
export function hostLinkBatch(host: string, pid: number, hostAddress: string, ifb: string | null): string {
  const lines = [
    `link add name ${host} type veth peer name ${SANDBOX_INTERFACE} netns ${pid}`,
    `link set dev ${host} addrgenmode none`,
    `addr add ${hostAddress}/30 dev ${host}`,
  ];
  if (ifb) lines.push(`link add name ${ifb} type ifb`, `link set dev ${ifb} up`);
  lines.push(`link set dev ${host} up`);
  return lines.join('\n') + '\n';
}

/** Sandbox side, run inside its netns. */
export function peerBatch(address: string, hostAddress: string): string {
  return [
    `link set dev ${SANDBOX_INTERFACE} addrgenmode none`,
    `addr add ${address}/30 dev ${SANDBOX_INTERFACE}`,
    `link set dev ${SANDBOX_INTERFACE} up`,
    `route add default via ${hostAddress} dev ${SANDBOX_INTERFACE}`,
  ].join('\n') + '\n';
}

export async function createHostLinks(host: string, pid: number, hostAddress: string, ifb: string | null): Promise<void> {
  await run('ip', ['-batch', '-'], hostLinkBatch(host, pid, hostAddress, ifb), `creating ${host} (veth to pid ${pid})`);
}

/**
 * nsenter into the netns only (not the user namespace): host root already holds
 * CAP_NET_ADMIN over every netns it can see, and needs no bind mount under /run/netns.
 */
export async function configurePeer(pid: number, address: string, hostAddress: string): Promise<void> {
  await run('nsenter', [`--net=/proc/${pid}/ns/net`, 'ip', '-batch', '-'], peerBatch(address, hostAddress), `configuring ${SANDBOX_INTERFACE} in the netns of pid ${pid}`);
}

/** Deletes a link hutch made; a link already gone (its netns ended, or a second release) is fine. */
export async function deleteLink(name: string): Promise<void> {
  try {
    await run('ip', ['link', 'del', 'dev', name], undefined, `deleting link ${name}`);
  } catch (e) {
    if (/Cannot find device|does not exist|No such device/.test(stderrOf(e))) return;
    throw e;
  }
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

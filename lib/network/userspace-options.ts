/**
 * The userspace link's options and host checks (userspace.ts makes the link): which backend
 * this process uses (`HUTCH_NETWORK_BACKEND`), where pasta and nft are, and what a bridge plan
 * or a capability list may ask outside host root. All of it runs when options are resolved,
 * before anything is made.
 */
import { accessSync, constants as fsc, readFileSync } from 'node:fs';
import { HutchError, invalid, unsupported } from '../errors.js';
import { hostMode } from '../host/mode.js';
import type { Cidr } from './cidr.js';
import type { ResolvedPort } from './lease.js';

export type NetworkBackend = 'veth' | 'userspace';

/**
 * What this backend reads of a bridge plan (options.ts's BridgePlan, spelled out here:
 * options.ts imports this file, and the layers allow no cycle).
 */
export interface UserspacePlan {
  readonly egressBps: number | null;
  readonly ingressBps: number | null;
  readonly outbound: 'none' | 'nat';
  readonly allow: readonly Cidr[] | null;
  readonly ports: readonly ResolvedPort[];
  readonly hostPorts: readonly { readonly port: number; readonly protocol: 'tcp' | 'udp' }[];
  readonly range: Cidr;
  /** Egress by name; anything but null is refused here. */
  readonly names: unknown;
}

/**
 * The backend for this process: `HUTCH_NETWORK_BACKEND` (`userspace` or `veth`), else
 * `veth` in `root` mode and `userspace` otherwise.
 */
export function networkBackend(env: NodeJS.ProcessEnv = process.env): NetworkBackend {
  const v = env.HUTCH_NETWORK_BACKEND;
  if (v === undefined || v === '') return hostMode() === 'root' ? 'veth' : 'userspace';
  if (v === 'userspace' || v === 'veth') return v;
  throw invalid('HUTCH_NETWORK_BACKEND', `'userspace' or 'veth' (or unset: veth as host root, userspace otherwise)`, v);
}

const found = new Map<string, string | null>();

/** The path of a program on PATH, else in /usr/sbin or /sbin (an ordinary user's PATH often lacks them: nft). */
export function findProgram(name: string, env: NodeJS.ProcessEnv = process.env): string | null {
  const path = env.PATH ?? '';
  const key = `${name}\0${path}`;
  if (found.has(key)) return found.get(key)!;
  let hit: string | null = null;
  for (const dir of [...path.split(':').filter((d) => d.startsWith('/')), '/usr/sbin', '/sbin']) {
    try {
      accessSync(`${dir}/${name}`, fsc.X_OK);
      hit = `${dir}/${name}`;
      break;
    } catch {}
  }
  found.set(key, hit);
  return hit;
}

/** The first port an unprivileged process may bind on the host (net.ipv4.ip_unprivileged_port_start). */
function unprivilegedPortStart(): number {
  try {
    const n = Number(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8').trim());
    return Number.isInteger(n) ? n : 1024;
  } catch {
    return 1024;
  }
}

/**
 * Egress by name outside host root: refused, never run unfiltered. hutch checks names with its
 * own resolver and a name check on the host side of the sandbox's veth, where nftables in the
 * host's network namespace sends the sandbox's DNS and TLS/HTTP connections; the userspace
 * link (pasta) has neither that hook nor a veth.
 */
export function namesUnsupported(field: string): HutchError {
  return unsupported(
    `${field}.domains/deny/ask/dns (egress by name) outside host root (the userspace network backend, pasta)`,
    "hutch filters names with its own resolver and a name check on the host side of a veth, which only nftables in the host's network namespace can send the sandbox's traffic to, and it never runs a sandbox unfiltered instead. Run hutch as host root (sudo, or a container or pod whose root has CAP_NET_ADMIN in its own network namespace), or drop the names and reach fixed addresses with `allow` CIDRs",
  );
}

/**
 * What the userspace backend cannot do with these options, refused before anything is made
 * (called by resolveNetwork with the rest already validated).
 *
 * @throws HutchError EUNSUPPORTED: egress by name (`domains`, `deny`, `ask`, `dns`); pasta or
 *   nft missing; a published port below the host's unprivileged port start outside root.
 */
export function checkUserspacePlan(field: string, plan: UserspacePlan, env: NodeJS.ProcessEnv = process.env): void {
  if (plan.names !== null) throw namesUnsupported(field);
  if (findProgram('pasta', env) === null) {
    throw unsupported(`${field}.mode 'bridge' outside host root`, "it needs pasta, the userspace network stack: apt-get install passt (dnf install passt)");
  }
  try {
    accessSync('/dev/net/tun', fsc.R_OK | fsc.W_OK);
  } catch {
    throw unsupported(
      `${field}.mode 'bridge' outside host root`,
      "pasta needs /dev/net/tun readable and writable by this user (most distributions make it 0666; as root: chmod 0666 /dev/net/tun, or a udev rule KERNEL==\"tun\", MODE=\"0666\"; in a container or pod, pass the device /dev/net/tun)",
    );
  }
  if (findProgram('nft', env) === null) {
    throw unsupported(`${field}.mode 'bridge' outside host root`, 'it needs nft to filter inside the sandbox: apt-get install nftables');
  }
  plan.ports.forEach((p, i) => {
    // Measured: this pasta (passt 2023-03) delivers a UDP datagram to a translated port, but
    // loses the answer on its way back; with the same number both sides it works.
    if (p.protocol === 'udp' && p.host !== p.sandbox) {
      throw unsupported(
        `${field}.ports[${i}] (UDP ${p.host} -> ${p.sandbox}) with the userspace network backend`,
        `pasta loses the answers of a UDP port published under another number: publish it as { host: ${p.host}, sandbox: ${p.host}, protocol: 'udp' } (the server inside on ${p.host}), or run hutch as host root`,
      );
    }
  });
  if ((process.geteuid?.() ?? 0) !== 0) {
    const start = unprivilegedPortStart();
    plan.ports.forEach((p, i) => {
      if (p.host < start) {
        throw unsupported(
          `${field}.ports[${i}].host ${p.host} outside host root`,
          `ports below ${start} need privileges; publish a port >= ${start}, or as root: sysctl -w net.ipv4.ip_unprivileged_port_start=${p.host}`,
        );
      }
    });
  }
}

/**
 * For checkHost(): null when a userspace bridge can be made here, else why not and the fix
 * (the EUNSUPPORTED message `resolveNetwork` would give).
 */
export function userspaceNetworkProblem(env: NodeJS.ProcessEnv = process.env): string | null {
  try {
    checkUserspacePlan('network', { egressBps: null, ingressBps: null, outbound: 'none', allow: null, ports: [], hostPorts: [], range: { network: 0x0ac80000, prefix: 16 }, names: null }, env);
    return null;
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
}

/**
 * A userspace link is filtered inside the sandbox's own netns, which the sandbox's user
 * namespace owns: a sandbox given CAP_NET_ADMIN could remove its filter and shaping.
 *
 * @throws HutchError EINVAL when `capabilities` holds NET_ADMIN for a userspace bridge.
 */
export function checkUserspaceCapabilities(network: { readonly mode: string; readonly backend?: string }, capabilities: readonly string[]): void {
  if (network.mode !== 'bridge' || network.backend !== 'userspace') return;
  if (capabilities.includes('NET_ADMIN')) {
    throw new HutchError(
      'EINVAL',
      "invalid option capabilities: NET_ADMIN with network mode 'bridge' outside host root: the sandbox would own its link's filter and shaping (they live in its own network namespace); drop NET_ADMIN, or run hutch as host root",
    );
  }
}

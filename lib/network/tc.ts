/**
 * Shaping, both directions on the host side of the link so the sandbox cannot change it
 * even with CAP_NET_ADMIN in its own user namespace:
 * - ingress (host -> sandbox): tbf as the root qdisc of `hx<slot>` (what the host sends into the link);
 * - egress (sandbox -> host): the `ingress` qdisc of `hx<slot>` redirects every packet
 *   (u32 match-all + mirred) to the ifb `hx<slot>i`, whose root tbf shapes it.
 * Made through rtnetlink (netlink.ts), not `tc`: the same qdiscs and filter, no process.
 * Measured (docs/networking.md): a bulk TCP transfer gets 94-98% of the asked rate from
 * 1 Mbit/s to 1 Gbit/s in both directions; the rest is TCP/IP and Ethernet headers, which tbf counts.
 */
import { addIngressRedirect, addTbf, createIfb } from './netlink.js';

/** tbf latency: how long a packet may wait in the queue; sets the queue length for the rate. */
export const TBF_LATENCY_MS = 50;
/** Two full Ethernet frames: tbf needs at least one in its bucket. */
const MIN_BURST = 2 * 1514;

/**
 * Bucket size for a rate: 8 ms of traffic (two ticks at HZ=250, the coarsest common timer),
 * at least two full frames. Smaller buckets cost throughput at high rates; larger ones let
 * longer bursts through above the rate.
 */
export function burstBytes(bps: number): number {
  return Math.max(MIN_BURST, Math.ceil((bps / 8) * 0.008));
}

/** Queue length in bytes: what the rate sends in TBF_LATENCY_MS, plus the bucket (as `tc ... latency` computes it). */
export function limitBytes(bps: number): number {
  return Math.min(0xffffffff, Math.ceil((bps / 8) * (TBF_LATENCY_MS / 1000)) + burstBytes(bps));
}

/** One step of shaping a link, in the order they are made. */
export type ShapingStep =
  | { kind: 'ifb'; dev: string }
  | { kind: 'tbf'; dev: string; bps: number; burst: number; limit: number }
  | { kind: 'redirect'; dev: string; target: string };

/** What shaping a link takes; empty when neither direction is shaped. */
export function shapingSteps(host: string, ifb: string | null, egressBps: number | null, ingressBps: number | null): ShapingStep[] {
  const tbf = (dev: string, bps: number): ShapingStep => ({ kind: 'tbf', dev, bps, burst: burstBytes(bps), limit: limitBytes(bps) });
  const steps: ShapingStep[] = [];
  if (ingressBps !== null) steps.push(tbf(host, ingressBps));
  if (egressBps !== null && ifb !== null) {
    // The ifb's tbf first: once the redirect exists, the sandbox's packets flow through it.
    steps.push({ kind: 'ifb', dev: ifb }, tbf(ifb, egressBps), { kind: 'redirect', dev: host, target: ifb });
  }
  return steps;
}

/** `sock`: a NETLINK_ROUTE socket of another netns to shape in (the userspace backend's); default the host's. */
export function applyShaping(host: string, ifb: string | null, egressBps: number | null, ingressBps: number | null, sock?: number): void {
  applySteps(shapingSteps(host, ifb, egressBps, ingressBps), sock);
}

/** Makes `steps` in order, in the host's netns or the netns of `sock`. */
export function applySteps(steps: readonly ShapingStep[], sock?: number): void {
  for (const s of steps) {
    if (s.kind === 'ifb') createIfb(s.dev, sock);
    else if (s.kind === 'tbf') addTbf(s.dev, s.bps, s.burst, s.limit, sock);
    else addIngressRedirect(s.dev, s.target, sock);
  }
}

/**
 * Shaping, both directions on the host side of the link so the sandbox cannot change it
 * even with CAP_NET_ADMIN in its own user namespace:
 * - ingress (host -> sandbox): tbf as the root qdisc of `hx<slot>` (what the host sends into the link);
 * - egress (sandbox -> host): the `ingress` qdisc of `hx<slot>` redirects every packet
 *   (u32 match-all + mirred) to the ifb `hx<slot>i`, whose root tbf shapes it.
 * Measured (docs/networking.md): a bulk TCP transfer gets 94-98% of the asked rate from
 * 1 Mbit/s to 1 Gbit/s in both directions; the rest is TCP/IP and Ethernet headers, which tbf counts.
 */
import { run } from './run.js';

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

function tbf(dev: string, bps: number): string {
  return `qdisc add dev ${dev} root handle 1: tbf rate ${bps}bit burst ${burstBytes(bps)} latency ${TBF_LATENCY_MS}ms`;
}

/** The `tc -batch` text for a link; empty when neither direction is shaped. */
export function shapingBatch(host: string, ifb: string | null, egressBps: number | null, ingressBps: number | null): string {
  const lines: string[] = [];
  if (ingressBps !== null) lines.push(tbf(host, ingressBps));
  if (egressBps !== null && ifb !== null) {
    lines.push(
      `qdisc add dev ${host} handle ffff: ingress`,
      `filter add dev ${host} parent ffff: protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev ${ifb}`,
      tbf(ifb, egressBps),
    );
  }
  return lines.length ? lines.join('\n') + '\n' : '';
}

export async function applyShaping(host: string, ifb: string | null, egressBps: number | null, ingressBps: number | null): Promise<void> {
  const batch = shapingBatch(host, ifb, egressBps, ingressBps);
  if (batch) await run('tc', ['-batch', '-'], batch, `shaping ${host} (tc)`);
}

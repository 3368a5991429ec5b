/**
 * Shared by the egress-by-name tests: the test's own internet for one describe block
 * (bench/inet.ts), the network options that point a sandbox at it, and a shell in a sandbox.
 */
import { afterAll, beforeAll } from 'vitest';
import type { Sandbox } from '../../lib/index.js';
import { settleNetwork } from '../../lib/network/index.js';
import { makeInet, type Inet } from '../../bench/inet.js';

/** The sandbox's lease slot (its /30, 8 hex digits): names its nftables sets and chains. */
export function slotOf(sb: Sandbox): string {
  return sb.network!.address.split('.').map((o, i) => (Number(o) & (i === 3 ? 0xfc : 0xff)).toString(16).padStart(2, '0')).join('');
}

/**
 * The internet (198.19.n.0/24) made before the block's tests and closed after them, hutch's
 * network work settled; `net(x)`: NAT options in `range` resolving through its DNS server.
 */
export function useInet(n: () => number, range: string): { readonly inet: Inet; net(x: Record<string, unknown>): Record<string, unknown> & { mode: 'bridge'; outbound: 'nat' } } {
  let inet: Inet | undefined;
  beforeAll(async () => {
    inet = await makeInet(n());
  });
  afterAll(async () => {
    inet?.close();
    await settleNetwork().catch(() => undefined);
  });
  return {
    get inet() {
      return inet!;
    },
    net: (x) => ({ mode: 'bridge' as const, outbound: 'nat' as const, range, dns: { servers: [inet!.dns] }, ...x }),
  };
}

/** `cmd` run by sh in `sb`, its output as strings. */
export async function shIn(sb: Sandbox, cmd: string, timeoutMs: number): Promise<Awaited<ReturnType<Sandbox['exec']>> & { stdout: string; stderr: string }> {
  const r = await sb.exec(['sh', '-c', cmd], { encoding: 'utf8', timeoutMs });
  return { ...r, stdout: r.stdout as string, stderr: r.stderr as string };
}

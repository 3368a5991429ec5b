/**
 * nftables: one table of hutch's own, `inet hutch`, shared by every sandbox on the host and
 * never any other table. Per-sandbox state is map/set elements keyed by the host interface
 * plus two small chains, so a packet costs one hash lookup whatever the number of sandboxes
 * and add/remove is a single atomic `nft -f` transaction.
 *
 * Policy, for traffic from a sandbox link `hx<slot>`:
 * - to the host itself (input): only its own host-side address, and with outbound 'nat' the
 *   `allow` CIDRs; replies to connections the host opened are admitted. A plain link (no nat,
 *   no ports) has no elements of its own: the skeleton's `fib daddr . iif type local` admits
 *   exactly the addresses on the link the packet came in by, so a plain sandbox costs no nft
 *   call at all;
 * - forwarded: never to another hutch link (sandboxes never reach each other); with outbound
 *   'nat', to `allow` (or anywhere when allow is absent), masqueraded; otherwise dropped.
 * To a sandbox link, forwarded traffic is only replies and published ports (DNAT).
 * Published ports: DNAT in prerouting (other hosts) and output (this host) for any local
 * destination address; 127.0.0.1 works through route_localnet on the link plus a masquerade
 * of the loopback source (veth.ts).
 */
import { readFileSync, readdirSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { HutchError, errnoName, hostFailure } from '../errors.js';
import { native } from '../native.js';
import { type Cidr, formatCidr } from './cidr.js';
import type { ResolvedPort } from './options.js';
import { run, stderrOf } from './run.js';

export const TABLE = 'inet hutch';
/**
 * An empty set naming the skeleton's version, added last in the table's transaction: its
 * presence (one netlink lookup, no nft process) says the table exists and filters plain links.
 */
export const SKELETON_MARK = 'skeleton_v2';

/** Created once per host (`create table` fails the whole transaction if another process won the race). */
export function skeletonScript(): string {
  const t = TABLE;
  return `create table ${t}
add map ${t} links_fwd { type ifname : verdict; }
add map ${t} links_in { type ifname : verdict; }
add set ${t} nat_links { type ifname; }
add set ${t} localnet_links { type ifname; }
add map ${t} ports { type inet_proto . inet_service : ipv4_addr . inet_service; }
add chain ${t} forward { type filter hook forward priority filter; policy accept; }
add rule ${t} forward iifname vmap @links_fwd
add rule ${t} forward iifname "hx*" drop
add rule ${t} forward oifname "hx*" ct state established,related accept
add rule ${t} forward oifname "hx*" ct status dnat accept
add rule ${t} forward oifname "hx*" drop
add chain ${t} input { type filter hook input priority filter; policy accept; }
add rule ${t} input iifname vmap @links_in
add rule ${t} input iifname "hx*" ct state established,related accept
add rule ${t} input iifname "hx*" meta nfproto ipv4 fib daddr . iif type local accept
add rule ${t} input iifname "hx*" drop
add chain ${t} prerouting { type nat hook prerouting priority dstnat; policy accept; }
add rule ${t} prerouting fib daddr type local dnat ip to meta l4proto . th dport map @ports
add chain ${t} output { type nat hook output priority -100; policy accept; }
add rule ${t} output fib daddr type local dnat ip to meta l4proto . th dport map @ports
add chain ${t} postrouting { type nat hook postrouting priority srcnat; policy accept; }
add rule ${t} postrouting oifname @localnet_links ip saddr 127.0.0.0/8 masquerade
add rule ${t} postrouting iifname @nat_links oifname != "hx*" masquerade
add set ${t} ${SKELETON_MARK} { type ifname; }
`;
}

export interface SandboxRules {
  slot: string;
  host: string;
  address: string;
  hostAddress: string;
  outbound: 'none' | 'nat';
  allow: readonly Cidr[] | null;
  ports: readonly ResolvedPort[];
}

function cidrList(allow: readonly Cidr[]): string {
  return `{ ${allow.map(formatCidr).join(', ')} }`;
}

/** One transaction adding a sandbox; `create element` on ports fails it if another sandbox holds the port. */
export function addScript(r: SandboxRules): string {
  const t = TABLE;
  const fwd = `fwd_${r.slot}`;
  const inp = `in_${r.slot}`;
  const lines = [
    `add chain ${t} ${fwd}`,
    `add rule ${t} ${fwd} ct state established,related accept`,
    `add rule ${t} ${fwd} oifname "hx*" drop`,
  ];
  if (r.outbound === 'nat') {
    if (r.allow === null) lines.push(`add rule ${t} ${fwd} meta nfproto ipv4 accept`);
    else if (r.allow.length > 0) lines.push(`add rule ${t} ${fwd} ip daddr ${cidrList(r.allow)} accept`);
  }
  lines.push(
    `add rule ${t} ${fwd} drop`,
    `add chain ${t} ${inp}`,
    `add rule ${t} ${inp} ct state established,related accept`,
    `add rule ${t} ${inp} ip daddr ${r.hostAddress} accept`,
  );
  if (r.outbound === 'nat' && r.allow !== null && r.allow.length > 0) lines.push(`add rule ${t} ${inp} ip daddr ${cidrList(r.allow)} accept`);
  lines.push(
    `add rule ${t} ${inp} drop`,
    `add element ${t} links_fwd { "${r.host}" : jump ${fwd} }`,
    `add element ${t} links_in { "${r.host}" : jump ${inp} }`,
  );
  if (r.outbound === 'nat') lines.push(`add element ${t} nat_links { "${r.host}" }`);
  if (r.ports.length > 0) {
    lines.push(`add element ${t} localnet_links { "${r.host}" }`);
    for (const p of r.ports) lines.push(`create element ${t} ports { ${p.protocol} . ${p.host} : ${r.address} . ${p.sandbox} }`);
  }
  return lines.join('\n') + '\n';
}

/**
 * Lines removing what `addScript` added: exactly that when `nat` is known (one transaction
 * that succeeds), else every element it may have added (a lease never filled in).
 */
export function removeLines(slot: string, host: string, ports: readonly ResolvedPort[], nat: boolean | null): string[] {
  const t = TABLE;
  return [
    `delete element ${t} links_fwd { "${host}" }`,
    `delete element ${t} links_in { "${host}" }`,
    ...(nat !== false ? [`delete element ${t} nat_links { "${host}" }`] : []),
    ...(nat === null || ports.length > 0 ? [`delete element ${t} localnet_links { "${host}" }`] : []),
    ...ports.map((p) => `delete element ${t} ports { ${p.protocol} . ${p.host} }`),
    `delete chain ${t} fwd_${slot}`,
    `delete chain ${t} in_${slot}`,
  ];
}

/** True when the table exists with this skeleton (netlink, microseconds). */
function tableReady(): boolean {
  const r = native().netfilterSetExists('hutch', SKELETON_MARK);
  if (typeof r === 'boolean') return r;
  throw new HutchError('ESETUP', `network: looking up nftables table ${TABLE}: ${errnoName(r.errno)}${r.detail ? ` (${r.detail})` : ''}`, { step: 'network', errno: errnoName(r.errno) });
}

let creating: Promise<void> | null = null;

/**
 * Makes sure `table inet hutch` exists with this skeleton before any link is made: checked on
 * every call (a prune in another process may have removed an idle table), created when absent
 * (one nft process, normally once per host). A table of an older skeleton is replaced when no
 * hutch link is left, else refused.
 */
export async function ensureTable(): Promise<void> {
  if (tableReady()) return;
  creating ??= createTable().finally(() => (creating = null));
  await creating;
}

async function createTable(): Promise<void> {
  try {
    await run('nft', ['-f', '-'], skeletonScript(), `creating nftables table ${TABLE}`);
    return;
  } catch (e) {
    if (!/File exists/.test(stderrOf(e))) throw e;
  }
  // Another process made it meanwhile, or an older hutch's table is there.
  if (tableReady()) return;
  if (hutchLinksOnHost().length > 0) {
    throw new HutchError('ESETUP', `network: nftables table ${TABLE} was made by an older hutch and is in use; end its sandboxes and run prune`, { step: 'network' });
  }
  await run('nft', ['delete', 'table', 'inet', 'hutch']).catch(() => undefined);
  await run('nft', ['-f', '-'], skeletonScript(), `creating nftables table ${TABLE}`);
}

/** Adds a sandbox's rules; a port another sandbox won in a race becomes EINVAL naming it. */
export async function addSandboxRules(r: SandboxRules): Promise<void> {
  await ensureTable();
  try {
    await run('nft', ['-f', '-'], addScript(r), `adding nftables rules for ${r.host}`);
  } catch (e) {
    const err = stderrOf(e);
    if (/No such file or directory/.test(err) && /table|links_/.test(err)) {
      // The table went away (a prune on an idle host) after this process saw it: make it again.
      await ensureTable();
      await run('nft', ['-f', '-'], addScript(r), `adding nftables rules for ${r.host}`);
      return;
    }
    const m = /ports \{ (tcp|udp) \. (\d+) :/.exec(err);
    if (/File exists/.test(err) && m) {
      throw new HutchError('EINVAL', `invalid option network.ports: host port ${m[1]}/${m[2]} was published by another sandbox meanwhile`, { cause: e });
    }
    throw e;
  }
}

/**
 * Removes a sandbox's rules: one transaction when everything is there, else line by line,
 * keeping the first error that is not "already gone". Also removes port elements that point
 * to `address` when the ports are not known (a lease that was never filled in).
 */
export async function removeSandboxRules(
  slot: string,
  host: string,
  address: string,
  added: { nat: boolean; ports: readonly ResolvedPort[] } | null,
): Promise<void> {
  const ports = added?.ports ?? (await portsPointingTo(address));
  const lines = removeLines(slot, host, ports, added ? added.nat : null);
  try {
    await run('nft', ['-f', '-'], lines.join('\n') + '\n', `removing nftables rules of ${host}`);
    return;
  } catch {
    // Some were gone; fall through to one at a time.
  }
  let first: unknown;
  for (const line of lines) {
    try {
      await run('nft', ['-f', '-'], line + '\n', `nft ${line}`);
    } catch (e) {
      if (!/No such file or directory|does not exist/.test(stderrOf(e)) && first === undefined) first = e;
    }
  }
  if (first !== undefined) throw first;
}

async function portsPointingTo(address: string): Promise<ResolvedPort[]> {
  let out: string;
  try {
    out = (await run('nft', ['-j', 'list', 'map', 'inet', 'hutch', 'ports'])).stdout;
  } catch {
    return [];
  }
  const found: ResolvedPort[] = [];
  try {
    const doc = JSON.parse(out) as { nftables: { map?: { elem?: [{ concat: [string, number] }, { concat: [string, number] }][] } }[] };
    for (const item of doc.nftables) {
      for (const [k, v] of item.map?.elem ?? []) {
        if (v.concat[0] === address) found.push({ protocol: k.concat[0] as 'tcp' | 'udp', host: k.concat[1], sandbox: v.concat[1] });
      }
    }
  } catch {
    // An unexpected listing: leave the ports to the next prune rather than guess.
  }
  return found;
}

/** Deletes the table when no hutch link is left on the host (prune on an idle host). */
export async function deleteTableIfIdle(): Promise<boolean> {
  if (hutchLinksOnHost().length > 0) return false;
  try {
    await run('nft', ['delete', 'table', 'inet', 'hutch']);
  } catch {
    // Not there, or recreated meanwhile: either way nothing of ours to remove.
  }
  return true;
}

export function hutchLinksOnHost(): string[] {
  try {
    return readdirSync('/sys/class/net').filter((n) => /^hx[0-9a-f]{8}i?$/.test(n));
  } catch {
    return [];
  }
}

const IP_FORWARD = '/proc/sys/net/ipv4/ip_forward';
const RECORD = 'ip_forward.orig';

/**
 * Outbound NAT and ports reached from other hosts need IPv4 forwarding. When it is off,
 * hutch records the old value in the state dir (once, O_EXCL) and turns it on; `prune` on
 * an idle host puts it back. This is the only host-wide setting hutch changes.
 */
export function enableForwarding(stateDir: string): void {
  try {
    if (readFileSync(IP_FORWARD, 'utf8').trim() === '1') return;
    try {
      writeFileSync(join(stateDir, RECORD), '0\n', { flag: 'wx' });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    writeFileSync(IP_FORWARD, '1');
  } catch (e) {
    throw hostFailure('ESETUP', `network: enabling ${IP_FORWARD} (needed for outbound nat and published ports)`, e);
  }
}

/** Restores ip_forward if hutch changed it and no hutch link is left. */
export function restoreForwarding(stateDir: string): boolean {
  const record = join(stateDir, RECORD);
  let orig: string;
  try {
    orig = readFileSync(record, 'utf8').trim();
  } catch {
    return false;
  }
  if (hutchLinksOnHost().length > 0) return false;
  try {
    writeFileSync(IP_FORWARD, orig === '1' ? '1' : '0');
    unlinkSync(record);
    return true;
  } catch (e) {
    throw hostFailure('ESETUP', `network: restoring ${IP_FORWARD}`, e);
  }
}

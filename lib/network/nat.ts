/**
 * nftables: one table of hutch's own, `inet hutch`, shared by every sandbox on the host and
 * never any other table. Per-sandbox state is map/set elements keyed by the host interface
 * plus two small chains, so a packet costs one hash lookup whatever the number of sandboxes
 * and add/remove is a single atomic `nft -f` transaction.
 *
 * Policy, for traffic from a sandbox link `hx<slot>`:
 * - to the host itself (input): refused at once (TCP reset, else ICMP port unreachable), so
 *   whatever listens on 0.0.0.0 or :: stays out of reach; admitted are only replies to
 *   connections the host opened and the sandbox's `hostPorts` on its own link's host address
 *   (`fib daddr . iif type local`: not another sandbox's host side nor the host's other
 *   addresses). A plain link (no nat, ports or hostPorts) has no elements of its own, so it
 *   costs no nft call at all;
 * - forwarded: never to another hutch link (sandboxes never reach each other); with outbound
 *   'nat', to `allow` (or anywhere when allow is absent), masqueraded; otherwise dropped.
 * To a sandbox link, forwarded traffic is only replies and published ports (DNAT).
 * Published ports: DNAT in prerouting (other hosts) and output (this host) for any local
 * destination address; 127.0.0.1 works through route_localnet on the link plus a masquerade
 * of the loopback source (veth.ts).
 * `fwd_guard` holds the uplinks whose forwarding flag hutch turned on (forwarding.ts): what
 * comes in by them and would be forwarded anywhere but to a hutch link is dropped, as the
 * kernel did before the flag was set.
 */
import { readdirSync } from 'node:fs';
import { HutchError, errnoName } from '../errors.js';
import { native } from '../native.js';
import { type Cidr, formatCidr } from './cidr.js';
import type { ResolvedHostPort, ResolvedPort } from './options.js';
import type { EgressLists } from './policy.js';
import { run, stderrOf } from './run.js';
import { MARK_BASE, PASS, PENDING_BASE, PENDING_MASK, pendingMark } from './nfqueue.js';

export const TABLE = 'inet hutch';
/**
 * An empty set naming the skeleton's version, added last in the table's transaction: its
 * presence (one netlink lookup, no nft process) says the table exists and filters plain links.
 */
export const SKELETON_MARK = 'skeleton_v4';
/**
 * The previous skeletons' marks, kept: each skeleton's maps and sets are a superset of the
 * one before, so a process of an older hutch still running finds the table it expects and
 * keeps working in it. (v4 added `links_pre` and the `names_pre` base chain.)
 */
const OLD_MARKS = ['skeleton_v2', 'skeleton_v3'];

/**
 * The table with this skeleton, as one transaction that works on no table, an older skeleton
 * or this one (`add` is idempotent, the base chains are flushed and filled again): per-sandbox
 * state lives in elements and in chains of their own, which it leaves alone. Two processes
 * running it at once end with the same table.
 */
export function skeletonScript(): string {
  const t = TABLE;
  const chain = (name: string, spec: string) => [`add chain ${t} ${name} { ${spec}; }`, `flush chain ${t} ${name}`];
  return [
    `add table ${t}`,
    `add map ${t} links_fwd { type ifname : verdict; }`,
    `add map ${t} links_in { type ifname : verdict; }`,
    `add map ${t} links_pre { type ifname : verdict; }`,
    `add set ${t} nat_links { type ifname; }`,
    `add set ${t} localnet_links { type ifname; }`,
    `add set ${t} fwd_guard { type ifname; }`,
    `add map ${t} ports { type inet_proto . inet_service : ipv4_addr . inet_service; }`,
    ...chain('forward', 'type filter hook forward priority filter; policy accept'),
    `add rule ${t} forward iifname vmap @links_fwd`,
    `add rule ${t} forward iifname "hx*" drop`,
    `add rule ${t} forward oifname "hx*" ct state established,related accept`,
    `add rule ${t} forward oifname "hx*" ct status dnat accept`,
    `add rule ${t} forward oifname "hx*" drop`,
    ...chain('input', 'type filter hook input priority filter; policy accept'),
    `add rule ${t} input iifname vmap @links_in`,
    `add rule ${t} input iifname "hx*" ct state established,related accept`,
    `add rule ${t} input iifname "hx*" meta l4proto tcp reject with tcp reset`,
    `add rule ${t} input iifname "hx*" reject with icmpx port-unreachable`,
    // After conntrack's un-NAT (priority dstnat): a reply's destination is the sandbox by now.
    ...chain('guard', 'type filter hook prerouting priority dstnat + 10; policy accept'),
    `add rule ${t} guard iifname @fwd_guard fib daddr type unicast fib daddr oifname != "hx*" drop`,
    // Egress by name: each sandbox's pre_<slot> is a regular chain jumped from here. Removing a
    // base chain (a hook) makes the kernel drop every packet queued in this netns, so
    // per-sandbox base chains would stall every other sandbox's connections held by the name
    // check's queue (nfqueue.ts) whenever one sandbox went.
    ...chain('names_pre', 'type nat hook prerouting priority dstnat - 5; policy accept'),
    `add rule ${t} names_pre iifname vmap @links_pre`,
    ...chain('prerouting', 'type nat hook prerouting priority dstnat; policy accept'),
    `add rule ${t} prerouting fib daddr type local dnat ip to meta l4proto . th dport map @ports`,
    ...chain('output', 'type nat hook output priority -100; policy accept'),
    `add rule ${t} output fib daddr type local dnat ip to meta l4proto . th dport map @ports`,
    ...chain('postrouting', 'type nat hook postrouting priority srcnat; policy accept'),
    `add rule ${t} postrouting oifname @localnet_links ip saddr 127.0.0.0/8 masquerade`,
    `add rule ${t} postrouting iifname @nat_links oifname != "hx*" masquerade`,
    ...[...OLD_MARKS, SKELETON_MARK].map((m) => `add set ${t} ${m} { type ifname; }`),
  ].join('\n') + '\n';
}

export interface SandboxRules {
  slot: string;
  host: string;
  address: string;
  outbound: 'none' | 'nat';
  allow: readonly Cidr[] | null;
  ports: readonly ResolvedPort[];
  hostPorts: readonly ResolvedHostPort[];
  /** Uplinks whose forwarding flag hutch turns on for this sandbox (forwarding.ts): guarded first. */
  guard: readonly string[];
  /**
   * Egress by name: the lists, the NFLOG group refusals are logged to (null: not logged), and
   * the netfilter queue of the name check (nfqueue.ts; absent or null until the sandbox's
   * egress starts: new connections to admitted addresses on 80/443 are refused meanwhile).
   */
  names?: { lists: EgressLists; logGroup: number | null; queue?: number | null } | null;
}

/** The set of addresses the sandbox's allowed names resolved to (dns-server.ts fills it). */
export function admittedSet(slot: string): string {
  return `ok_${slot}`;
}

/** The set of bare addresses `ask` allowed (egress.ts fills it; they stand for the sandbox's life). */
export function askedSet(slot: string): string {
  return `askok_${slot}`;
}

/** The set of bare addresses `ask` refused: refused by the forward chain from then on, without asking. */
export function askRefusedSet(slot: string): string {
  return `askno_${slot}`;
}

/** The named counter of every packet the forward chain refuses (logged or past the log's rate limit). */
export function refusedCounter(slot: string): string {
  return `refused_${slot}`;
}

/** Destinations never sent to `ask`: the host's own, other hutch links, loopback, link-local, multicast. */
const NEVER_ASKED = '{ 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3 }';

/**
 * The body of a sandbox's forward chain (`fwd_<slot>`), replaced as a whole by
 * `setNetworkPolicy`. With names: deny CIDRs, then DNS/DoT to anyone but hutch's resolver,
 * then `allow` CIDRs and the admitted set; what is refused is refused at once (TCP reset,
 * else ICMP admin-prohibited) and logged, at a bounded rate, to the NFLOG group with the
 * reason as prefix. A new TCP connection to an admitted address on 80/443 has the conntrack
 * mark "pending for the name check's queue" by now (set by the sandbox's nat chain,
 * `proxyScript`; nfqueue.ts): its packets go through the queue until the SNI/Host is decided.
 * First of all, a packet of a pending connection that did not come through the queue (whose
 * table's chain runs just before this one) is reset: the queue's process died, and nothing
 * goes on unchecked.
 */
export function fwdRules(slot: string, outbound: 'none' | 'nat', allow: readonly Cidr[] | null, names: SandboxRules['names']): string[] {
  const t = TABLE;
  const fwd = `fwd_${slot}`;
  const lines = [`add rule ${t} ${fwd} ct state established,related accept`, `add rule ${t} ${fwd} oifname "hx*" drop`];
  if (!names) {
    if (outbound === 'nat') {
      if (allow === null) lines.push(`add rule ${t} ${fwd} meta nfproto ipv4 accept`);
      else if (allow.length > 0) lines.push(`add rule ${t} ${fwd} ip daddr ${cidrList(allow)} accept`);
    }
    lines.push(`add rule ${t} ${fwd} drop`);
    return lines;
  }
  const l = names.lists;
  const hex = (n: number) => `0x${n.toString(16)}`;
  lines.unshift(
    `add rule ${t} ${fwd} ct mark and ${hex(PENDING_MASK)} == ${hex(PENDING_BASE)} meta mark != ${hex(PASS)} meta l4proto tcp reject with tcp reset`,
    `add rule ${t} ${fwd} meta mark and ${hex(PENDING_MASK)} == ${hex(MARK_BASE)} meta mark set 0`,
  );
  // Every refused packet is counted (one named counter per sandbox, read at exec end: what the
  // log's rate limit left out is counted as dropped, violations.ts), then refused at once.
  const counted = `counter name "${refusedCounter(slot)}"`;
  const refuse = (match: string, reason: string) => {
    if (names.logGroup !== null) lines.push(`add rule ${t} ${fwd} ${match} limit rate 50/second burst 100 packets log group ${names.logGroup} prefix "${reason}"`.replace(/  +/g, ' '));
    lines.push(`add rule ${t} ${fwd} ${match} meta l4proto tcp ${counted} reject with tcp reset`.replace(/  +/g, ' '));
    lines.push(`add rule ${t} ${fwd} ${match} ${counted} reject with icmpx admin-prohibited`.replace(/  +/g, ' '));
  };
  if (l.denyCidrs.length > 0) refuse(`ip daddr ${cidrList(l.denyCidrs)}`, 'denied');
  refuse('meta l4proto { tcp, udp } th dport { 53, 853 }', 'other resolver');
  // Never past the name check: a new connection to an admitted address on 80/443 that the
  // sandbox's nat chain did not mark pending (its egress has not started) is refused.
  refuse(`ip daddr @${admittedSet(slot)} tcp dport { 80, 443 } ct mark and ${hex(PENDING_MASK)} != ${hex(PENDING_BASE)}`, 'not allowed');
  if (l.allow === null) lines.push(`add rule ${t} ${fwd} meta nfproto ipv4 accept`);
  else if (l.allow.length > 0) lines.push(`add rule ${t} ${fwd} ip daddr ${cidrList(l.allow)} accept`);
  lines.push(`add rule ${t} ${fwd} ip daddr @${admittedSet(slot)} accept`);
  lines.push(`add rule ${t} ${fwd} ip daddr @${askedSet(slot)} accept`);
  // An address `ask` refused: refused here at once (the log's prefix makes it the answer's reason, egress.ts).
  refuse(`ip daddr @${askRefusedSet(slot)}`, 'asked');
  refuse('', 'not allowed');
  return lines;
}

/**
 * The body of a sandbox's ask chain (`ask_<slot>`, jumped to at the end of its nat prerouting
 * chain): with `ask`, a new TCP connection to an address that nothing admits (no `allow` CIDR,
 * no allowed name's address, no earlier `true`) goes to the host-side proxy (`askPort`), which
 * asks about the bare address and holds the connection until the answer (sni-proxy.ts). What
 * the forward chain decides by itself returns: deny CIDRs, resolvers (53, 853), the host's own
 * and other links' addresses, addresses never reachable by name. Empty without `ask`.
 */
export function askRules(slot: string, hostAddress: string, askPort: number | null, lists: EgressLists): string[] {
  if (askPort === null) return [];
  const t = TABLE;
  const ask = `add rule ${t} ask_${slot}`;
  const lines: string[] = [];
  if (lists.denyCidrs.length > 0) lines.push(`${ask} ip daddr ${cidrList(lists.denyCidrs)} return`);
  if (lists.allow === null) return lines;
  if (lists.allow.length > 0) lines.push(`${ask} ip daddr ${cidrList(lists.allow)} return`);
  lines.push(
    `${ask} ip daddr @${admittedSet(slot)} return`,
    `${ask} ip daddr @${askedSet(slot)} return`,
    `${ask} ip daddr @${askRefusedSet(slot)} return`,
    `${ask} ip daddr ${NEVER_ASKED} return`,
    `${ask} tcp dport { 53, 853 } return`,
    `${ask} fib daddr type != unicast return`,
    `${ask} fib daddr oifname "hx*" return`,
    // Bounded, so a connect flood to fresh addresses costs the host's event loop little: past
    // the rate, the forward chain refuses at once (and counts) without asking.
    `${ask} meta nfproto ipv4 meta l4proto tcp limit rate 100/second burst 200 packets dnat ip to ${hostAddress}:${askPort}`,
  );
  return lines;
}

/** One transaction replacing a sandbox's forward and ask chains (`setNetworkPolicy`) and refilling its set. */
export function policyScript(slot: string, names: NonNullable<SandboxRules['names']>, admitted: readonly string[], ask: { hostAddress: string; port: number | null } | null = null): string {
  const t = TABLE;
  return [
    `flush chain ${t} fwd_${slot}`,
    ...fwdRules(slot, 'nat', names.lists.allow, names),
    ...(ask ? [`flush chain ${t} ask_${slot}`, ...askRules(slot, ask.hostAddress, ask.port, names.lists)] : []),
    `flush set ${t} ${admittedSet(slot)}`,
    ...(admitted.length > 0 ? [`add element ${t} ${admittedSet(slot)} { ${admitted.join(', ')} }`] : []),
  ].join('\n') + '\n';
}

/**
 * The sandbox's DNS to its host address, to hutch's resolver (dns-server.ts, ephemeral ports);
 * new TCP connections to admitted addresses on 80/443 marked pending for the name check's
 * queue (nfqueue.ts: from their SYN on, their packets go through it until the name is
 * decided); with `ask`, new TCP connections to bare addresses to the ask listener
 * (sni-proxy.ts). The input rules admit only redirected connections to those ports. A nat
 * chain of its own: it sees only a connection's first packet. With `names`, the forward chain
 * is rewritten in the same transaction.
 */
export function proxyScript(slot: string, host: string, hostAddress: string, dns: { udp: number; tcp: number }, ask: { port: number; lists: EgressLists } | null = null, names: NonNullable<SandboxRules['names']> | null = null): string {
  const t = TABLE;
  const pre = `add rule ${t} pre_${slot} iifname "${host}"`;
  const ports = [dns.tcp, ...(ask ? [ask.port] : [])];
  return [
    ...(names ? [`flush chain ${t} fwd_${slot}`, ...fwdRules(slot, 'nat', names.lists.allow, names)] : []),
    `add chain ${t} pre_${slot}`,
    `${pre} ip daddr ${hostAddress} udp dport 53 dnat ip to ${hostAddress}:${dns.udp}`,
    `${pre} ip daddr ${hostAddress} tcp dport 53 dnat ip to ${hostAddress}:${dns.tcp}`,
    ...(names && names.queue !== undefined && names.queue !== null ? [`${pre} ip daddr @${admittedSet(slot)} tcp dport { 80, 443 } ct mark set 0x${pendingMark(names.queue).toString(16)}`] : []),
    ...(ask ? [...askRules(slot, hostAddress, ask.port, ask.lists), `${pre} ct state new jump ask_${slot}`] : []),
    `add element ${t} links_pre { "${host}" : jump pre_${slot} }`,
    `add rule ${t} in_${slot} meta nfproto ipv4 tcp dport { ${ports.join(', ')} } ct status dnat fib daddr . iif type local accept`,
    // A query flood is refused past 1000/s (ICMP, at once): the resolver's cost stays bounded.
    `add rule ${t} in_${slot} meta nfproto ipv4 udp dport ${dns.udp} ct status dnat fib daddr . iif type local limit rate 1000/second burst 1000 packets accept`,
  ].join('\n') + '\n';
}

export async function addProxyRules(slot: string, host: string, hostAddress: string, dns: { udp: number; tcp: number }, ask: { port: number; lists: EgressLists } | null = null, names: NonNullable<SandboxRules['names']> | null = null): Promise<void> {
  await run('nft', ['-f', '-'], proxyScript(slot, host, hostAddress, dns, ask, names), `redirecting DNS of ${host} to hutch's resolver and its HTTP/TLS to the name check`);
}

/** Adds addresses to the sandbox's set (idempotent). */
export async function admitAddresses(slot: string, addresses: readonly string[]): Promise<void> {
  await addToSet(admittedSet(slot), addresses, `admitting addresses for sandbox slot ${slot}`);
}

/**
 * Adds IPv4 addresses to a set of hutch's table: one netlink batch from the addon (~0.1 ms,
 * on the path of a first connection to a fresh name), else an `nft` process, whose failure
 * says what went wrong.
 */
export async function addToSet(set: string, addresses: readonly string[], what: string): Promise<void> {
  if (addresses.length === 0) return;
  for (let i = 0; i < addresses.length; i += 256) {
    const part = addresses.slice(i, i + 256);
    if (native().nftAddElements('hutch', set, [...part]) === true) continue;
    await run('nft', ['-f', '-'], `add element ${TABLE} ${set} { ${part.join(', ')} }\n`, what);
  }
}

export async function applyPolicy(slot: string, names: NonNullable<SandboxRules['names']>, admitted: readonly string[], ask: { hostAddress: string; port: number | null } | null = null): Promise<void> {
  await run('nft', ['-f', '-'], policyScript(slot, names, admitted, ask), `replacing the network policy of sandbox slot ${slot}`);
}

function cidrList(allow: readonly Cidr[]): string {
  return `{ ${allow.map(formatCidr).join(', ')} }`;
}

/** One transaction adding a sandbox; `create element` on ports fails it if another sandbox holds the port. */
export function addScript(r: SandboxRules): string {
  const t = TABLE;
  const fwd = `fwd_${r.slot}`;
  const inp = `in_${r.slot}`;
  const lines = r.names
    ? [`add set ${t} ${admittedSet(r.slot)} { type ipv4_addr; }`, `add set ${t} ${askedSet(r.slot)} { type ipv4_addr; }`, `add set ${t} ${askRefusedSet(r.slot)} { type ipv4_addr; }`, `add counter ${t} ${refusedCounter(r.slot)}`, `add chain ${t} ask_${r.slot}`]
    : [];
  lines.push(`add chain ${t} ${fwd}`, ...fwdRules(r.slot, r.outbound, r.allow, r.names), `add chain ${t} ${inp}`);
  // No verdict at its end: the input chain goes on to refuse what this one did not admit.
  for (const proto of ['tcp', 'udp'] as const) {
    const ports = r.hostPorts.filter((p) => p.protocol === proto).map((p) => p.port);
    if (ports.length > 0) lines.push(`add rule ${t} ${inp} meta nfproto ipv4 ${proto} dport { ${ports.join(', ')} } fib daddr . iif type local accept`);
  }
  if (r.guard.length > 0) lines.push(`add element ${t} fwd_guard { ${r.guard.map((d) => `"${d}"`).join(', ')} }`);
  lines.push(
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
export function removeLines(slot: string, host: string, ports: readonly ResolvedPort[], nat: boolean | null, names: boolean | null = false): string[] {
  const t = TABLE;
  return [
    `delete element ${t} links_fwd { "${host}" }`,
    `delete element ${t} links_in { "${host}" }`,
    ...(nat !== false ? [`delete element ${t} nat_links { "${host}" }`] : []),
    ...(nat === null || ports.length > 0 ? [`delete element ${t} localnet_links { "${host}" }`] : []),
    ...ports.map((p) => `delete element ${t} ports { ${p.protocol} . ${p.host} }`),
    `delete chain ${t} fwd_${slot}`,
    `delete chain ${t} in_${slot}`,
    ...(names !== false && nat !== false
      ? [`delete element ${t} links_pre { "${host}" }`, `delete chain ${t} pre_${slot}`, `delete chain ${t} ask_${slot}`, `delete set ${t} ${admittedSet(slot)}`, `delete set ${t} ${askedSet(slot)}`, `delete set ${t} ${askRefusedSet(slot)}`, `delete counter ${t} ${refusedCounter(slot)}`]
      : []),
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
 * every call (a prune in another process may have removed an idle table), made when absent
 * or brought to this skeleton in place when older (one nft process, normally once per host).
 */
export async function ensureTable(): Promise<void> {
  if (tableReady()) return;
  creating ??= createTable().finally(() => (creating = null));
  await creating;
}

async function createTable(): Promise<void> {
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
  added: { nat: boolean; ports: readonly ResolvedPort[]; names?: boolean } | null,
): Promise<void> {
  const ports = added?.ports ?? (await portsPointingTo(address));
  const lines = removeLines(slot, host, ports, added ? added.nat : null, added ? (added.names ?? null) : null);
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

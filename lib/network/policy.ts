/**
 * Egress by name (API.md `NetworkOptions.domains`, `deny`, `ask`, `dns`): the options
 * validated into a policy, and the one function that decides a name by it. The resolver
 * (dns-server.ts) asks `decideName` for every query; nftables (nat.ts) holds the CIDRs.
 *
 * Order: `deny` first (names and CIDRs, `'*'` included in what it beats), then `domains`,
 * then `ask`, else refused. `*.x` matches the names below `x`, never `x` itself; `'*'`
 * matches every name.
 */
import { isIPv4 } from 'node:net';
import { HutchError, invalid } from '../errors.js';
import { type Cidr, formatCidr, parseCidr } from './cidr.js';

/** What {@link NetworkOptions.ask} is asked about: a name (or bare address) no rule decides. */
export interface EgressRequest {
  /** The name asked for (a DNS query, a TLS SNI or an HTTP Host); null for a bare address. */
  host: string | null;
  /** The address connected to; null for a DNS query. */
  address: string | null;
  /** The port connected to; null for a DNS query. */
  port: number | null;
  /** 'dns': asked while resolving; 'tcp': seen on a connection (SNI/Host). */
  protocol: 'tcp' | 'udp' | 'dns';
}

/** An `ask` answer that refuses, with the reason the violation carries. */
export interface EgressRefusal {
  /** Always false. */
  allow: false;
  /** The violation's reason. */
  reason: string;
}

/**
 * {@link NetworkOptions.ask}: decides a name no rule decides; only `true` allows.
 *
 * @example
 * ```ts
 * ask: async ({ host }) => (await approved(host)) || { allow: false, reason: 'not approved' }
 * ```
 */
export type AskFunction = (request: EgressRequest) => boolean | EgressRefusal | Promise<boolean | EgressRefusal>;

/** A name pattern: `exact` ('pypi.org'), `below` ('*.github.com' -> 'github.com'), or `any` ('*'). */
export type NamePattern = { kind: 'exact'; name: string } | { kind: 'below'; name: string } | { kind: 'any' };

/** The lists `setNetworkPolicy` replaces. */
export interface EgressLists {
  /** Names allowed; null: no name filtering by `domains` (only `deny` applies to names). */
  readonly domains: readonly NamePattern[] | null;
  readonly denyNames: readonly NamePattern[];
  readonly denyCidrs: readonly Cidr[];
  /** CIDRs reachable besides the names; null: any address (only without `domains`/`ask`). */
  readonly allow: readonly Cidr[] | null;
}

export interface EgressPolicy extends EgressLists {
  readonly ask: AskFunction | null;
  /** Upstream resolvers (IPv4, port 53); null: the host's (/etc/resolv.conf). */
  readonly servers: readonly string[] | null;
  /** Fixed answers, lowercase name -> IPv4 addresses; answered before any upstream. */
  readonly hosts: ReadonlyMap<string, readonly string[]>;
}

const LABEL = /^(?!-)[a-z0-9_-]{1,63}(?<!-)$/;

/** A name as the resolver compares it: lowercase, no trailing dot. */
export function normalName(name: string): string {
  const n = name.toLowerCase();
  return n.endsWith('.') ? n.slice(0, -1) : n;
}

function validName(name: string): boolean {
  if (name.length === 0 || name.length > 253) return false;
  return name.split('.').every((l) => LABEL.test(l));
}

/** Parses one pattern of `domains` or `deny`; null when malformed. */
export function parsePattern(value: string): NamePattern | null {
  const v = normalName(value.trim());
  if (v === '*') return { kind: 'any' };
  if (v.startsWith('*.')) {
    const rest = v.slice(2);
    return validName(rest) ? { kind: 'below', name: rest } : null;
  }
  return validName(v) ? { kind: 'exact', name: v } : null;
}

export function matches(p: NamePattern, name: string): boolean {
  if (p.kind === 'any') return true;
  if (p.kind === 'exact') return name === p.name;
  return name.length > p.name.length + 1 && name.endsWith(`.${p.name}`);
}

export type NameDecision = 'allow' | 'deny' | 'ask' | 'refuse';

/** How the lists decide `name` (normalised): deny, then domains, then ask, else refused. */
export function decideName(p: EgressLists & { ask: AskFunction | null }, name: string): NameDecision {
  const n = normalName(name);
  if (p.denyNames.some((d) => matches(d, n))) return 'deny';
  if (p.domains === null || p.domains.some((d) => matches(d, n))) return 'allow';
  return p.ask ? 'ask' : 'refuse';
}

function patternList(field: string, value: unknown, cidrs: boolean): { names: NamePattern[]; cidrs: Cidr[] } {
  if (!Array.isArray(value)) throw invalid(field, cidrs ? 'an array of names and CIDRs' : 'an array of names', value);
  const names: NamePattern[] = [];
  const out: Cidr[] = [];
  value.forEach((v: unknown, i) => {
    const f = `${field}[${i}]`;
    if (typeof v !== 'string') throw invalid(f, cidrs ? `a name ('example.com', '*.example.com') or an IPv4 CIDR` : `a name ('example.com', '*.example.com' or '*')`, v);
    if (cidrs && /^[0-9.]+(\/\d+)?$/.test(v)) {
      const r = parseCidr(v);
      if (!r.ok) throw invalid(f, r.reason === 'host-bits' ? `a CIDR with no host bits set (did you mean '${r.suggestion}'?)` : 'an IPv4 CIDR such as 10.1.0.0/16', v);
      out.push(r.cidr);
      return;
    }
    if (cidrs && v.includes(':')) throw invalid(f, 'an IPv4 CIDR or a name (sandbox links are IPv4 only)', v);
    const p = parsePattern(v);
    if (p === null) throw invalid(f, `a name ('example.com', '*.example.com'${cidrs ? '' : " or '*'"}): labels of letters, digits, '-' and '_', up to 63 characters, 253 in all`, v);
    names.push(p);
  });
  return { names, cidrs: out };
}

/**
 * Validates `domains`, `deny`, `ask` and `dns` of a bridge network. Null when none is given
 * (no resolver, no name filtering). `allow` comes already parsed (options.ts).
 *
 * @throws HutchError EINVAL naming the option: a malformed name or CIDR, any of them without
 *   outbound 'nat', `ask` not a function, `dns.servers` not IPv4 addresses.
 */
export function resolveEgressPolicy(
  field: string,
  o: Record<string, unknown>,
  outbound: 'none' | 'nat',
  allow: readonly Cidr[] | null,
): EgressPolicy | null {
  if (o.domains === undefined && o.deny === undefined && o.ask === undefined && o.dns === undefined) return null;
  for (const key of ['domains', 'deny', 'ask', 'dns'] as const) {
    if (o[key] !== undefined && outbound !== 'nat') {
      throw invalid(`${field}.${key}`, `outbound: 'nat' (without it nothing beyond the host side of the link is reachable, by name or not)`);
    }
  }
  const domains = o.domains === undefined ? null : patternList(`${field}.domains`, o.domains, false).names;
  const deny = o.deny === undefined ? { names: [], cidrs: [] } : patternList(`${field}.deny`, o.deny, true);
  if (o.ask !== undefined && typeof o.ask !== 'function') throw invalid(`${field}.ask`, 'a function (request) => boolean | { allow: false, reason } (or a Promise of one)', o.ask);
  const ask = (o.ask as AskFunction | undefined) ?? null;
  let servers: string[] | null = null;
  const hosts = new Map<string, string[]>();
  if (o.dns !== undefined) {
    if (typeof o.dns !== 'object' || o.dns === null || Array.isArray(o.dns)) throw invalid(`${field}.dns`, '{ servers?: string[], hosts?: Record<string, string | string[]> }', o.dns);
    const d = o.dns as Record<string, unknown>;
    for (const key of Object.keys(d)) {
      if (key !== 'servers' && key !== 'hosts') throw invalid(`${field}.dns.${key}`, 'one of servers, hosts');
    }
    if (d.servers !== undefined) {
      if (!Array.isArray(d.servers) || d.servers.length === 0) throw invalid(`${field}.dns.servers`, 'a non-empty array of IPv4 addresses', d.servers);
      servers = d.servers.map((s: unknown, i) => {
        if (typeof s !== 'string' || !isIPv4(s)) throw invalid(`${field}.dns.servers[${i}]`, 'an IPv4 address such as 192.0.2.53', s);
        return s;
      });
    }
    if (d.hosts !== undefined) {
      if (typeof d.hosts !== 'object' || d.hosts === null || Array.isArray(d.hosts)) throw invalid(`${field}.dns.hosts`, 'an object { name: address | address[] }', d.hosts);
      for (const [name, v] of Object.entries(d.hosts as Record<string, unknown>)) {
        const f = `${field}.dns.hosts['${name}']`;
        const p = parsePattern(name);
        if (p === null || p.kind !== 'exact') throw invalid(f, 'a name such as example.com as the key', name);
        const list = Array.isArray(v) ? v : [v];
        if (list.length === 0 || !list.every((a) => typeof a === 'string' && isIPv4(a))) throw invalid(f, 'an IPv4 address or an array of them', v);
        hosts.set(p.name, list as string[]);
      }
    }
  }
  // With names to allow (or to ask about), an address is reachable only through them or `allow`.
  const filtered = domains !== null || ask !== null;
  return { domains: domains ?? (ask !== null ? [] : null), denyNames: deny.names, denyCidrs: deny.cidrs, allow: filtered ? (allow ?? []) : allow, ask, servers, hosts };
}

/** Validates the argument of `setNetworkPolicy` against the sandbox's current policy. */
export function resolveLists(field: string, value: unknown, current: EgressPolicy, parseAllow: (f: string, v: unknown) => Cidr[]): EgressLists {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid(field, '{ allow?, domains?, deny? }', value);
  const o = value as Record<string, unknown>;
  for (const key of Object.keys(o)) if (!['allow', 'domains', 'deny'].includes(key)) throw invalid(`${field}.${key}`, 'one of allow, domains, deny');
  const allow = o.allow === undefined ? null : parseAllow(`${field}.allow`, o.allow);
  const domains = o.domains === undefined ? null : patternList(`${field}.domains`, o.domains, false).names;
  const deny = o.deny === undefined ? { names: [], cidrs: [] } : patternList(`${field}.deny`, o.deny, true);
  const filtered = domains !== null || current.ask !== null;
  return { domains: domains ?? (current.ask !== null ? [] : null), denyNames: deny.names, denyCidrs: deny.cidrs, allow: filtered ? (allow ?? []) : allow };
}

export function describeCidrs(c: readonly Cidr[]): string[] {
  return c.map(formatCidr);
}

/**
 * Egress by name reads a connection's first segments inline while the kernel forwards them
 * (nfqueue.ts): a sandbox that may write raw packets could send a segment the check reads and
 * the server drops (a bad checksum, a short TTL), then the real request past the check.
 *
 * @throws HutchError EINVAL when `capabilities` holds NET_RAW for a sandbox with egress by name.
 */
export function checkEgressCapabilities(network: { readonly mode: string; readonly names?: unknown }, capabilities: readonly string[]): void {
  if (network.mode !== 'bridge' || network.names === null || network.names === undefined) return;
  if (capabilities.includes('NET_RAW')) {
    throw new HutchError(
      'EINVAL',
      'invalid option capabilities: NET_RAW with network domains/ask: raw packets could slip a request past the name check of HTTP and TLS connections; drop NET_RAW, or filter by address (allow) instead of by name',
    );
  }
}

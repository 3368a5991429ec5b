/**
 * `network` (API.md `NetworkOptions`) validated and resolved once, before anything is
 * created: rates to bits/s, CIDRs to numbers, ports with their protocol, the address range
 * checked against the host's routes and each host port checked to be free.
 */
import { readFileSync } from 'node:fs';
import { HutchError, describe, invalid, unsupported } from '../errors.js';
import { parseRate, type Rate } from '../units.js';
import { suggest } from '../validators.js';
import { type Cidr, formatCidr, overlaps, parseCidr } from './cidr.js';
import { readLease, leaseFiles, type ResolvedPort } from './lease.js';
import { type AskFunction, type EgressPolicy, resolveEgressPolicy } from './policy.js';
import { type NetworkBackend, checkUserspacePlan, networkBackend } from './userspace-options.js';

export type { Rate } from '../units.js';

/**
 * A host port forwarded to a port of the sandbox ({@link NetworkOptions.ports}).
 *
 * @example
 * ```ts
 * const ports: PortMapping[] = [{ host: 8080, sandbox: 80 }, { host: 5353, sandbox: 53, protocol: 'udp' }];
 * ```
 */
export interface PortMapping {
  /**
   * Port on the host, 1 to 65535. It must be free: one already listening on the host or
   * published by another sandbox rejects with `EINVAL`.
   */
  host: number;
  /** Port inside the sandbox, 1 to 65535, where its server listens (on its address or 0.0.0.0). */
  sandbox: number;
  /** Default 'tcp'. */
  protocol?: 'tcp' | 'udp';
}

/**
 * A network link for the sandbox ({@link SandboxOptions.network}); without one (`'none'`,
 * the default) it has a private loopback only. `'bridge'` is a veth pair as host root, and a
 * userspace link through pasta outside host root, with the same options (docs/network.md,
 * "Outside root"); what the host cannot do is `EUNSUPPORTED`. Wrong values reject with `EINVAL`.
 * docs/networking.md says how it is built.
 *
 * @example
 * ```ts
 * const sb = await Sandbox.create({
 *   network: {
 *     mode: 'bridge',
 *     outbound: 'nat',
 *     allow: ['93.184.216.0/24'],
 *     egress: '10mbit',
 *     ports: [{ host: 8080, sandbox: 80 }],
 *   },
 * });
 * console.log(sb.network); // e.g. { address: '10.200.0.2', hostAddress: '10.200.0.1', interface: 'eth0' }
 * ```
 */
export interface NetworkOptions {
  /**
   * `'bridge'`: a veth to the host with a private address (a /30 from `range`);
   * `'none'`: the same as no link (the other fields must then be absent).
   */
  mode: 'none' | 'bridge';
  /** Bandwidth out of the sandbox (tc), bits/s or a string like '10mbit'; from 8 kbit/s to 100 Gbit/s. Default: not shaped. */
  egress?: Rate;
  /** Bandwidth into the sandbox (tc), like `egress`. Default: not shaped. */
  ingress?: Rate;
  /**
   * Default 'none': nothing beyond the link (and of the host only `hostPorts`). `'nat'`:
   * addresses beyond the host too, masqueraded (the host's own addresses stay closed).
   */
  outbound?: 'none' | 'nat';
  /** IPv4 CIDRs reachable when outbound is 'nat' (only then; else `EINVAL`); absent: any address outside hutch's links. */
  allow?: string[];
  /** Host ports forwarded to sandbox ports (also reachable at 127.0.0.1:host). */
  ports?: PortMapping[];
  /**
   * Addition to API.md: ports of the host the sandbox may connect to, at the host side of its
   * link (`hostAddress`, `host.hutch.internal` inside). A number is a TCP port. Default none:
   * every connection from the sandbox to the host is refused at once (TCP reset, ICMP port
   * unreachable), whatever listens on `0.0.0.0` or `::`; replies to connections the host opened
   * and the host's connections to published `ports` are not affected.
   *
   * @example
   * ```ts
   * network: { mode: 'bridge', hostPorts: [5432, { port: 53, protocol: 'udp' }] }
   * ```
   */
  hostPorts?: (number | HostPort)[];
  /** Addition to API.md: the IPv4 range the sandbox's /30 comes from. Default $HUTCH_NET_RANGE, else 10.200.0.0/16. */
  range?: string;
  /**
   * Names reachable when outbound is 'nat', besides `allow`: 'pypi.org', '*.github.com' (the
   * names below github.com, not github.com itself), '*' (any name; `deny` still applies).
   * Given, the sandbox's resolver is hutch's and an address is reachable only when an allowed
   * name resolved to it or an `allow` CIDR holds it (docs/network.md).
   */
  domains?: string[];
  /** Names ('evil.com', '*.evil.com') and IPv4 CIDRs always refused; checked before everything else. */
  deny?: string[];
  /**
   * Asked about a name no rule decides, once per name per sandbox; only `true` allows. A
   * throw, no answer within 5 s, or no `ask`: refused. The sandbox's query waits for it.
   */
  ask?: AskFunction;
  /** Upstream resolvers (IPv4) for the names hutch resolves for the sandbox (default: the host's); hosts: fixed answers, first. */
  dns?: {
    /** Upstream resolvers, IPv4 addresses (port 53). Default: the host's, from /etc/resolv.conf. */
    servers?: string[];
    /** Fixed answers, `{ 'db.example': '10.0.0.5' }`, answered before any upstream. */
    hosts?: Record<string, string | string[]>;
  };
}

/** A host port the sandbox may reach ({@link NetworkOptions.hostPorts}). */
export interface HostPort {
  /** 1 to 65535. */
  port: number;
  /** Default 'tcp'. */
  protocol?: 'tcp' | 'udp';
}

export interface ResolvedHostPort {
  readonly port: number;
  readonly protocol: 'tcp' | 'udp';
}

/** A published port, resolved; defined beside the lease that records it. */
export type { ResolvedPort };

export interface BridgePlan {
  readonly mode: 'bridge';
  /** Sandbox -> host, bits/s; null: not shaped. */
  readonly egressBps: number | null;
  /** Host -> sandbox, bits/s; null: not shaped. */
  readonly ingressBps: number | null;
  readonly outbound: 'none' | 'nat';
  /** Destinations reachable with outbound 'nat'; null: any (other sandboxes and the host's own addresses excepted). */
  readonly allow: readonly Cidr[] | null;
  readonly ports: readonly ResolvedPort[];
  /** Host ports the sandbox may connect to on its link's host address; empty: none. */
  readonly hostPorts: readonly ResolvedHostPort[];
  /** Where the sandbox's /30 comes from. */
  readonly range: Cidr;
  /** Lease files; shared by every hutch process on the host. */
  readonly stateDir: string;
  /** Egress by name (`domains`, `deny`, `ask`, `dns`); null: none given, no resolver of hutch's. */
  readonly names: EgressPolicy | null;
  /** `veth` (host root: a veth pair, host nftables) or `userspace` (pasta; lib/network/userspace.ts). */
  readonly backend: NetworkBackend;
}

export type NetworkPlan = { readonly mode: 'none' } | BridgePlan;

export const DEFAULT_RANGE = '10.200.0.0/16';
export const DEFAULT_STATE_DIR = '/run/hutch/net';
/** tbf below this cannot keep a full-size packet in its bucket at a sane latency. */
export const MIN_RATE_BPS = 8_000;
/** Far above what a veth carries; above it tc's 64-bit rate still works but nothing was measured. */
export const MAX_RATE_BPS = 100_000_000_000;

const KEYS = ['mode', 'egress', 'ingress', 'outbound', 'allow', 'ports', 'hostPorts', 'range', 'domains', 'deny', 'ask', 'dns'] as const;
const PORT_KEYS = ['host', 'sandbox', 'protocol'] as const;
const HOST_PORT_KEYS = ['port', 'protocol'] as const;

/** The lease directory: $HUTCH_NET_DIR, else /run/hutch/net (tmpfs: leases die with the links at reboot). */
export function networkStateDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.HUTCH_NET_DIR && env.HUTCH_NET_DIR.length > 0 ? env.HUTCH_NET_DIR : DEFAULT_STATE_DIR;
}

/**
 * Validates `network` and resolves it to a plan. Nothing is created.
 *
 * @throws HutchError EINVAL naming the field (`network.egress`, `network.ports[1].host`, ...);
 *   EUNSUPPORTED when bridge mode needs what the caller lacks (CAP_NET_ADMIN).
 */
export function resolveNetwork(
  option: 'none' | NetworkOptions | undefined,
  field = 'network',
  env: NodeJS.ProcessEnv = process.env,
): NetworkPlan {
  if (option === undefined || option === 'none') return { mode: 'none' };
  if (typeof option !== 'object' || option === null || Array.isArray(option)) {
    throw invalid(field, `'none' or an object { mode: 'none' | 'bridge', ... }`, option);
  }
  for (const key of Object.keys(option)) {
    if (!(KEYS as readonly string[]).includes(key)) {
      const guess = suggest(key, KEYS);
      throw invalid(`${field}.${key}`, `one of ${KEYS.join(', ')}${guess ? ` (did you mean '${guess}'?)` : ''}`);
    }
  }
  const o = option as unknown as Record<string, unknown>;
  if (o.mode !== 'none' && o.mode !== 'bridge') throw invalid(`${field}.mode`, `'none' or 'bridge'`, o.mode);
  if (o.mode === 'none') {
    for (const key of KEYS) {
      if (key !== 'mode' && o[key] !== undefined) throw invalid(`${field}.${key}`, `mode 'bridge' (mode 'none' has no link)`);
    }
    return { mode: 'none' };
  }

  const egressBps = o.egress === undefined ? null : rate(`${field}.egress`, o.egress);
  const ingressBps = o.ingress === undefined ? null : rate(`${field}.ingress`, o.ingress);

  const outbound = o.outbound ?? 'none';
  if (outbound !== 'none' && outbound !== 'nat') throw invalid(`${field}.outbound`, `'none' or 'nat'`, outbound);

  let allow: Cidr[] | null = null;
  if (o.allow !== undefined) {
    if (outbound !== 'nat') throw invalid(`${field}.allow`, `outbound: 'nat' (without it only the host side of the link is reachable)`);
    if (!Array.isArray(o.allow)) throw invalid(`${field}.allow`, 'an array of IPv4 CIDRs', o.allow);
    allow = o.allow.map((v, i) => cidr(`${field}.allow[${i}]`, v));
  }
  const names = resolveEgressPolicy(field, o, outbound, allow);

  const rangeField = o.range !== undefined ? `${field}.range` : env.HUTCH_NET_RANGE ? 'HUTCH_NET_RANGE' : `${field}.range`;
  const rangeValue = o.range ?? (env.HUTCH_NET_RANGE || DEFAULT_RANGE);
  const range = cidr(rangeField, rangeValue);
  if (range.prefix > 30) throw invalid(rangeField, 'a range of /30 or wider (each sandbox takes a /30)', rangeValue);
  const clash = hostRouteOverlapping(range);
  if (clash) {
    throw invalid(rangeField, `a range that no host route covers; ${formatCidr(range)} overlaps the route to ${clash}`, rangeValue);
  }

  const stateDir = networkStateDir(env);
  const ports = o.ports === undefined ? [] : resolvePorts(`${field}.ports`, o.ports, stateDir);
  const hostPorts = o.hostPorts === undefined ? [] : resolveHostPorts(`${field}.hostPorts`, o.hostPorts);

  const backend = networkBackend(env);
  const plan = { mode: 'bridge', egressBps, ingressBps, outbound, allow, ports, hostPorts, range, stateDir, names } as const;
  if (backend === 'userspace') {
    checkUserspacePlan(field, plan, env);
  } else if (!hasNetAdmin()) {
    throw unsupported(`${field}.mode 'bridge'`, 'it needs CAP_NET_ADMIN in the host network namespace (run as root) to make links, tc and nftables rules; outside host root, unset HUTCH_NETWORK_BACKEND to use the userspace link (pasta)');
  }
  return { ...plan, backend };
}

function rate(field: string, value: unknown): number {
  const bps = parseRate(field, value);
  if (bps < MIN_RATE_BPS || bps > MAX_RATE_BPS) {
    throw invalid(field, `a rate from 8kbit to 100gbit (tc shaping)`, value);
  }
  return bps;
}

export function cidr(field: string, value: unknown): Cidr {
  if (typeof value !== 'string') throw invalid(field, `an IPv4 CIDR such as '10.1.0.0/16' or an address`, value);
  const r = parseCidr(value);
  if (r.ok) return r.cidr;
  if (r.reason === 'ipv6') {
    throw new HutchError('EINVAL', `invalid option ${field}: expected an IPv4 CIDR, got ${describe(value)}: sandbox links are IPv4 only`);
  }
  if (r.reason === 'host-bits') {
    throw invalid(field, `a network address with no host bits set (did you mean '${r.suggestion}'?)`, value);
  }
  throw invalid(field, `an IPv4 CIDR such as '10.1.0.0/16' or an address`, value);
}

function resolvePorts(field: string, value: unknown, stateDir: string): ResolvedPort[] {
  if (!Array.isArray(value)) throw invalid(field, 'an array of { host, sandbox, protocol? }', value);
  const out: ResolvedPort[] = [];
  const seen = new Map<string, number>();
  const busy = hostPortsInUse();
  const leased = leasedPorts(stateDir);
  value.forEach((p: unknown, i) => {
    const f = `${field}[${i}]`;
    if (typeof p !== 'object' || p === null || Array.isArray(p)) throw invalid(f, '{ host, sandbox, protocol? }', p);
    for (const key of Object.keys(p)) {
      if (!(PORT_KEYS as readonly string[]).includes(key)) {
        const guess = suggest(key, PORT_KEYS);
        throw invalid(`${f}.${key}`, `one of ${PORT_KEYS.join(', ')}${guess ? ` (did you mean '${guess}'?)` : ''}`);
      }
    }
    const r = p as Record<string, unknown>;
    const host = port(`${f}.host`, r.host);
    const sandbox = port(`${f}.sandbox`, r.sandbox);
    const protocol = r.protocol ?? 'tcp';
    if (protocol !== 'tcp' && protocol !== 'udp') throw invalid(`${f}.protocol`, `'tcp' or 'udp'`, protocol);
    const key = `${protocol}/${host}`;
    const earlier = seen.get(key);
    if (earlier !== undefined) throw invalid(`${f}.host`, `a host port not already published (${key} is also ${field}[${earlier}])`, host);
    seen.set(key, i);
    if (busy.has(key)) throw invalid(`${f}.host`, `a free host port (${key} has a listening socket on the host)`, host);
    const owner = leased.get(key);
    if (owner !== undefined) throw invalid(`${f}.host`, `a free host port (${key} is published by sandbox ${owner})`, host);
    out.push({ host, sandbox, protocol });
  });
  return out;
}

function resolveHostPorts(field: string, value: unknown): ResolvedHostPort[] {
  if (!Array.isArray(value)) throw invalid(field, 'an array of port numbers or { port, protocol? }', value);
  const out: ResolvedHostPort[] = [];
  const seen = new Map<string, number>();
  value.forEach((p: unknown, i) => {
    const f = `${field}[${i}]`;
    let resolved: ResolvedHostPort;
    if (typeof p === 'number') {
      resolved = { port: port(f, p), protocol: 'tcp' };
    } else if (typeof p === 'object' && p !== null && !Array.isArray(p)) {
      for (const key of Object.keys(p)) {
        if (!(HOST_PORT_KEYS as readonly string[]).includes(key)) {
          const guess = suggest(key, HOST_PORT_KEYS);
          throw invalid(`${f}.${key}`, `one of ${HOST_PORT_KEYS.join(', ')}${guess ? ` (did you mean '${guess}'?)` : ''}`);
        }
      }
      const r = p as Record<string, unknown>;
      const protocol = r.protocol ?? 'tcp';
      if (protocol !== 'tcp' && protocol !== 'udp') throw invalid(`${f}.protocol`, `'tcp' or 'udp'`, protocol);
      resolved = { port: port(`${f}.port`, r.port), protocol };
    } else {
      throw invalid(f, 'a port number from 1 to 65535 or { port, protocol? }', p);
    }
    const key = `${resolved.protocol}/${resolved.port}`;
    const earlier = seen.get(key);
    if (earlier !== undefined) throw invalid(f, `a port not already listed (${key} is also ${field}[${earlier}])`, p);
    seen.set(key, i);
    out.push(resolved);
  });
  return out;
}

function port(field: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 65535) {
    throw invalid(field, 'a port number from 1 to 65535', value);
  }
  return value;
}

/**
 * `tcp/<port>` for every listening TCP socket and `udp/<port>` for every bound UDP socket in
 * the caller's network namespace, from /proc/net (no bind attempt: it would race with the
 * owner and cost a syscall per port).
 */
export function hostPortsInUse(): Set<string> {
  const out = new Set<string>();
  for (const [file, proto, listenOnly] of [
    ['/proc/net/tcp', 'tcp', true],
    ['/proc/net/tcp6', 'tcp', true],
    ['/proc/net/udp', 'udp', false],
    ['/proc/net/udp6', 'udp', false],
  ] as const) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 4) continue;
      // 0A = TCP_LISTEN; UDP sockets have no listen state, any bound local port counts.
      if (listenOnly && cols[3] !== '0A') continue;
      const portHex = cols[1]!.split(':')[1];
      if (portHex) out.add(`${proto}/${parseInt(portHex, 16)}`);
    }
  }
  return out;
}

/** `proto/port` -> sandbox id for ports published by live leases in `stateDir`. */
function leasedPorts(stateDir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const name of leaseFiles(stateDir)) {
    const lease = readLease(stateDir, name);
    for (const p of lease?.ports ?? []) out.set(`${p.protocol}/${p.host}`, lease!.id);
  }
  return out;
}

/** IPv4 routes of the host's main table except default routes and hutch's own links. */
export function hostRoutes(): { cidr: Cidr; dev: string }[] {
  let text: string;
  try {
    text = readFileSync('/proc/net/route', 'utf8');
  } catch {
    return [];
  }
  const out: { cidr: Cidr; dev: string }[] = [];
  for (const line of text.split('\n').slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols.length < 8) continue;
    const dev = cols[0]!;
    if (/^hx[0-9a-f]{8}/.test(dev)) continue;
    // /proc/net/route prints addresses as little-endian hex.
    const prefix = popcount(leHex(cols[7]!));
    if (prefix === 0) continue;
    out.push({ cidr: { network: leHex(cols[1]!), prefix }, dev });
  }
  return out;
}

/** The first host route (other than a default route or a hutch link) overlapping `range`, as text. */
export function hostRouteOverlapping(range: Cidr): string | undefined {
  const r = hostRoutes().find((x) => overlaps(x.cidr, range));
  return r ? `${formatCidr(r.cidr)} dev ${r.dev}` : undefined;
}

function leHex(h: string): number {
  const n = parseInt(h, 16) >>> 0;
  return (((n & 0xff) << 24) | (((n >>> 8) & 0xff) << 16) | (((n >>> 16) & 0xff) << 8) | (n >>> 24)) >>> 0;
}

function popcount(n: number): number {
  let c = 0;
  for (let x = n >>> 0; x; x = (x & (x - 1)) >>> 0) c++;
  return c;
}

/** CAP_NET_ADMIN (bit 12) in the effective set. */
function hasNetAdmin(): boolean {
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return m !== null && (BigInt(`0x${m[1]}`) & (1n << 12n)) !== 0n;
  } catch {
    return false;
  }
}


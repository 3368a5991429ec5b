/**
 * A sandbox's resolver: UDP and TCP on the host side of its link, where nftables sends the
 * sandbox's port 53 (ephemeral ports: no clash with a DNS server of the host on 0.0.0.0:53;
 * `/etc/resolv.conf` names the host address, the only resolver
 * its /etc/resolv.conf names, and the only one nftables lets it reach). Each query is decided
 * by the policy (policy.ts): an allowed name is resolved upstream (`dns.hosts` first, then
 * `dns.servers`, else the host's resolvers), its A records are handed to `admit` (which puts
 * them in the sandbox's nftables set) before the answer goes back, so the connection that
 * follows finds its address admitted; a refused name gets NXDOMAIN at once and a violation.
 * AAAA queries of allowed names get an empty answer: sandbox links are IPv4 only.
 *
 * One resolver per sandbox rather than one per host: the address a query arrives at names
 * the sandbox with no lookup, and closing it is part of the sandbox's release.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import {
  RCODE_NOERROR,
  RCODE_NOTIMP,
  RCODE_NXDOMAIN,
  RCODE_SERVFAIL,
  TYPE_A,
  TYPE_AAAA,
  buildAnswer,
  chainRecords,
  formErr,
  parseAnswer,
  parseQuery,
  type Question,
} from './dns.js';
import { type EgressLists, type EgressPolicy, type EgressRequest, decideName } from './policy.js';

export const ASK_TIMEOUT_MS = 5_000;
const UPSTREAM_TIMEOUT_MS = 2_000;
/** An admitted address stays in the set at least this long, whatever the TTL (clients cache past it). */
export const MIN_ADMIT_S = 300;
const MAX_TCP_CLIENTS = 64;

export interface RefusedName {
  host: string;
  reason: string;
}

export interface ResolverHooks {
  /** Puts the addresses in the sandbox's set; resolves once they are there. */
  admit(addresses: { address: string; ttl: number }[]): Promise<void>;
  /** A name was refused (reported once per name per second). */
  refused(r: RefusedName): void;
}

/** The host's IPv4 resolvers, from /etc/resolv.conf. */
export function hostResolvers(): string[] {
  try {
    return readFileSync('/etc/resolv.conf', 'utf8')
      .split('\n')
      .map((l) => /^\s*nameserver\s+(\S+)/.exec(l)?.[1])
      .filter((a): a is string => a !== undefined && isIPv4(a));
  } catch {
    return [];
  }
}

export class SandboxResolver {
  private udp: dgram.Socket | null = null;
  private tcp: net.Server | null = null;
  private tcpClients = new Set<net.Socket>();
  private lists: EgressLists;
  /** name -> ask's answer (true, or the refusal reason), once per name while it stands. */
  private asked = new Map<string, Promise<true | string>>();
  /** name -> address -> expiry (ms since epoch), what allowed names resolved to. */
  readonly records = new Map<string, Map<string, number>>();
  private lastRefused = new Map<string, number>();
  private closed = false;

  constructor(
    readonly bind: string,
    private readonly policy: EgressPolicy,
    private readonly hooks: ResolverHooks,
  ) {
    this.lists = policy;
  }

  /** Binds UDP and TCP on ephemeral ports of the host address (nftables maps the sandbox's port 53 to them). */
  async start(): Promise<{ udp: number; tcp: number }> {
    const udp = dgram.createSocket({ type: 'udp4' });
    this.udp = udp;
    udp.on('message', (msg, rinfo) => void this.answer(msg).then((out) => out && !this.closed && udp.send(out, rinfo.port, rinfo.address, () => undefined)));
    udp.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind(0, this.bind, () => {
        udp.off('error', reject);
        resolve();
      });
    });
    const tcp = net.createServer((sock) => this.serveTcp(sock));
    this.tcp = tcp;
    await new Promise<void>((resolve, reject) => {
      tcp.once('error', reject);
      tcp.listen(0, this.bind, () => {
        tcp.off('error', reject);
        resolve();
      });
    });
    return { udp: udp.address().port, tcp: (tcp.address() as net.AddressInfo).port };
  }

  close(): void {
    this.closed = true;
    this.udp?.close();
    this.udp = null;
    this.tcp?.close();
    this.tcp = null;
    for (const s of this.tcpClients) s.destroy();
    this.tcpClients.clear();
  }

  /** Replaces allow/domains/deny for every later query (asks already answered stand). */
  setLists(lists: EgressLists): void {
    this.lists = lists;
  }

  /** Addresses still valid of the names the current lists allow (to refill the set after a change). */
  admittedAddresses(now = Date.now()): { address: string; ttl: number }[] {
    const out = new Map<string, number>();
    for (const [name, addrs] of this.records) {
      if (decideName({ ...this.lists, ask: this.policy.ask }, name) !== 'allow' && !this.askedAllowed(name)) continue;
      for (const [a, exp] of addrs) if (exp > now) out.set(a, Math.max(out.get(a) ?? 0, Math.ceil((exp - now) / 1000)));
    }
    return [...out].map(([address, ttl]) => ({ address, ttl }));
  }

  /** The names that resolved to `address` and are still valid. */
  namesOf(address: string, now = Date.now()): string[] {
    const out: string[] = [];
    for (const [name, addrs] of this.records) if ((addrs.get(address) ?? 0) > now) out.push(name);
    return out;
  }

  private askedAllowed(name: string): boolean {
    return this.settledAsk.get(name) === true;
  }

  private settledAsk = new Map<string, true | string>();

  private serveTcp(sock: net.Socket): void {
    if (this.tcpClients.size >= MAX_TCP_CLIENTS) return void sock.destroy();
    this.tcpClients.add(sock);
    sock.setTimeout(10_000, () => sock.destroy());
    sock.on('close', () => this.tcpClients.delete(sock));
    sock.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (buf.length < 2 + len) break;
        const msg = buf.subarray(2, 2 + len);
        buf = buf.subarray(2 + len);
        void this.answer(Buffer.from(msg)).then((out) => {
          if (!out || sock.destroyed) return;
          const l = Buffer.alloc(2);
          l.writeUInt16BE(out.length);
          sock.write(Buffer.concat([l, out]));
        });
      }
      if (buf.length > 65_537) sock.destroy();
    });
  }

  /** The answer to one message from the sandbox; null: none (not a query). */
  async answer(msg: Buffer): Promise<Buffer | null> {
    const q = parseQuery(msg);
    if (q === null) return formErr(msg);
    if (q.opcode !== 0 || q.cls !== 1) return buildAnswer(msg, q, RCODE_NOTIMP);
    try {
      const verdict = await this.decide(q.name);
      if (verdict !== true) {
        this.report(q.name, verdict);
        return buildAnswer(msg, q, RCODE_NXDOMAIN);
      }
      return await this.resolveAllowed(msg, q);
    } catch {
      return buildAnswer(msg, q, RCODE_SERVFAIL);
    }
  }

  /** true, or the reason `name` is refused (asking `ask` once per name); the name check of HTTP and TLS connections (nfqueue.ts) uses it too. */
  async decide(name: string, via: { address: string; port: number } | null = null): Promise<true | string> {
    const d = decideName({ ...this.lists, ask: this.policy.ask }, name);
    if (d === 'allow') return true;
    if (d === 'deny') return 'denied';
    if (d === 'refuse') return 'not allowed';
    let p = this.asked.get(name);
    if (!p) {
      p = askOnce(this.policy.ask!, name, via);
      this.asked.set(name, p);
      void p.then((v) => this.settledAsk.set(name, v));
    }
    return p;
  }

  private report(host: string, reason: string): void {
    const now = Date.now();
    if ((this.lastRefused.get(host) ?? 0) > now - 1000) return;
    this.lastRefused.set(host, now);
    if (this.lastRefused.size > 4096) this.lastRefused.clear();
    this.hooks.refused({ host, reason });
  }

  private async resolveAllowed(msg: Buffer, q: Question): Promise<Buffer> {
    const fixed = this.policy.hosts.get(q.name);
    if (fixed) {
      if (q.type !== TYPE_A) return buildAnswer(msg, q, RCODE_NOERROR);
      await this.admit(q.name, fixed.map((address) => ({ name: q.name, address, ttl: 60 })));
      return buildAnswer(msg, q, RCODE_NOERROR, fixed, 60);
    }
    // IPv4 only: an empty AAAA answer sends clients to A at once.
    if (q.type === TYPE_AAAA) return buildAnswer(msg, q, RCODE_NOERROR);
    const servers = this.policy.servers ?? hostResolvers();
    if (servers.length === 0) return buildAnswer(msg, q, RCODE_SERVFAIL);
    const reply = await upstream(msg, servers);
    if (reply === null) return buildAnswer(msg, q, RCODE_SERVFAIL);
    const parsed = parseAnswer(reply);
    if (parsed === null) return buildAnswer(msg, q, RCODE_SERVFAIL);
    // Only the question's name and its CNAME chain admit addresses: other owners in an answer do not.
    const recs = q.type === TYPE_A ? chainRecords(q.name, parsed) : [];
    if (recs.length > 0) await this.admit(q.name, recs);
    reply.writeUInt16BE(q.id, 0);
    return reply;
  }

  private async admit(name: string, recs: { address: string; ttl: number }[]): Promise<void> {
    const now = Date.now();
    let m = this.records.get(name);
    if (!m) this.records.set(name, (m = new Map()));
    for (const r of recs) m.set(r.address, now + Math.max(r.ttl, MIN_ADMIT_S) * 1000);
    await this.hooks.admit(recs.map((r) => ({ address: r.address, ttl: Math.max(r.ttl, MIN_ADMIT_S) })));
  }
}

function askOnce(ask: NonNullable<EgressPolicy['ask']>, host: string, via: { address: string; port: number } | null): Promise<true | string> {
  return askRequest(ask, via ? { host, address: via.address, port: via.port, protocol: 'tcp' } : { host, address: null, port: null, protocol: 'dns' });
}

/** Asks `ask` once: true, or the refusal's reason (its own, a throw's, or no answer within 5 s). */
export async function askRequest(ask: NonNullable<EgressPolicy['ask']>, request: EgressRequest): Promise<true | string> {
  let timer: NodeJS.Timeout | undefined;
  try {
    const answer = await Promise.race([
      Promise.resolve().then(() => ask(request)),
      new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), ASK_TIMEOUT_MS))),
    ]);
    if (answer === true) return true;
    if (answer === 'timeout') return 'ask: no answer within 5 s';
    if (typeof answer === 'object' && answer !== null && typeof (answer as { reason?: unknown }).reason === 'string') return (answer as { reason: string }).reason;
    return 'not allowed';
  } catch (e) {
    return `ask threw: ${e instanceof Error ? e.message : String(e)}`;
  } finally {
    clearTimeout(timer);
  }
}

/** Sends `msg` (with a fresh id) to each server in turn over UDP, then TCP when truncated. */
async function upstream(msg: Buffer, servers: readonly string[]): Promise<Buffer | null> {
  for (const server of servers) {
    const id = (Math.random() * 0x10000) | 0;
    const out = Buffer.from(msg);
    out.writeUInt16BE(id, 0);
    let reply = await udpExchange(out, server, id);
    if (reply && reply.length >= 3 && reply[2]! & 0x02) reply = await tcpExchange(out, server);
    if (reply) return reply;
  }
  return null;
}

function udpExchange(msg: Buffer, server: string, id: number): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    const done = (v: Buffer | null) => {
      clearTimeout(t);
      s.close();
      resolve(v);
    };
    const t = setTimeout(() => done(null), UPSTREAM_TIMEOUT_MS);
    s.on('error', () => done(null));
    s.on('message', (m, r) => {
      if (r.address === server && r.port === 53 && m.length >= 12 && m.readUInt16BE(0) === id) done(m);
    });
    s.send(msg, 53, server);
  });
}

function tcpExchange(msg: Buffer, server: string): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const sock = net.connect(53, server);
    let buf = Buffer.alloc(0);
    const done = (v: Buffer | null) => {
      sock.destroy();
      resolve(v);
    };
    sock.setTimeout(UPSTREAM_TIMEOUT_MS, () => done(null));
    sock.on('error', () => done(null));
    sock.on('connect', () => {
      const l = Buffer.alloc(2);
      l.writeUInt16BE(msg.length);
      sock.write(Buffer.concat([l, msg]));
    });
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) done(buf.subarray(2, 2 + buf.readUInt16BE(0)));
    });
    sock.on('close', () => done(null));
  });
}

export { TYPE_A };

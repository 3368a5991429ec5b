/**
 * Egress by name for one sandbox: its resolver (dns-server.ts), its nftables set of admitted
 * addresses and forward chain (nat.ts), the name check of its HTTP/TLS connections (the
 * process's netfilter queue, nfqueue.ts), the ask listener for bare addresses (sni-proxy.ts),
 * refusals seen by the kernel (NFLOG, nflog.ts), by the resolver and by the name check turned
 * into violations (violations.ts), and `setNetworkPolicy`.
 */
import { isUserspace, setUserspaceAllow } from './userspace.js';
import { namesUnsupported } from './userspace-options.js';
import { HutchError } from '../errors.js';
import { SandboxResolver, askRequest } from './dns-server.js';
import type { NetworkAttachment } from './index.js';
import { TABLE, addProxyRules, addToSet, admitAddresses, applyPolicy, askRefusedSet, askedSet, fwdRules, refusedCounter } from './nat.js';
import { isFailure, native } from '../native.js';
import { run } from './run.js';
import { SniProxy } from './sni-proxy.js';
import { acquireQueue, onNameCheck, releaseQueue } from './nfqueue.js';
import { type Cidr, contains, parseCidr, parseIpv4 } from './cidr.js';

/**
 * Never admitted through a name, whatever an upstream answers (a name of an allowed zone
 * pointed at them): this host's loopback, link-local (cloud metadata at 169.254.169.254),
 * "this network", multicast and reserved, and hutch's own sandbox range. An `allow` CIDR
 * still reaches them.
 */
const NEVER_BY_NAME = ['0.0.0.0/8', '127.0.0.0/8', '169.254.0.0/16', '224.0.0.0/3'].map((c) => (parseCidr(c) as { ok: true; cidr: Cidr }).cidr);

/** Distinct bare addresses one sandbox may have asked about; past it, refused without asking. */
const MAX_ASKED_ADDRESSES = 4096;

function admissible(address: string, range: Cidr): boolean {
  const a = parseIpv4(address);
  return a !== undefined && !contains(range, a) && !NEVER_BY_NAME.some((c) => contains(c, a));
}
import { type BridgePlan, cidr } from './options.js';
import { type EgressLists, type EgressPolicy, resolveLists } from './policy.js';
import type { ViolationLog } from './violations.js';
import { drainRefused, nflogGroup as readerGroup, onRefusedPacket } from './nflog.js';

export class SandboxEgress {
  private lists: EgressLists;
  private readonly inSet = new Set<string>();
  /** Bare address -> `ask`'s answer (true, or the refusal's reason), once per address for the sandbox's life. */
  private readonly askedAddresses = new Map<string, Promise<true | string>>();
  /** Bare address -> the reason `ask` refused it (the forward chain refuses it from then on, logged as 'asked'). */
  private readonly askRefusals = new Map<string, string>();
  /** Refused packets the kernel logged (NFLOG records read), and those it did not that are counted already. */
  private logged = 0;
  private unlogged = 0;
  /** The ask listener's port (null: no `ask`). */
  private askPort: number | null = null;
  private changing: Promise<void> = Promise.resolve();
  private unlisten: () => void = () => undefined;
  private unlistenCheck: () => void = () => undefined;
  /** The name check's netfilter queue (nfqueue.ts; null until taken). */
  private queue: number | null = null;
  private readonly sweeper = setInterval(() => this.sweep(), 60_000).unref();

  private constructor(
    private readonly att: NetworkAttachment,
    private readonly policy: EgressPolicy,
    private readonly logGroup: number | null,
    private readonly log: ViolationLog,
    readonly resolver: SandboxResolver,
    readonly proxy: SniProxy,
    private readonly range: Cidr,
  ) {
    this.lists = policy;
  }

  /**
   * Starts the resolver on the link's host address and points the sandbox's /etc/resolv.conf
   * at it. Null when the plan has no names (nothing to do).
   */
  static async start(
    plan: BridgePlan,
    att: NetworkAttachment,
    log: ViolationLog,
    logGroup: number | null,
    writeFile: (path: string, data: string) => Promise<void>,
  ): Promise<SandboxEgress | null> {
    if (plan.names === null) return null;
    let self: SandboxEgress | null = null;
    const resolver = new SandboxResolver(att.hostAddress, plan.names, {
      admit: (addrs) => self!.admit(addrs.map((a) => a.address)),
      refused: (r) => log.record({ kind: 'network', time: Date.now(), reason: r.reason, host: r.host, address: null, port: 53, protocol: 'dns' }),
    });
    const denied = (address: string) => {
      const a = parseIpv4(address);
      return a !== undefined && self!.lists.denyCidrs.some((c) => contains(c, a));
    };
    const refused = (r: { host: string | null; address: string; port: number; reason: string }) =>
      log.record({ kind: 'network', time: Date.now(), reason: r.reason, host: r.host, address: r.address, port: r.port, protocol: 'tcp' });
    const proxy = new SniProxy(att.hostAddress, {
      refused,
      askAddress: (dst) => self!.askAddress(dst),
    });
    self = new SandboxEgress(att, plan.names, logGroup, log, resolver, proxy, plan.range);
    const me = self;
    me.unlisten = onRefusedPacket(att.address, (p) => me.refusedPacket(p));
    // HTTP/TLS to admitted addresses: the name in the first data (SNI/Host), read from the
    // queue; a connection that names none goes on (its address was admitted by an allowed name).
    me.unlistenCheck = onNameCheck(att.address, {
      decide: (name, dst) => (denied(dst.address) ? Promise.resolve('denied') : name === null ? Promise.resolve(true) : resolver.decide(name, dst)),
      refused,
    });
    log.settle = () => me.countUnlogged();
    try {
      me.queue = acquireQueue();
      const dns = await resolver.start();
      if (plan.names.ask) me.askPort = await proxy.startAsk();
      const names = { lists: plan.names, logGroup, queue: me.queue };
      await addProxyRules(att.slot, att.hostInterface, att.hostAddress, dns, me.askPort === null ? null : { port: me.askPort, lists: plan.names }, names);
      const conf = `# hutch: the sandbox's resolver (egress by name)\nnameserver ${att.hostAddress}\noptions timeout:6 attempts:2\n`;
      await writeFile('/etc/resolv.conf', conf).catch((e: unknown) => {
        throw new HutchError('ESETUP', `network: writing the sandbox's /etc/resolv.conf (to name hutch's resolver) failed: ${e instanceof Error ? e.message : String(e)}; an image whose /etc/resolv.conf is a symlink to a path it lacks (e.g. /run/systemd/resolve/stub-resolv.conf) needs a regular file there`, { step: 'network', cause: e });
      });
    } catch (e) {
      self.close();
      throw e instanceof HutchError ? e : new HutchError('ESETUP', `network: starting the sandbox's resolver and name check on ${att.hostAddress} failed: ${e instanceof Error ? e.message : String(e)}`, { step: 'network', cause: e });
    }
    return self;
  }

  private async admit(addresses: string[]): Promise<void> {
    const fresh = addresses.filter((a) => !this.inSet.has(a) && admissible(a, this.range));
    if (fresh.length === 0) return;
    await this.changing;
    await admitAddresses(this.att.slot, fresh);
    for (const a of fresh) this.inSet.add(a);
  }

  /**
   * `ask` about a bare address the sandbox connects to (the ask listener of sni-proxy.ts holds
   * the connection meanwhile): once per address; `true` puts it in the sandbox's asked set, so
   * later connections go straight. Never for addresses no name could admit either.
   */
  private askAddress(dst: { address: string; port: number }): Promise<true | string> {
    const a = parseIpv4(dst.address);
    if (a !== undefined && this.lists.denyCidrs.some((c) => contains(c, a))) return Promise.resolve('denied');
    if (!admissible(dst.address, this.range) || !this.policy.ask) return Promise.resolve('not allowed');
    let p = this.askedAddresses.get(dst.address);
    if (!p) {
      if (this.askedAddresses.size >= MAX_ASKED_ADDRESSES) return Promise.resolve('not allowed (too many addresses asked about)');
      p = askRequest(this.policy.ask, { host: null, address: dst.address, port: dst.port, protocol: 'tcp' }).then(async (v) => {
        // Later connections go straight through, or are refused by the kernel at once (with this
        // answer's reason); should nft fail, they keep coming here and find the same answer.
        if (v !== true) this.askRefusals.set(dst.address, v);
        await this.changing;
        const set = v === true ? askedSet(this.att.slot) : askRefusedSet(this.att.slot);
        await addToSet(set, [dst.address], `recording ask's answer about an address for sandbox slot ${this.att.slot}`).catch(() => undefined);
        return v;
      });
      this.askedAddresses.set(dst.address, p);
    }
    return p;
  }

  /**
   * At an exec's end: the sandbox's refused-packet counter (every packet its forward chain
   * refused) against the records read (the log rule's rate limit and a full socket leave some
   * out); the difference not counted yet goes to `violationsDropped`. The counter is read
   * before the queued records: a packet refused in between can only be counted later, never twice.
   */
  private countUnlogged(): void {
    const c = native().nftCounter('hutch', refusedCounter(this.att.slot));
    if (isFailure(c)) return;
    drainRefused();
    const missing = c - this.logged - this.unlogged;
    if (missing <= 0) return;
    this.unlogged += missing;
    this.log.drop(missing); // refused past the kernel's log limit: counted, never seen one by one
  }

  /** A packet the kernel refused (NFLOG): the names that resolved to its address, if any. */
  refusedPacket(p: { reason: string; address: string; port: number | null; protocol: 'tcp' | 'udp' }): void {
    this.logged++;
    const names = this.resolver.namesOf(p.address);
    const reason = p.reason === 'asked' ? (this.askRefusals.get(p.address) ?? 'not allowed') : p.reason;
    this.log.record({ kind: 'network', time: Date.now(), reason, host: names[0] ?? null, address: p.address, port: p.port, protocol: p.protocol });
  }

  /** `setNetworkPolicy`: validated, then the resolver's lists and the forward chain replaced in one nft transaction. */
  async setPolicy(value: unknown): Promise<void> {
    const lists = resolveLists('policy', value, this.policy, (f, v) => {
      if (!Array.isArray(v)) throw new HutchError('EINVAL', `invalid option ${f}: expected an array of IPv4 CIDRs`);
      return v.map((x, i) => cidr(`${f}[${i}]`, x));
    });
    await this.reapply(lists);
  }

  /** The chain from `lists` and the set refilled with what is still admitted, in one transaction. */
  private reapply(lists: EgressLists): Promise<void> {
    const run = this.changing.then(async () => {
      this.lists = lists;
      this.resolver.setLists(lists);
      const admitted = this.resolver.admittedAddresses().map((a) => a.address);
      await applyPolicy(this.att.slot, { lists, logGroup: this.logGroup, queue: this.queue }, admitted, { hostAddress: this.att.hostAddress, port: this.askPort });
      this.inSet.clear();
      for (const a of admitted) this.inSet.add(a);
    });
    this.changing = run.catch(() => undefined);
    return run;
  }

  /** Every minute: addresses whose every name's record expired (TTL, at least MIN_ADMIT_S) leave the set. */
  private sweep(): void {
    const live = new Set(this.resolver.admittedAddresses().map((a) => a.address));
    if ([...this.inSet].every((a) => live.has(a))) return;
    this.reapply(this.lists).catch(() => undefined);
  }

  close(): void {
    clearInterval(this.sweeper);
    this.log.settle = null;
    this.unlisten();
    this.unlistenCheck();
    if (this.queue !== null) releaseQueue();
    this.queue = null;
    this.resolver.close();
    this.proxy.close();
  }
}

export { ViolationLog, type Violation } from './violations.js';

/** The NFLOG group refusals are logged to, for sandboxes with egress by name (null: none or not read). */
export function nflogGroup(plan: { mode: string; names?: unknown }): number | null {
  return plan.mode === 'bridge' && plan.names ? readerGroup() : null;
}

/**
 * `setNetworkPolicy` on a sandbox made without names: only `allow` can change (its forward
 * chain rewritten in one transaction); `domains`/`deny` need the resolver, made at create.
 */
export async function setPlainPolicy(att: NetworkAttachment | null, value: unknown): Promise<void> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new HutchError('EINVAL', `invalid option policy: expected { allow?, domains?, deny? }`);
  const o = value as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (key === 'domains' || key === 'deny') {
      if (att && isUserspace(att)) throw namesUnsupported('policy');
      throw new HutchError('EINVAL', `invalid option policy.${key}: this sandbox was made without egress by name; create it with network { outbound: 'nat', domains } (domains: ['*'] to start open) to change names live`);
    }
    if (key !== 'allow') throw new HutchError('EINVAL', `invalid option policy.${key}: expected one of allow, domains, deny`);
  }
  if (!att || !att.nat) throw new HutchError('EINVAL', `invalid option policy.allow: the sandbox needs network { mode: 'bridge', outbound: 'nat' }`);
  let allow = null;
  if (o.allow !== undefined) {
    if (!Array.isArray(o.allow)) throw new HutchError('EINVAL', 'invalid option policy.allow: expected an array of IPv4 CIDRs');
    allow = o.allow.map((x: unknown, i) => cidr(`policy.allow[${i}]`, x));
  }
  if (isUserspace(att)) return setUserspaceAllow(att, allow);
  const script = [`flush chain ${TABLE} fwd_${att.slot}`, ...fwdRules(att.slot, 'nat', allow, null)].join('\n') + '\n';
  await run('nft', ['-f', '-'], script, `replacing the network policy of ${att.hostInterface}`);
}

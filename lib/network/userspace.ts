/**
 * The userspace link: `network: { mode: 'bridge' }` outside host root (API.md "Where hutch
 * runs"), or as root with `HUTCH_NETWORK_BACKEND=userspace`. Same `NetworkOptions`, no
 * veth, no host nftables, nothing of the host's network changed:
 *
 * - **The link.** pasta (package passt, what rootless podman uses) joins the sandbox's user
 *   and network namespace, makes its tap `eth0` there with the /30 address and a default
 *   route via the host side, and carries every connection to the host's sockets, as the
 *   caller. It runs in the foreground as our child with PR_SET_PDEATHSIG (addon/nsjoin.cc), so
 *   the kernel kills it when this process ends however it ends; `releaseNetwork` kills it when
 *   the sandbox goes. (This pasta does not exit when the netns ends: it holds the netns.)
 *   Ready: pasta writes its pid to fd 3 (`-P /proc/self/fd/3`) once the tap is configured.
 * - **The filter.** nftables inside the sandbox's netns (`table inet hutch`, output hook),
 *   written by `nft` running in the sandbox's user + net namespace: the host side (pasta maps
 *   it to the host's loopback) only on `hostPorts`; with `outbound: 'nat'` the rest of the
 *   world minus the host's own addresses and hutch's range, limited to `allow` when given;
 *   every refusal immediate (TCP reset, ICMP admin-prohibited). The sandbox's processes have no
 *   CAP_NET_ADMIN (refused with this backend: `checkUserspaceCapabilities`), so they cannot
 *   change the table or the qdiscs, though their user namespace owns the netns.
 * - **Shaping.** tc inside the netns through a netlink socket opened there (nsjoin.cc):
 *   egress as tbf on eth0's root, ingress as eth0's ingress redirected to an ifb made in the
 *   netns, whose root tbf shapes it (tc.ts's steps, mirrored).
 * - **Published ports.** pasta binds each host port (all IPv4 addresses, loopback included)
 *   and forwards it into the sandbox.
 *
 * - **Made ahead.** Outside host root a link can be built before its sandbox exists, in a user
 *   + net namespace the sandbox's clone then joins (linkpool.ts): the same steps on the
 *   namespaces' fds instead of a pid (`NsTarget`), handed over by sandbox id (`claimLink`).
 *
 * Nothing is written to disk: no lease, no state file. The link's resources are pasta's
 * process and what lives in the sandbox's netns, which ends with the sandbox.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { HutchError, errnoName, hostFailure, unsupported } from '../errors.js';
import { type NativeFailure, isFailure, native } from '../native.js';
import { type Cidr, contains, formatCidr, parseCidr } from './cidr.js';
import { slotAddresses } from './lease.js';
import { applySteps, shapingSteps } from './tc.js';
import { type UserspacePlan, findProgram } from './userspace-options.js';

/** The sandbox side's name, as with a veth. */
const INTERFACE = 'eth0';
/** The ifb that carries the sandbox's ingress for shaping, inside its netns. */
const IFB = 'ifb0';
/** pasta's default MTU, kept when unshaped: fewer, larger frames through pasta. */
const MTU_UNSHAPED = 65520;
/** A shaped link gets Ethernet's: tbf's bucket (tc.ts) is sized for 1514-byte frames. */
const MTU_SHAPED = 1500;
/** How long pasta may take to configure the link before create fails. */
const READY_TIMEOUT_MS = 10_000;
const NETLINK_ROUTE = 0;
/** eth0's MAC inside (locally administered, unicast); every sandbox has its own netns. */
const SANDBOX_MAC = '02:68:75:74:63:68';
/** tbf's queue inside: what one TCP flow may keep queued (net.ipv4.tcp_limit_output_bytes: 4 MiB on current kernels). */
const QUEUE_BYTES = 4 * 1024 * 1024;

/** The /30 a userspace link shows inside: the range's first (each sandbox has its own netns, so all may share it). */
export function userspaceAddresses(range: Cidr): { address: string; hostAddress: string } {
  return slotAddresses(range.network);
}

/** pasta's arguments (pure, for tests). `root`: pasta would otherwise drop to nobody, who cannot open the sandbox's namespaces. */
export function pastaArgs(plan: UserspacePlan, root: boolean): string[] {
  const { address, hostAddress } = userspaceAddresses(plan.range);
  // Bound on the host's loopback only: this pasta (passt 2023-03) forwards a connection that
  // comes to another host address into the namespace but never completes its handshake.
  const spec = (proto: 'tcp' | 'udp'): string[] =>
    plan.ports.filter((p) => p.protocol === proto).map((p) => `127.0.0.1/${p.host}:${p.sandbox}`);
  const forward = (flag: string, proto: 'tcp' | 'udp'): string[] => {
    const specs = spec(proto);
    return specs.length === 0 ? [flag, 'none'] : specs.flatMap((x) => [flag, x]);
  };
  const shaped = plan.egressBps !== null || plan.ingressBps !== null;
  return [
    'pasta',
    '--foreground',
    '--quiet',
    ...(root ? ['--runas', '0:0'] : []),
    '--config-net',
    '--ipv4-only',
    '--address', address,
    '--netmask', '30',
    '--gateway', hostAddress,
    '--ns-ifname', INTERFACE,
    // A fixed MAC pasta knows from the start: else it learns the sandbox's from its first
    // frame, and a connection to a published port on a non-loopback host address that comes
    // before any frame from the sandbox goes to a MAC eth0 drops.
    '--ns-mac-addr', SANDBOX_MAC,
    '--mtu', String(shaped ? MTU_SHAPED : MTU_UNSHAPED),
    // Published ports only; never the defaults ('auto' both ways: every port bound on one
    // side would appear on the other, the host's loopback services inside the sandbox).
    ...forward('--tcp-ports', 'tcp'),
    ...forward('--udp-ports', 'udp'),
    '--tcp-ns', 'none',
    '--udp-ns', 'none',
    '--no-dhcp', '--no-ndp', '--no-dhcpv6', '--no-ra',
    '--pid', '/proc/self/fd/3',
    // The sandbox's namespaces as fds we opened (4, 5): pasta drops its capabilities first,
    // and without CAP_SYS_PTRACE it may not open /proc/<pid>/ns/* of a process of another uid.
    '--userns', '/proc/self/fd/4',
    '--netns', '/proc/self/fd/5',
  ];
}

/** IPv4 addresses of this host's interfaces, as /32s (the sandbox must not reach them through pasta). */
function hostAddresses(): Cidr[] {
  const out: Cidr[] = [];
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) {
      if (a.family !== 'IPv4') continue;
      const r = parseCidr(a.address);
      if (r.ok) out.push(r.cidr);
    }
  }
  return out;
}

/** CIDRs with those inside another removed, as text (nft refuses overlapping elements of one set). */
function disjoint(cidrs: readonly Cidr[]): string[] {
  const kept: Cidr[] = [];
  // Wider first: a CIDR is dropped when a kept (wider or equal) one holds its network.
  for (const c of [...cidrs].sort((a, b) => a.prefix - b.prefix)) {
    if (!kept.some((k) => contains(k, c.network))) kept.push(c);
  }
  return kept.map(formatCidr);
}

/** What the filter inside is made from. */
export interface InsideRules {
  hostAddress: string;
  outbound: 'none' | 'nat';
  allow: readonly Cidr[] | null;
  hostPorts: UserspacePlan['hostPorts'];
  /** Never reachable, `allow` or not: the host's own addresses, loopback, 0.0.0.0/8, hutch's range. */
  closed: readonly Cidr[];
}

/** The ruleset for `nft -f -` inside the sandbox's netns (pure, for tests). One transaction; run again it replaces the chain. */
export function insideRuleset(r: InsideRules): string {
  const T = 'inet hutch';
  const refuse = (match: string): string[] => [
    `add rule ${T} out ${match}meta l4proto tcp reject with tcp reset`,
    `add rule ${T} out ${match}reject with icmpx admin-prohibited`,
  ];
  const lines = [
    `add table ${T}`,
    `add chain ${T} out { type filter hook output priority 0; policy accept; }`,
    `flush chain ${T} out`,
    `add rule ${T} out oifname "lo" accept`,
    `add rule ${T} out ct state established,related accept`,
    // IPv4 only, as with a veth.
    `add rule ${T} out meta nfproto ipv6 drop`,
  ];
  for (const proto of ['tcp', 'udp'] as const) {
    const ports = r.hostPorts.filter((p) => p.protocol === proto).map((p) => p.port);
    if (ports.length > 0) lines.push(`add rule ${T} out ip daddr ${r.hostAddress} ${proto} dport { ${ports.join(', ')} } accept`);
  }
  lines.push(...refuse(`ip daddr ${r.hostAddress} `));
  if (r.outbound === 'nat') {
    lines.push(...refuse(`ip daddr { ${disjoint(r.closed).join(', ')} } `));
    if (r.allow === null) {
      lines.push(`add rule ${T} out accept`);
    } else {
      if (r.allow.length > 0) lines.push(`add rule ${T} out ip daddr { ${disjoint(r.allow).join(', ')} } accept`);
      lines.push(...refuse(''));
    }
  } else {
    lines.push(...refuse(''));
  }
  return lines.join('\n') + '\n';
}

export function closedRanges(range: Cidr): Cidr[] {
  // options.ts's DEFAULT_RANGE (root-mode sandboxes of this host live there) spelled out: options.ts imports this file.
  const fixed = ['127.0.0.0/8', '0.0.0.0/8', '10.200.0.0/16'].map((t) => (parseCidr(t) as { ok: true; cidr: Cidr }).cidr);
  return [...fixed, range, ...hostAddresses()];
}

/** A userspace link's process and what its filter was made from, for release and setNetworkPolicy. */
interface Link {
  pid: number;
  pasta: { pid: number; pidfd: number };
  rules: InsideRules;
  released?: Promise<void>;
}

const links = new WeakMap<object, Link>();

/** True for an attachment of this backend. */
export function isUserspace(att: object | null): boolean {
  return att !== null && links.has(att);
}

function nativeFail(what: string, r: NativeFailure & { step?: string; path?: string }): HutchError {
  const errno = errnoName(r.errno);
  return new HutchError('ESETUP', `network: ${what}: ${r.step ?? 'request'} failed: ${errno}${r.path ? ` (${r.path})` : ''}`, { step: 'network', errno });
}

/** Resolves once `fd` is readable or hung up (a pidfd: the process ended); with `ms`, 'timeout' after that long. */
function readable(fd: number, ms?: number): Promise<'readable' | 'timeout'> {
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    const w = new (native().Watch)(fd, () => {
      w.close();
      clearTimeout(timer);
      resolve('readable');
    });
    // The watch goes with the timeout: the caller closes the fd next.
    if (ms !== undefined) {
      timer = setTimeout(() => {
        w.close();
        resolve('timeout');
      }, ms);
    }
  });
}

/** Waits for a child of nsSpawn to end, reaps it and closes its pidfd. */
export async function reaped(p: { pidfd: number }): Promise<{ code: number | null; signal: number | null }> {
  const n = native();
  for (;;) {
    const r = n.reap(p.pidfd);
    if (r !== null && !isFailure(r)) {
      n.close(p.pidfd);
      return r;
    }
    if (isFailure(r)) {
      n.close(p.pidfd);
      return { code: null, signal: null };
    }
    await readable(p.pidfd);
  }
}

function drain(fd: number): string {
  const n = native();
  let out = '';
  for (;;) {
    const b = n.readSome(fd);
    if (b === null || b === undefined || isFailure(b)) break;
    out += b.toString('utf8');
  }
  return out;
}

function pipe(nonblockingRead: boolean): [number, number] {
  const p = native().pipe(nonblockingRead);
  if (isFailure(p)) throw nativeFail('making a pipe', p);
  return p;
}

const ENV = ['PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'LC_ALL=C'];

/**
 * Whose user + net namespace: a process's (its pid), or a prepared link's before any process
 * is in it ([usernsFd, netnsFd], lib/network/linkpool.ts).
 */
export type NsTarget = number | readonly [number, number];

function nsName(t: NsTarget): string {
  return typeof t === 'number' ? `pid ${t}` : 'a prepared link';
}

/** Runs `nft -f -` with `script` inside the user + net namespace of `pid`. */
export async function nftInside(pid: NsTarget, script: string, what: string): Promise<void> {
  const n = native();
  const nft = findProgram('nft');
  if (nft === null) throw unsupported('nftables inside the sandbox', 'apt-get install nftables');
  const [inR, inW] = pipe(false);
  const [errR, errW] = pipe(true);
  try {
    writeSync(inW, script); // a few hundred bytes: within the pipe's buffer
  } finally {
    n.close(inW);
  }
  const child = n.nsSpawn(nft, ['nft', '-f', '-'], ENV, [inR, errW, errW], pid, true);
  n.close(inR);
  n.close(errW);
  if (isFailure(child)) {
    n.close(errR);
    throw nativeFail(`${what}: running nft in the namespaces of ${nsName(pid)}`, child);
  }
  const status = await reaped(child);
  const stderr = drain(errR);
  n.close(errR);
  if (status.code !== 0) {
    const detail = stderr.trim().split('\n').slice(0, 6).join('; ') || `exit ${status.code ?? `signal ${status.signal}`}`;
    throw new HutchError('ESETUP', `network: ${what}: nft failed: ${detail}`, { step: 'network' });
  }
}

/** Starts pasta for the sandbox `pid` (or a prepared link's namespaces); resolves once its link is configured. */
export async function startPasta(plan: UserspacePlan, pid: NsTarget): Promise<{ pid: number; pidfd: number }> {
  const n = native();
  const pasta = findProgram('pasta');
  if (pasta === null) throw unsupported("network mode 'bridge' outside host root", 'apt-get install passt');
  const [readyR, readyW] = pipe(true);
  const [errR, errW] = pipe(true);
  const args = pastaArgs(plan, (process.geteuid?.() ?? 1) === 0);
  let nsFds: number[] = [];
  try {
    nsFds = typeof pid === 'number' ? ['user', 'net'].map((ns) => openSync(`/proc/${pid}/ns/${ns}`, 'r')) : [...pid];
  } catch (e) {
    for (const fd of nsFds) closeSync(fd);
    n.close(readyR), n.close(readyW), n.close(errR), n.close(errW);
    throw hostFailure('ESETUP', `network: opening the namespaces of pid ${pid}`, e);
  }
  const child = n.nsSpawn(pasta, args, ENV, [-1, -1, errW, readyW, ...nsFds], 0, true);
  if (typeof pid === 'number') for (const fd of nsFds) closeSync(fd);
  n.close(readyW);
  n.close(errW);
  if (isFailure(child)) {
    n.close(readyR);
    n.close(errR);
    throw nativeFail('starting pasta', child);
  }
  const outcome = await readable(readyR, READY_TIMEOUT_MS);
  const line = outcome === 'readable' ? n.readSome(readyR) : undefined;
  n.close(readyR);
  const ready = line instanceof Buffer && line.length > 0;
  if (!ready) {
    n.pidfdKill(child.pidfd, 9);
    await reaped(child);
    const stderr = drain(errR)
      .split('\n')
      .filter((l) => l.trim() !== '' && !l.includes('syslog'))
      .slice(0, 6)
      .join('; ');
    n.close(errR);
    const why = outcome === 'timeout' ? `no link after ${READY_TIMEOUT_MS / 1000} s` : stderr || 'pasta ended before its link was ready';
    const portHint = /bind|in use/i.test(why) ? ' (a published host port is taken?)' : '';
    throw new HutchError('ESETUP', `network: pasta for ${nsName(pid)}: ${why}${portHint}`, { step: 'network' });
  }
  // pasta ignores SIGPIPE: what it logs later goes nowhere.
  n.close(errR);
  return child;
}

/** tc inside the sandbox's netns: egress as tbf on eth0's root, ingress through an ifb made there. */
export function shapeInside(plan: UserspacePlan, pid: NsTarget): void {
  if (plan.egressBps === null && plan.ingressBps === null) return;
  const n = native();
  const sock = n.nsNetlinkSocket(pid, NETLINK_ROUTE);
  if (isFailure(sock)) throw nativeFail(`opening a netlink socket in the netns of ${nsName(pid)}`, sock);
  try {
    // tc.ts's steps name the host side of a veth: its root tbf is what goes *into* the
    // sandbox, its ingress what comes out. Inside, eth0 is the sandbox's own side: swapped.
    // The queues are longer than tc.ts's 50 ms: pasta has no SACK, and a TCP flow that loses
    // several segments of a window in a full queue recovers by timeouts (measured: 4 Mbit/s
    // at 8 Mbit/s asked). A flow's own queue is bounded anyway, by TCP small queues (egress)
    // and by the receive window pasta keeps (ingress).
    const steps = shapingSteps(INTERFACE, plan.ingressBps !== null ? IFB : null, plan.ingressBps, plan.egressBps).map((s) =>
      s.kind === 'tbf' ? { ...s, limit: Math.max(s.limit, QUEUE_BYTES) } : s,
    );
    applySteps(steps, sock);
  } finally {
    n.close(sock);
  }
}

/** The rules a plan's filter is made from (the host's own addresses as they are now). */
export function rulesOf(plan: UserspacePlan): InsideRules {
  const { hostAddress } = userspaceAddresses(plan.range);
  return { hostAddress, outbound: plan.outbound, allow: plan.allow, hostPorts: plan.hostPorts, closed: closedRanges(plan.range) };
}

/**
 * A link made ahead (lib/network/linkpool.ts) that a sandbox's clone joined: pasta attached,
 * filter and shaping in place. Handed over by sandbox id between the clone (lib/start.ts) and
 * attachNetwork, which adopts it instead of building a link.
 */
export interface ClaimedLink {
  pasta: { pid: number; pidfd: number };
  rules: InsideRules;
  /** Called once the link is the sandbox's (the pool prepares a replacement then). */
  adopted(): void;
}

const claimed = new Map<string, ClaimedLink>();

/** The link the sandbox `id` was cloned into; attachNetwork adopts it. */
export function claimLink(id: string, link: ClaimedLink): void {
  claimed.set(id, link);
}

/** The claim of a sandbox whose start failed before attachNetwork, taken back (its pasta is the caller's to end). */
export function unclaimLink(id: string): ClaimedLink | null {
  const l = claimed.get(id) ?? null;
  claimed.delete(id);
  return l;
}

/** attachNetwork for this backend: filter, pasta, shaping; any failure undoes what was made. */
export async function attachUserspace(plan: UserspacePlan, id: string, pid: number) {
  const { address, hostAddress } = userspaceAddresses(plan.range);
  const ready = unclaimLink(id);
  if (ready) {
    const att = attachment(plan, id, address, hostAddress);
    links.set(att, { pid, pasta: ready.pasta, rules: ready.rules });
    ready.adopted();
    return att;
  }
  const rules = rulesOf(plan);
  // The filter may go in before the link exists (it names addresses, not the interface), and
  // nothing of the sandbox runs before create returns: both at once.
  const [filter, started] = await Promise.allSettled([nftInside(pid, insideRuleset(rules), `filtering the link of pid ${pid}`), startPasta(plan, pid)]);
  const pasta = started.status === 'fulfilled' ? started.value : null;
  try {
    if (filter.status === 'rejected') throw filter.reason;
    if (started.status === 'rejected') throw started.reason;
    shapeInside(plan, pid);
  } catch (e) {
    if (pasta) {
      native().pidfdKill(pasta.pidfd, 9);
      await reaped(pasta);
    }
    throw e;
  }
  const att = attachment(plan, id, address, hostAddress);
  links.set(att, { pid, pasta: pasta!, rules });
  coldLinkMade?.(plan);
  return att;
}

function attachment(plan: UserspacePlan, id: string, address: string, hostAddress: string) {
  return {
    address,
    hostAddress,
    interface: INTERFACE,
    hostInterface: 'pasta',
    prefixLength: 30,
    id,
    slot: '',
    stateDir: '',
    ifb: null,
    ports: plan.ports,
    nat: plan.outbound === 'nat',
    rules: true,
    names: false,
    backend: 'userspace',
  } as const;
}

let coldLinkMade: ((plan: UserspacePlan) => void) | undefined;

/** lib/network/linkpool.ts: told of each link built on the cold path (the pool then prepares spares for its plan). */
export function onColdLink(fn: (plan: UserspacePlan) => void): void {
  coldLinkMade = fn;
}

/** releaseNetwork for this backend: pasta killed and reaped; the rest ends with the netns. Idempotent. */
export function releaseUserspace(att: object): Promise<void> {
  const link = links.get(att);
  if (!link) return Promise.resolve();
  link.released ??= (async () => {
    native().pidfdKill(link.pasta.pidfd, 9);
    await reaped(link.pasta);
  })();
  return link.released;
}

/** pasta's pid of a userspace attachment (tests, diagnostics); null for other attachments. */
export function pastaPid(att: object): number | null {
  return links.get(att)?.pasta.pid ?? null;
}

/** setNetworkPolicy({ allow }) on a userspace link: the chain inside replaced in one transaction. */
export async function setUserspaceAllow(att: object, allow: readonly Cidr[] | null): Promise<void> {
  const link = links.get(att);
  if (!link) throw new HutchError('EINVAL', 'setNetworkPolicy: not a userspace link');
  if (link.released) throw new HutchError('EDESTROYED', 'setNetworkPolicy: the sandbox\'s link was released');
  link.rules = { ...link.rules, allow };
  await nftInside(link.pid, insideRuleset(link.rules), `replacing the network policy of pid ${link.pid}`);
}


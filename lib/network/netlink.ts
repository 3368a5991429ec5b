/**
 * The link work of a sandbox through rtnetlink in the addon (addon/netlink.cc) instead of
 * spawning `ip`/`tc` (~8 ms a process): each call below is a few netlink round trips on the
 * JS thread, well under a millisecond. Deleting links waits for an RCU grace period in the
 * kernel (~20 ms a link here), so it runs on one worker thread at a time, queued and batched,
 * and `settleDeletions()` waits for everything queued so far.
 */
import { HutchError, errnoName } from '../errors.js';
import { type NativeFailure, isFailure, native } from '../native.js';
import { parseIpv4 } from './cidr.js';

type Failure = NativeFailure & { detail?: string };

/**
 * Queues per veth end. One instead of the kernel's one per CPU: each queue is sysfs objects
 * made on create and removed on delete (measured here: create 2.2 -> 0.9 ms, delete 23 -> 18 ms),
 * and a link shaped or carrying one sandbox's traffic gains nothing from more.
 */
export const VETH_QUEUES = 1;

/** `network: <what>: <errno> (<kernel's reason>)` as ESETUP step 'network', keeping the netlink step. */
function fail(what: string, r: Failure): HutchError {
  const errno = errnoName(r.errno);
  const detail = r.detail ? ` (${r.detail})` : '';
  const e = new HutchError('ESETUP', `network: ${what}: netlink ${r.step ?? 'request'} failed: ${errno}${detail}`, {
    step: 'network',
    errno,
  });
  (e as HutchError & { netlinkStep?: string }).netlinkStep = r.step;
  return e;
}

function check(r: unknown, what: string): void {
  if (r !== true) throw fail(what, isFailure(r) ? (r as Failure) : { errno: 0, step: 'request' });
}

function ipv4(text: string): number {
  const n = parseIpv4(text);
  if (n === undefined) throw new HutchError('EINVAL', `network: not an IPv4 address: ${text}`);
  return n;
}

/** The veth pair, `host` here and `peer` created directly in the netns of `pid`, both down. */
export function createVeth(host: string, peer: string, pid: number): void {
  check(native().netlinkAddVeth(host, peer, pid, VETH_QUEUES), `creating ${host} (veth to pid ${pid})`);
}

/** addrgenmode none, the address, up; in the host's netns. */
export function configureHostSide(host: string, hostAddress: string, prefix: number): void {
  check(native().netlinkConfigure(-1, host, ipv4(hostAddress), prefix, 0), `configuring ${host}`);
}

/**
 * The sandbox side, inside the netns of `pid`: addrgenmode none, address, up, default route
 * via the host side. The socket is opened in that netns by a helper thread (the JS thread
 * never changes netns) and closed here.
 */
export function configurePeerSide(pid: number, peer: string, address: string, prefix: number, gateway: string): void {
  const n = native();
  const sock = n.netlinkSocket(pid);
  if (typeof sock !== 'number') throw fail(`opening a netlink socket in the netns of pid ${pid}`, sock);
  try {
    check(n.netlinkConfigure(sock, peer, ipv4(address), prefix, ipv4(gateway)), `configuring ${peer} in the netns of pid ${pid}`);
  } finally {
    n.close(sock);
  }
}

/** An ifb, up (addrgenmode none), in the host's netns (or the netns of `sock`). */
export function createIfb(name: string, sock?: number): void {
  check(native().netlinkAddIfb(name, sock), `creating ifb ${name}`);
  check(native().netlinkSetUp(name, sock), `bringing ${name} up`);
}

/** tbf as the root qdisc of `dev` (of the host, or of the netns of `sock`). */
export function addTbf(dev: string, bps: number, burstBytes: number, limitBytes: number, sock?: number): void {
  check(native().netlinkAddTbf(dev, bps, burstBytes, limitBytes, sock), `shaping ${dev} (tbf ${bps} bit/s)`);
}

/** ingress qdisc on `dev` whose u32 match-all filter redirects every packet to `target`. */
export function addIngressRedirect(dev: string, target: string, sock?: number): void {
  check(native().netlinkAddRedirect(dev, target, sock), `redirecting the ingress of ${dev} to ${target}`);
}

interface Pending {
  names: string[];
  resolve: () => void;
  reject: (e: unknown) => void;
}

const queue: Pending[] = [];
let draining: Promise<void> | null = null;
/** Names handed to the worker and not yet reported back. */
let inFlight: string[] = [];
let exitHook = false;

/**
 * A process that exits (process.exit, or the loop ending while a deletion is only queued)
 * deletes what is still pending on its own thread: an ifb has no netns to die with. The
 * leases stay; prune removes them (their links already gone).
 */
function onExit(): void {
  const names = [...inFlight, ...queue.flatMap((p) => p.names)];
  try {
    if (names.length > 0) native().netlinkDeleteLinksSync(names);
  } catch {
    // Nothing to report to at exit; prune finds the leases.
  }
}

/**
 * Deletes links (a veth end takes its peer along), off the JS thread. Resolves when every one
 * is gone; a link already gone (its netns ended first) counts as deleted. Rejects with ESETUP
 * naming the first link that could not be deleted.
 */
export function deleteLinks(names: readonly string[]): Promise<void> {
  if (names.length === 0) return Promise.resolve();
  if (!exitHook) {
    exitHook = true;
    process.on('exit', onExit);
  }
  const p = new Promise<void>((resolve, reject) => queue.push({ names: [...names], resolve, reject }));
  draining ??= drain();
  return p;
}

/**
 * One worker at a time, each taking everything queued so far: deletions never hold more than
 * one libuv threadpool slot (fs calls share the pool), however many sandboxes end at once.
 */
async function drain(): Promise<void> {
  try {
    while (queue.length > 0) {
      const batch = queue.splice(0);
      const names = batch.flatMap((b) => b.names);
      let results: (true | Failure)[];
      inFlight = names;
      try {
        results = await native().netlinkDeleteLinks(names);
      } catch (e) {
        for (const b of batch) b.reject(e);
        continue;
      } finally {
        inFlight = [];
      }
      let i = 0;
      for (const b of batch) {
        let err: HutchError | undefined;
        for (const name of b.names) {
          const r = results[i++]!;
          if (r !== true && errnoName(r.errno) !== 'ENODEV' && err === undefined) err = fail(`deleting link ${name}`, r);
        }
        if (err) b.reject(err);
        else b.resolve();
      }
    }
  } finally {
    draining = null;
  }
}

/** Resolves when every deletion queued before (and while) it was called has finished. */
export async function settleDeletions(): Promise<void> {
  while (draining) await draining;
}

/** Links queued or being deleted (for tests and diagnostics). */
export function deletionsPending(): boolean {
  return draining !== null;
}

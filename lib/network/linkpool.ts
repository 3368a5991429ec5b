/**
 * Userspace links made ahead: `network: { mode: 'bridge' }` outside host root costs one pasta
 * per sandbox (lib/network/userspace.ts), about 90 ms from its start to its ready signal and
 * 70 ms of its own CPU, against ~9 ms for a whole `none` create. A create whose link plan
 * matches a link prepared here takes it instead:
 *
 * - **A prepared link** is a user namespace with the maps every sandbox of this process gets
 *   (outside host root they all share one mapping: lib/host/ids.ts), made inside the holder
 *   namespace when there is one, a network namespace that user namespace owns, pasta attached
 *   and ready, the nftables filter applied and tc shaping set inside: exactly what the cold
 *   path builds, before the sandbox exists. Only fds keep the namespaces; no process is in
 *   them until the sandbox's clone joins both (setns in addon/clone.cc's trampoline, in place
 *   of CLONE_NEWUSER | CLONE_NEWNET). The sandbox's root then owns its netns as with a cold
 *   link: same owner, same maps, same capabilities.
 * - **Keyed by plan**: pasta's arguments, the ruleset without the host's own addresses, the
 *   shaping and the maps. The host's addresses (which the filter closes) are checked when a
 *   link is taken: changed since it was made, its filter is rewritten before the clone (one
 *   nft run, ~20 ms), so a sandbox never starts able to reach a host address. The first create of
 *   a plan pays the cold path; after it returns, spares for that plan are made, one at a time
 *   across all plans. Published `ports` make pasta bind host ports per sandbox: a plan with
 *   ports always takes the cold path. A plan unused for `IDLE_MS` loses its spares.
 * - **One sandbox per link**: a taken link leaves the pool; nothing is ever reused.
 * - **Nothing leaks**: pasta dies with this process (PR_SET_PDEATHSIG); `Sandbox.settle()`
 *   releases every spare; a spare whose pasta died (checked on its pidfd before use) is
 *   dropped and the create takes the cold path, never an unfiltered link.
 *
 * `HUTCH_LINK_SPARES` (default 1, 0 turns this off, at most 8): spares kept per plan; at most
 * 16 across all plans (the most recently asked-for plans first). Root
 * mode (the userspace backend by HUTCH_NETWORK_BACKEND) gives each sandbox its own id range:
 * no link can be made ahead for it there, and every link is cold.
 */
import { HutchError, errnoName, invalid } from '../errors.js';
import { hostMode } from '../host/mode.js';
import { cloneMaps, idSource } from '../host/ids.js';
import { isFailure, native } from '../native.js';
import { formatCidr } from './cidr.js';
import {
  type InsideRules,
  claimLink,
  insideRuleset,
  nftInside,
  onColdLink,
  pastaArgs,
  reaped,
  rulesOf,
  shapeInside,
  startPasta,
  unclaimLink,
} from './userspace.js';
import type { UserspacePlan } from './userspace-options.js';

/** A plan's spares go when no create has asked for it for this long. */
const IDLE_MS = 30_000;
/** How long after a create returns its replacement starts (the caller's own setup first). */
const REFILL_DELAY_MS = 20;
const MAX_SPARES = 8;
/** Across all plans: each spare is a pasta process; many one-off plans must not pile them up. */
const MAX_TOTAL = 16;

type Maps = { uidMap: string; gidMap: string; userns: number; denySetgroups: boolean };

/** A link made ahead, until a sandbox's clone joins it (or it is released). */
export interface PreparedLink {
  readonly key: string;
  readonly userns: number;
  readonly netns: number;
  readonly pasta: { pid: number; pidfd: number };
  /** What its filter was made from (the host's addresses as they were then). */
  rules: InsideRules;
}

interface Slot {
  key: string;
  plan: UserspacePlan;
  maps: Maps;
  ready: PreparedLink[];
  making: number;
  lastUsed: number;
  /** The last preparation failed: no more until a create asks again. */
  failed: boolean;
}

const slots = new Map<string, Slot>();
/** Preparations under way (settle waits for them). */
const inFlight = new Set<Promise<void>>();
/** Across all plans: one pasta starting at a time in the background. */
let preparing = 0;
let sweeper: NodeJS.Timeout | undefined;
let refill: NodeJS.Timeout | undefined;

/** Spares per plan: HUTCH_LINK_SPARES, default 1; 0 turns links made ahead off. */
export function linkSpares(env: NodeJS.ProcessEnv = process.env): number {
  const v = env.HUTCH_LINK_SPARES;
  if (v === undefined || v === '') return 1;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > MAX_SPARES) throw invalid('HUTCH_LINK_SPARES', `an integer from 0 (off) to ${MAX_SPARES}`, v);
  return n;
}

/** Whether links of this plan may be made ahead in this process (Sandbox.run then makes no blank for it: lib/start.ts). */
export function linksAhead(plan: UserspacePlan): boolean {
  return hostMode() !== 'root' && plan.ports.length === 0 && plan.names === null && linkSpares() > 0;
}

/** The maps a sandbox of this process gets outside root mode (lib/start.ts: cloneMaps(ids, size)). */
function modeMaps(): Maps {
  const src = idSource();
  return cloneMaps({ uid: src.uid, gid: src.gid }, src.size);
}

/** What makes two links interchangeable: the plan as pasta, the filter and tc see it, and the maps. */
function keyOf(plan: UserspacePlan, maps: Maps): string {
  return JSON.stringify([
    maps.uidMap,
    maps.gidMap,
    maps.denySetgroups,
    pastaArgs(plan, (process.geteuid?.() ?? 1) === 0),
    // Without the host's own addresses: they change as other links come and go (takeLink).
    insideRuleset({ ...rulesOf(plan), closed: [] }),
    plan.egressBps,
    plan.ingressBps,
    formatCidr(plan.range),
  ]);
}

/** True while the link's pasta runs (a dead one is reaped here). */
function pastaAlive(link: PreparedLink): boolean {
  const r = native().reap(link.pasta.pidfd);
  return r === null;
}

/** Ends a link that no sandbox took: pasta killed and reaped, the namespaces' fds closed. */
async function releaseLink(link: { userns?: number; netns?: number; pasta: { pidfd: number } }): Promise<void> {
  const n = native();
  if (link.userns !== undefined) n.close(link.userns);
  if (link.netns !== undefined) n.close(link.netns);
  n.pidfdKill(link.pasta.pidfd, 9);
  await reaped(link.pasta);
}

/**
 * The link for a sandbox about to be cloned with `maps`, or null (the cold path: the clone
 * makes the namespaces and attachNetwork builds the link). The caller passes its fds to the
 * clone and then calls `linkCloned` either way. When the host's own addresses changed since
 * the link was made, its filter is rewritten first (one nft run), as a cold link's would be
 * made now: the sandbox never starts with a filter that lets it reach a host address.
 */
export async function takeLink(plan: UserspacePlan, maps: Maps): Promise<PreparedLink | null> {
  if (!linksAhead(plan)) return null;
  const want = modeMaps();
  if (want.uidMap !== maps.uidMap || want.gidMap !== maps.gidMap || want.denySetgroups !== maps.denySetgroups) return null;
  const key = keyOf(plan, maps);
  let slot = slots.get(key);
  if (!slot) {
    // First of its plan: cold; spares are made once this create's link is built (onColdLink).
    slot = { key, plan, maps, ready: [], making: 0, lastUsed: Date.now(), failed: false };
    slots.set(key, slot);
    sweepLater();
    return null;
  }
  slot.lastUsed = Date.now();
  slot.failed = false;
  for (;;) {
    const link = slot.ready.shift();
    if (!link) return null;
    if (!pastaAlive(link)) {
      // Its pasta died (killed, or out of memory; reaped just now): never used; the create goes cold.
      const n = native();
      n.close(link.userns), n.close(link.netns), n.close(link.pasta.pidfd);
      continue;
    }
    const now = rulesOf(plan);
    if (insideRuleset(now) === insideRuleset(link.rules)) return link;
    try {
      await nftInside([link.userns, link.netns], insideRuleset(now), 'refiltering a link made ahead');
    } catch {
      void releaseLink(link).catch(() => undefined);
      return null;
    }
    link.rules = now;
    return link;
  }
}

/**
 * After the clone: the link's fds closed (the sandbox holds the namespaces now, or the clone
 * failed and nothing does); on success the link is handed to attachNetwork by sandbox id,
 * on failure its pasta ends.
 */
export function linkCloned(link: PreparedLink, id: string | null): void {
  const n = native();
  n.close(link.userns);
  n.close(link.netns);
  if (id === null) {
    void releaseLink({ pasta: link.pasta }).catch(() => undefined);
    return;
  }
  claimLink(id, {
    pasta: link.pasta,
    rules: link.rules,
    adopted: () => fillSoon(),
  });
}

/** The start of sandbox `id` failed after its clone joined a link and before attachNetwork took it. */
export async function linkAbandoned(id: string): Promise<void> {
  const l = unclaimLink(id);
  if (l) await releaseLink({ pasta: l.pasta });
}

/** Makes one link for the slot's plan, all of it or nothing. */
async function prepare(slot: Slot): Promise<PreparedLink> {
  const n = native();
  const ns = n.makeLinkNamespaces(slot.maps);
  if (isFailure(ns)) throw new HutchError('ESETUP', `network: a link made ahead: ${ns.step ?? 'namespaces'} failed: ${errnoName(ns.errno)}${ns.path ? ` (${ns.path})` : ''}`, { step: 'network' });
  const target = [ns.userns, ns.netns] as const;
  const rules = rulesOf(slot.plan);
  let pasta: { pid: number; pidfd: number } | null = null;
  try {
    // As the cold path (attachUserspace): filter and pasta at once, then shaping.
    const [filter, started] = await Promise.allSettled([nftInside(target, insideRuleset(rules), 'filtering a link made ahead'), startPasta(slot.plan, target)]);
    if (started.status === 'fulfilled') pasta = started.value;
    if (filter.status === 'rejected') throw filter.reason;
    if (started.status === 'rejected') throw started.reason;
    shapeInside(slot.plan, target);
  } catch (e) {
    if (pasta) await releaseLink({ userns: ns.userns, netns: ns.netns, pasta });
    else n.close(ns.userns), n.close(ns.netns);
    throw e;
  }
  return { key: slot.key, userns: ns.userns, netns: ns.netns, pasta: pasta!, rules };
}

/** Starts the next preparation soon, off the path of the create that asked. */
function fillSoon(): void {
  if (refill) return;
  refill = setTimeout(() => {
    refill = undefined;
    fill();
  }, REFILL_DELAY_MS);
  refill.unref();
}

/** One preparation at a time, for the most recently asked-for plan that lacks spares. */
function fill(): void {
  if (preparing > 0) return;
  let spares: number;
  try {
    spares = linkSpares();
  } catch {
    return; // changed to a bad value since: the next create reports it
  }
  const all = [...slots.values()];
  if (all.reduce((n, s) => n + s.ready.length + s.making, 0) >= MAX_TOTAL) return;
  const slot = all.filter((s) => !s.failed && s.ready.length + s.making < spares).sort((a, b) => b.lastUsed - a.lastUsed)[0];
  if (!slot) return;
  preparing++;
  slot.making++;
  const p = prepare(slot).then(
    (link) => {
      if (slots.get(slot.key) === slot) slot.ready.push(link);
      else void releaseLink(link).catch(() => undefined); // dropped meanwhile (settle, idle)
    },
    () => {
      // The cold path reports what is wrong with this plan; no spares for it until asked again.
      slot.failed = true;
    },
  );
  const done = p.finally(() => {
    preparing--;
    slot.making--;
    inFlight.delete(done);
    fillSoon();
  });
  inFlight.add(done);
}

onColdLink(() => fillSoon());

/** Drops the spares of plans nobody asked for in IDLE_MS. */
function sweepLater(): void {
  if (sweeper) return;
  sweeper = setInterval(() => {
    const now = Date.now();
    for (const [key, slot] of slots) {
      if (now - slot.lastUsed < IDLE_MS) continue;
      slots.delete(key);
      for (const link of slot.ready.splice(0)) void releaseLink(link).catch(() => undefined);
    }
    if (slots.size === 0) {
      clearInterval(sweeper);
      sweeper = undefined;
    }
  }, IDLE_MS / 3);
  sweeper.unref();
}

/** Every link made ahead released, those being made included (`Sandbox.settle()`). */
export async function dropLinks(): Promise<void> {
  clearTimeout(refill);
  refill = undefined;
  const all = [...slots.values()];
  slots.clear();
  clearInterval(sweeper);
  sweeper = undefined;
  await Promise.all([...inFlight]);
  await Promise.all(all.flatMap((s) => s.ready.splice(0)).map((l) => releaseLink(l)));
}

/** @internal For tests and benches: the ready links now, per plan key. */
export function linksNow(): { key: string; pasta: number; userns: number; netns: number }[] {
  return [...slots.values()].flatMap((s) => s.ready.map((l) => ({ key: s.key, pasta: l.pasta.pid, userns: l.userns, netns: l.netns })));
}

/** @internal For tests: the ready links themselves (a test makes one's filter stale, as a host address added since would). */
export function readyLinks(): PreparedLink[] {
  return [...slots.values()].flatMap((s) => s.ready);
}

/** @internal Waits until no link is being made (tests, benches). */
export async function linksMade(): Promise<void> {
  while (inFlight.size > 0 || refill) {
    await Promise.all([...inFlight]);
    if (refill) await new Promise((r) => setTimeout(r, REFILL_DELAY_MS + 1));
  }
}

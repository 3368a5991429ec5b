/**
 * IPv4 forwarding for outbound NAT and published ports, without the host-wide switch.
 *
 * The kernel forwards an IPv4 packet only when the interface it came in by has
 * `net.ipv4.conf.<if>.forwarding` set (`ip_route_input_slow` checks `IN_DEV_FORWARD` of the
 * input device; the output device's flag is not read). Sandbox -> world comes in by hutch's
 * own `hx<slot>`: that flag is hutch's and goes with the link. The replies, and connections
 * from other hosts to a published port, come in by the host's uplinks and are un-NATed to the
 * sandbox's address in prerouting, so they are forwarded too: their input interface needs the
 * flag, and no choice of hook avoids it. `net.ipv4.ip_forward` is never written (it would set
 * every interface, `all` and `default`).
 *
 * So for an uplink whose flag is 0 (one carrying an IPv4 route, not `lo`, not hutch's), hutch:
 * 1. records it (`<state dir>/forwarding.<ifname>`, O_EXCL), then adds it to the table's
 *    `fwd_guard` set, whose prerouting rule drops every packet that came in by it and would be
 *    forwarded anywhere but to a hutch link: the host forwards its own traffic as before;
 * 2. sets its flag;
 * 3. when no lease and no hutch link is left (the last release, or a prune after a crash),
 *    puts back 0, empties `fwd_guard` and removes the record, in that order.
 * A lock file in the state dir orders these steps between processes: an attach takes its
 * lease before the lock, and a restore looks for leases under it.
 */
import { closeSync, openSync, readFileSync, readdirSync, statSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { hostFailure } from '../errors.js';
import { leaseFiles, processStart } from './lease.js';
import { TABLE, hutchLinksOnHost } from './nat.js';
import { run } from './run.js';

const RECORD_PREFIX = 'forwarding.';
const LOCK = 'forwarding-lock';
/** Written by hutch before this file: the host-wide switch it used to turn on. */
const LEGACY_RECORD = 'ip_forward.orig';
const IP_FORWARD = '/proc/sys/net/ipv4/ip_forward';
/** A lock whose holder is gone, or still empty after this long (holder killed mid-write), is taken over. */
const STALE_LOCK_MS = 10_000;

function flagPath(ifname: string): string {
  return `/proc/sys/net/ipv4/conf/${ifname}/forwarding`;
}

/** The interface's forwarding flag, or undefined when it is gone. */
export function forwardingFlag(ifname: string): '0' | '1' | undefined {
  try {
    return readFileSync(flagPath(ifname), 'utf8').trim() === '0' ? '0' : '1';
  } catch {
    return undefined;
  }
}

function setFlag(ifname: string, value: '0' | '1'): void {
  try {
    writeFileSync(flagPath(ifname), value);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return; // the interface went away
    throw hostFailure('ESETUP', `network: writing ${flagPath(ifname)}`, e);
  }
}

/** Interfaces hutch turned forwarding on for (their records), by name. */
export function forwardingRecords(stateDir: string): string[] {
  try {
    return readdirSync(stateDir)
      .filter((n) => n.startsWith(RECORD_PREFIX))
      .map((n) => n.slice(RECORD_PREFIX.length));
  } catch {
    return [];
  }
}

/** Uplinks whose forwarding is hutch's to turn on: an IPv4 route, not lo or hutch's, flag 0 or recorded by hutch. */
export function uplinksToOpen(stateDir: string): string[] {
  const recorded = new Set(forwardingRecords(stateDir));
  const devs = new Set(routeDevices());
  for (const r of recorded) devs.add(r);
  return [...devs].filter((d) => d !== 'lo' && /^[\w.@:-]{1,15}$/.test(d) && (recorded.has(d) || forwardingFlag(d) === '0'));
}

/** Devices of the main table's IPv4 routes, default routes included. */
function routeDevices(): string[] {
  try {
    return readFileSync('/proc/net/route', 'utf8')
      .split('\n')
      .slice(1)
      .map((l) => l.split('\t')[0]!.trim())
      .filter((d) => d.length > 0 && !/^hx[0-9a-f]{8}/.test(d));
  } catch {
    return [];
  }
}

/** This process's turns for the lock, per state dir: queued here rather than polling the file. */
const queues = new Map<string, Promise<unknown>>();

/** Runs `fn` holding the state dir's forwarding lock (O_EXCL file naming its holder). */
export function withForwardingLock<T>(stateDir: string, fn: () => Promise<T> | T): Promise<T> {
  const turn = (queues.get(stateDir) ?? Promise.resolve()).then(() => withFileLock(stateDir, fn));
  const settled = turn.then(
    () => undefined,
    () => undefined,
  );
  queues.set(stateDir, settled);
  void settled.then(() => {
    if (queues.get(stateDir) === settled) queues.delete(stateDir);
  });
  return turn;
}

async function withFileLock<T>(stateDir: string, fn: () => Promise<T> | T): Promise<T> {
  const path = join(stateDir, LOCK);
  const me = `${process.pid} ${processStart('self') ?? ''}`;
  for (let attempt = 0; ; attempt++) {
    let fd: number;
    try {
      fd = openSync(path, 'wx', 0o600);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw hostFailure('ESETUP', `network: taking the lock ${path}`, e);
      if (lockIsStale(path)) {
        try {
          unlinkSync(path);
        } catch {
          // Another process took it over first.
        }
      } else {
        await new Promise((r) => setTimeout(r, Math.min(2 + attempt, 20)));
      }
      continue;
    }
    try {
      writeSync(fd, me);
    } finally {
      closeSync(fd);
    }
    try {
      return await fn();
    } finally {
      try {
        unlinkSync(path);
      } catch {
        // Already taken over as stale: nothing of ours to remove.
      }
    }
  }
}

function lockIsStale(path: string): boolean {
  let text: string;
  let ageMs: number;
  try {
    text = readFileSync(path, 'utf8');
    ageMs = Date.now() - statSync(path).mtimeMs;
  } catch {
    return false; // released meanwhile: just retry
  }
  const [pid, start] = text.split(' ');
  if (!pid) return ageMs > STALE_LOCK_MS;
  return processStart(Number(pid)) !== start;
}

/**
 * Step 1 of the header for each uplink in `uplinks`: records the ones still at 0. Call under
 * the lock, then add `uplinks` to `fwd_guard`, then `openUplinks`.
 */
export function recordUplinks(stateDir: string, uplinks: readonly string[]): void {
  for (const dev of uplinks) {
    if (forwardingFlag(dev) !== '0') continue;
    try {
      writeFileSync(join(stateDir, RECORD_PREFIX + dev), '0\n', { flag: 'wx', mode: 0o600 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw hostFailure('ESETUP', `network: recording the forwarding flag of ${dev}`, e);
    }
  }
}

/** Step 2: the flags on, once their records and guards are in place. */
export function openUplinks(uplinks: readonly string[]): void {
  for (const dev of uplinks) if (forwardingFlag(dev) === '0') setFlag(dev, '1');
}

/** Forwarding on hutch's own link (goes with the link). */
export function openLink(host: string): void {
  setFlag(host, '1');
}

/**
 * Step 3: when no lease is left in `stateDir` and no hutch link on the host, every flag hutch
 * set goes back to 0, `fwd_guard` is emptied and the records removed; also the host-wide
 * switch an older hutch recorded. True when something was restored.
 */
export async function restoreForwardingIfIdle(stateDir: string): Promise<boolean> {
  if (forwardingRecords(stateDir).length === 0 && !legacyRecord(stateDir)) return false;
  return withForwardingLock(stateDir, async () => {
    if (leaseFiles(stateDir).length > 0 || hutchLinksOnHost().length > 0) return false;
    const records = forwardingRecords(stateDir);
    for (const dev of records) setFlag(dev, '0');
    if (records.length > 0) {
      // The table may be gone already (a prune removed it): then so are its guards.
      await run('nft', ['flush', 'set', ...TABLE.split(' '), 'fwd_guard']).catch(() => undefined);
      for (const dev of records) unlinkSync(join(stateDir, RECORD_PREFIX + dev));
    }
    const legacy = legacyRecord(stateDir);
    if (legacy !== null) {
      try {
        writeFileSync(IP_FORWARD, legacy === '1' ? '1' : '0');
        unlinkSync(join(stateDir, LEGACY_RECORD));
      } catch (e) {
        throw hostFailure('ESETUP', `network: restoring ${IP_FORWARD}`, e);
      }
    }
    return true;
  });
}

function legacyRecord(stateDir: string): string | null {
  try {
    return readFileSync(join(stateDir, LEGACY_RECORD), 'utf8').trim();
  } catch {
    return null;
  }
}

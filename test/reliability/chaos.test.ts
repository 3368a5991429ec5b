// Chaos: a seeded random schedule of SIGKILLs over child Node processes running a mixed
// workload against a store of their own (create with limits, bridge networking, persistent
// sandboxes with disk quotas, exec, commit, import, pull from a real docker-registry on
// loopback when installed, build, pools, Sandbox.run, destroy, prune).
// After each kill: every sandbox process is dead; the next process's first create starts the
// cleanup and within seconds nothing of the dead process is left (cgroups under this test's
// own subtree, sandbox/address/id leases, links and nftables state of its slots, mounts and
// loop devices under the store, records, temp files, trash). At the end: prune() finishes,
// every image whose import or commit returned is intact and runs, no tag points at nothing,
// and after removing every image the store is as small as an empty one; no netns or nftables
// table was left. The seed is printed; HUTCH_CHAOS_SEED replays it, HUTCH_CHAOS_ROUNDS sets
// the rounds (`npm run chaos` runs hundreds). In vitest.timing.config.ts's SERIAL_FILES: it
// compares host-wide lists (`ip netns`, `nft list tables`) before and after.
// Needs the compiled library (npx tsc -p tsconfig.json).
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HutchError, ImageStore, Sandbox } from '../../lib/index.js';
import { idsStateDir } from '../../lib/idrange.js';
import { sandboxLeaseDir } from '../../lib/host/sandboxes.js';
import { tarBuffer, type TarEntry } from '../../lib/image/tarwriter.js';
import { startRegistry, type Registry } from '../helpers/registry.js';
import { isRoot, needs } from '../helpers/require.js';
import { has } from '../helpers/tools.js';
import {
  CrashChild, ROOT, cgroupsUnder, childrenOf, duBytes, entries, gone, leases, linkNames, loopsUnder, mountsUnder, nftText, pidsUnder,
  privateCgroupParent, removeCgroupParent, rmRoot, sleep,
} from '../helpers/reliability.js';

const CHAOS_CHILD = join(ROOT, 'test', 'helpers', 'chaos-child.mjs');
const skip =
  needs(isRoot && existsSync('/bin/busybox'), 'root and busybox-static are needed') ??
  needs(existsSync(join(ROOT, 'dist', 'lib', 'index.js')), 'the compiled library (npx tsc -p tsconfig.json)');

const SEED = process.env.HUTCH_CHAOS_SEED ? Number(process.env.HUTCH_CHAOS_SEED) : Math.floor(Math.random() * 2 ** 31);
const ROUNDS = Number(process.env.HUTCH_CHAOS_ROUNDS ?? 4);
const RANGE = '10.207.0.0/24';
/** How long the next process's background cleanup may take. */
const CLEANUP_MS = 15_000;

const parent = privateCgroupParent('chaos');
let root = '';
let work = '';
let archive = '';
let store: ImageStore;
let netnsBefore = '';
let registry: Registry | undefined;
let pullRef = '';
let tablesBefore = '';

function run(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return '';
  }
}

beforeAll(async () => {
  if (skip) return;
  console.log(`chaos: seed ${SEED} (replay: HUTCH_CHAOS_SEED=${SEED}), ${ROUNDS} rounds`);
  root = mkdtempSync('/var/tmp/hutch-chaos-store-');
  work = mkdtempSync('/var/tmp/hutch-chaos-work-');
  store = new ImageStore({ root });
  // An image that runs on its own: busybox, a shell, and a marker.
  archive = join(work, 'rootfs.tar');
  const rootfs = (marker: string, extra: TarEntry[] = []): Buffer =>
    tarBuffer([
      { path: 'bin', type: 'dir', mode: 0o755 },
      { path: 'bin/busybox', type: 'file', mode: 0o755, data: readFileSync('/bin/busybox') },
      { path: 'bin/sh', type: 'symlink', linkpath: 'busybox' },
      { path: 'bin/cat', type: 'symlink', linkpath: 'busybox' },
      { path: 'data', type: 'dir', mode: 0o755 },
      { path: 'data/marker', type: 'file', mode: 0o644, data: marker },
      { path: 'tmp', type: 'dir', mode: 0o1777 },
      ...extra,
    ]);
  writeFileSync(archive, rootfs('imported\n'));
  if (has('docker-registry')) {
    // A real registry on loopback for the pulls, holding the same image, pushed by hutch.
    mkdirSync(join(work, 'registry'));
    registry = await startRegistry(join(work, 'registry'));
    const src = new ImageStore({ root: join(work, 'src-store') });
    pullRef = `${registry.host}/chaos/img:1`;
    // Another image than the imported one (its own layer, with 4 MB to fetch), so a pull downloads.
    const pulled = join(work, 'pulled.tar');
    writeFileSync(pulled, rootfs('pulled\n', [{ path: 'data/blob', type: 'file', mode: 0o644, data: randomBytes(4 << 20) }]));
    await src.push(await src.import(pulled), pullRef, { insecure: true });
  }
  netnsBefore = run('ip', ['netns', 'list']);
  tablesBefore = run('nft', ['list', 'tables']);
});

afterAll(async () => {
  if (skip) return;
  await Sandbox.settle();
  await registry?.stop();
  rmRoot(root);
  rmRoot(work);
  removeCgroupParent(parent);
});

/** Lease-like files in `dir` whose JSON names one of `pids` as owner. */
function ownedBy(dir: string, pids: Set<number>): string[] {
  return entries(dir).filter((n) => {
    try {
      const v = JSON.parse(readFileSync(join(dir, n), 'utf8')) as { pid?: number; ownerPid?: number };
      return pids.has(v.pid ?? v.ownerPid ?? -1);
    } catch {
      return false;
    }
  });
}

/** Everything the dead processes `dead` (and their sandboxes `ids`, slots `slots`) left; `live` ids are another process's. */
function leftovers(dead: Set<number>, ids: Set<string>, slots: Set<string>, live: Set<string>): string[] {
  const left: string[] = [];
  for (const d of cgroupsUnder(parent)) if (!live.has(d.slice(d.lastIndexOf('/') + 1))) left.push(`cgroup ${d}`);
  for (const n of ownedBy(sandboxLeaseDir(), dead)) left.push(`sandbox lease ${n}`);
  for (const n of ownedBy(idsStateDir(), dead)) left.push(`id lease ${n}`);
  for (const l of leases()) if (l.ownerPid !== undefined && dead.has(l.ownerPid)) left.push(`address lease ${l.file}`);
  const links = linkNames();
  const nft = nftText();
  for (const s of slots) {
    for (const l of links.filter((x) => x.startsWith(`hx${s}`))) left.push(`link ${l}`);
    if (nft.includes(s)) left.push(`nftables state of slot ${s}`);
  }
  for (const m of mountsUnder(root)) left.push(`mount ${m}`);
  for (const l of loopsUnder(root)) left.push(`loop ${l}`);
  for (const n of entries(root, 'sandboxes')) if (!live.has(n)) left.push(`record sandboxes/${n}${ids.has(n) ? '' : ' (unknown id)'}`);
  for (const n of entries(root, 'tmp')) {
    if (n === 'trash') continue;
    const m = /^[a-z]+-(\d+)-/.exec(n);
    if (!m || dead.has(Number(m[1]))) left.push(`tmp/${n}`);
  }
  for (const n of entries(root, 'tmp', 'trash')) left.push(`tmp/trash/${n}`);
  return left;
}

interface Returned {
  id: string;
  tag: string;
  kind: string;
}

const env = (): NodeJS.ProcessEnv => ({
  ...process.env,
  HUTCH_ROOT: root,
  HUTCH_CGROUP_PARENT: parent,
  HUTCH_NET_RANGE: RANGE,
  HUTCH_BACKGROUND_PRUNE: '1',
  CHAOS_PULL: pullRef,
});

describe.skipIf(skip)('chaos: SIGKILL at random moments of a mixed workload', () => {
  it(
    `cleans up after every kill and keeps every image that returned (seed ${SEED})`,
    async () => {
      const returned: Returned[] = [];
      const dead = new Set<number>();
      const deadIds = new Set<string>();
      const deadSlots = new Set<string>();
      const killTimes: number[] = [];
      /** How often each kind of step was interrupted by the kill. */
      const interrupted: Record<string, number> = {};
      /** ms from the next process's first create returning until nothing of the dead was left. */
      const cleanTimes: number[] = [];
      for (let round = 0; round < ROUNDS; round++) {
        const worker = new CrashChild(String(SEED), env(), archive, CHAOS_CHILD, [String(round)]);
        const pid = worker.proc.pid!;
        let stepAt = 0;
        let delay = 0;
        const where = (): string => {
          const marks = worker.events.filter((e) => e.ev === 'mark');
          const done = new Set(worker.events.filter((e) => e.ev === 'done').map((e) => e.n));
          const open = marks.filter((m) => !done.has(m.n)).map((m) => `step ${m.n} '${m.what}'`);
          return `round ${round} (HUTCH_CHAOS_SEED=${SEED}): killed ${delay} ms into step ${stepAt}, during ${open.join(', ') || 'no step'}`;
        };
        try {
          // The schedule, kill point included, comes from the seed (chaos-child.mjs).
          const plan = await worker.wait((e) => e.ev === 'plan', 60_000);
          stepAt = plan.n!;
          delay = plan.delay!;
          await worker.wait((e) => e.ev === 'mark' && e.n === stepAt, 60_000);
          await sleep(delay);
        } catch (e) {
          worker.proc.kill('SIGKILL');
          await worker.exited;
          throw new Error(`${where()}: the worker failed before the kill: ${(e as Error).message}`);
        }
        process.kill(pid, 'SIGSTOP');
        const finished = new Set(worker.events.filter((e) => e.ev === 'done').map((e) => e.n));
        for (const m of worker.events.filter((e) => e.ev === 'mark' && !finished.has(e.n))) interrupted[m.what!] = (interrupted[m.what!] ?? 0) + 1;
        const procs = new Set([...childrenOf(pid), ...pidsUnder(parent), ...worker.sandboxes().map((s) => s.pid!)]);
        process.kill(pid, 'SIGKILL');
        const t0 = performance.now();
        while (![...procs].every(gone) && performance.now() - t0 < 2000) await sleep(2);
        killTimes.push(performance.now() - t0);
        await worker.exited;
        expect([...procs].filter((p) => !gone(p)), `${where()}: sandbox processes alive 2 s after SIGKILL`).toEqual([]);
        dead.add(pid);
        for (const s of worker.sandboxes()) {
          deadIds.add(s.id!);
          if (s.slot) deadSlots.add(s.slot);
        }
        for (const e of worker.events) if (e.ev === 'image') returned.push({ id: e.id!, tag: e.tag!, kind: e.kind! });

        // The next process: its first create starts the cleanup; within seconds nothing is left.
        const cleaner = new CrashChild('clean', env(), undefined, CHAOS_CHILD);
        let left: string[] = [];
        try {
          await cleaner.wait((e) => e.ev === 'ready', 60_000);
          const live = new Set(cleaner.sandboxes().map((s) => s.id!));
          const t1 = performance.now();
          do {
            left = leftovers(dead, deadIds, deadSlots, live);
            if (left.length === 0) break;
            await sleep(20);
          } while (performance.now() - t1 < CLEANUP_MS);
          cleanTimes.push(performance.now() - t1);
        } finally {
          cleaner.proc.stdin!.end();
          await Promise.race([cleaner.exited, sleep(20_000)]);
          if (cleaner.proc.exitCode === null && cleaner.proc.signalCode === null) cleaner.proc.kill('SIGKILL');
          await cleaner.exited;
        }
        expect(left, `${where()}: ${CLEANUP_MS} ms after the next process's first create; its stderr: ${cleaner.stderr.slice(-1000)}`).toEqual([]);
      }
      const s = [...killTimes].sort((a, b) => a - b);
      const c = [...cleanTimes].sort((a, b) => a - b);
      console.log(`chaos: ${ROUNDS} rounds, seed ${SEED}; sandbox processes gone after SIGKILL in ms: median ${s[s.length >> 1]!.toFixed(1)}, max ${s[s.length - 1]!.toFixed(1)}; nothing left after the next first create in ms: median ${c[c.length >> 1]!.toFixed(0)}, max ${c[c.length - 1]!.toFixed(0)}; images returned: ${returned.length}; steps interrupted: ${JSON.stringify(interrupted)}`);

      // prune() finishes the rest.
      await store.prune();
      expect(leftovers(dead, deadIds, deadSlots, new Set()), `after prune (HUTCH_CHAOS_SEED=${SEED})`).toEqual([]);

      // Every image whose import or commit returned is intact and runs.
      for (const r of returned) {
        const img = await store.get(r.tag);
        expect(img.id, r.tag).toBe(r.id);
        const ours = r.kind === 'commit' || r.kind === 'build';
        const expected = ours ? `${r.tag}\n` : r.kind === 'pull' ? 'pulled\n' : 'imported\n';
        const cmd = ours ? ['cat', '/marker'] : ['/bin/sh', '-c', 'cat /data/marker'];
        const out = await Sandbox.run({ command: cmd, image: r.tag, store, encoding: 'utf8' });
        expect({ exit: out.exitCode, out: out.stdout }, `${r.kind} ${r.tag} (HUTCH_CHAOS_SEED=${SEED})`).toEqual({ exit: 0, out: expected });
      }
      // No tag points at nothing.
      const tags = existsSync(store.path('tags.json')) ? (JSON.parse(readFileSync(store.path('tags.json'), 'utf8')) as Record<string, string>) : {};
      for (const [tag, id] of Object.entries(tags)) {
        const img = await store.get(tag).catch((e: unknown) => e);
        expect(HutchError.is(img) ? img.code : (img as { id: string }).id, `tag ${tag}`).toBe(id);
        for (const l of (img as { layers: string[] }).layers) expect(existsSync(store.path('layers', l.slice(7))), `tag ${tag}: layer ${l}`).toBe(true);
      }

      // Every image removed and pruned: as small as an empty store.
      await Sandbox.settle();
      for (const img of await store.list()) await store.remove(img.id);
      await store.prune();
      const files: string[] = [];
      const walk = (d: string): void => {
        for (const n of entries(d)) {
          const p = join(d, n);
          const st = statSync(p, { throwIfNoEntry: false });
          if (st?.isDirectory()) walk(p);
          else if (st) files.push(p.slice(root.length + 1));
        }
      };
      walk(root);
      expect(files.filter((f) => f !== 'tags.json'), 'files left after removing every image').toEqual([]);
      const empty = new ImageStore({ root: join(work, 'empty') });
      empty.ensure();
      const grown = duBytes(root) - duBytes(empty.root);
      expect(grown, `the store is ${grown} bytes bigger than an empty one`).toBeLessThan(256 * 1024);

      // Nothing host-wide was left either.
      // No netns or table that was not there before (others may have gone meanwhile).
      const netns = run('ip', ['netns', 'list']).split('\n').filter((n) => n && !netnsBefore.split('\n').includes(n));
      expect(netns, 'network namespaces left').toEqual([]);
      const tables = run('nft', ['list', 'tables']).split('\n').filter((t) => t && !tablesBefore.includes(t));
      expect(tables, 'nftables tables left').toEqual([]);
      expect(cgroupsUnder(parent)).toEqual([]);
    },
    ROUNDS * 30_000 + 120_000,
  );
});

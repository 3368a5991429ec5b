// Crash safety: a real child Node process using hutch is SIGKILLed in the middle of creating,
// executing, destroying, refilling a pool and importing. Within a second every process of its
// sandboxes is gone (PDEATHSIG; init exits on EOF of its control socket), and after pruneAll()
// nothing of it is left: no cgroup, link, nftables element, lease, store temp file or
// sandboxes/<id> record. Needs the compiled library (npx tsc -p tsconfig.json).
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageStore } from '../../lib/index.js';
import { pruneAll } from '../../lib/prune.js';
import { tarBuffer, type TarEntry } from '../../lib/image/tarwriter.js';
import { leftovers } from '../helpers/leaks.js';
import { isRoot, needs } from '../helpers/require.js';
import {
  CrashChild, ROOT, cgroupsUnder, childrenOf, entries, gone, leases, linkNames, nftText, pidsUnder,
  privateCgroupParent, removeCgroupParent, rmRoot, sleep, tempRoot,
} from '../helpers/reliability.js';

const skip = needs(isRoot && existsSync('/bin/busybox'), 'root and busybox-static are needed') ??
  needs(existsSync(join(ROOT, 'dist', 'lib', 'index.js')), 'the compiled library (npx tsc -p tsconfig.json)');

const parent = privateCgroupParent('crash');
const roots: string[] = [];
const killTimes: number[] = [];
let archive = '';

beforeAll(() => {
  const dir = tempRoot('crash-arch');
  roots.push(dir);
  // ~3 MB in 600 files: long enough to be killed in the middle of extracting.
  const files: TarEntry[] = [{ path: 'data', type: 'dir', mode: 0o755 }];
  for (let i = 0; i < 600; i++) files.push({ path: `data/f${i}`, type: 'file', mode: 0o644, data: Buffer.alloc(5000, i & 0xff) });
  archive = join(dir, 'layer.tar');
  writeFileSync(archive, tarBuffer(files));
});

afterAll(() => {
  for (const r of roots) rmRoot(r);
  removeCgroupParent(parent);
  if (killTimes.length > 0) {
    const s = [...killTimes].sort((a, b) => a - b);
    console.log(`crash kills: ${s.length}; sandbox processes gone after SIGKILL in ms: median ${s[s.length >> 1]!.toFixed(1)}, max ${s[s.length - 1]!.toFixed(1)}`);
  }
});

/**
 * Runs `scenario` in a child, SIGKILLs it `delayMs` after its `mark`-th mark, and checks that
 * its sandboxes die within a second and that pruneAll leaves nothing of it.
 */
async function killAt(root: string, scenario: string, mark: number, delayMs: number): Promise<void> {
  // An address range of its own: a slot freed by the kill is never taken by another test
  // file's sandbox meanwhile, so an hx<slot> link or lease found after the prune is its.
  const child = new CrashChild(scenario, { ...process.env, HUTCH_ROOT: root, HUTCH_CGROUP_PARENT: parent, HUTCH_NET_RANGE: '10.206.0.0/24' }, archive);
  const pid = child.proc.pid!;
  try {
    await child.wait((e) => e.ev === 'mark' && e.n === mark, 30_000);
    if (delayMs > 0) await sleep(delayMs);
  } catch (e) {
    child.proc.kill('SIGKILL');
    await child.exited;
    throw e;
  }
  // Stopped first, so that the snapshot of its processes is exact.
  process.kill(pid, 'SIGSTOP');
  const procs = new Set([...childrenOf(pid), ...pidsUnder(parent), ...child.sandboxes().map((s) => s.pid!)]);
  process.kill(pid, 'SIGKILL');
  const t0 = performance.now();
  while (![...procs].every(gone) || pidsUnder(parent).length > 0) {
    if (performance.now() - t0 > 1000) break;
    await sleep(2);
  }
  const ms = performance.now() - t0;
  killTimes.push(ms);
  const alive = [...procs].filter((p) => !gone(p));
  expect(alive, `${scenario}@${mark}+${delayMs}ms: sandbox processes still alive 1 s after SIGKILL`).toEqual([]);
  expect(pidsUnder(parent)).toEqual([]);
  await child.exited;

  const ids = new Set([...cgroupsUnder(parent).map((d) => d.slice(d.lastIndexOf('/') + 1)), ...child.sandboxes().map((s) => s.id!)]);
  const slots = new Set([...leases().filter((l) => l.ownerPid === pid).map((l) => l.slot), ...child.sandboxes().filter((s) => s.slot).map((s) => s.slot!)]);
  expect([...slots].filter((sl) => !sl.startsWith('0ace00')), 'slots outside the range of its own').toEqual([]);
  const r = await pruneAll({ store: new ImageStore({ root }), graceMs: 0 });
  const where = `${scenario}@${mark}+${delayMs}ms (pruned ${JSON.stringify(r)})`;
  expect(cgroupsUnder(parent), where).toEqual([]);
  expect(entries(root, 'sandboxes'), where).toEqual([]);
  expect(entries(root, 'tmp').filter((n) => n !== 'trash'), where).toEqual([]);
  expect(entries(root, 'tmp', 'trash'), where).toEqual([]);
  expect(leases().filter((l) => l.ownerPid === pid || slots.has(l.slot)), where).toEqual([]);
  const links = linkNames();
  const nft = nftText();
  for (const s of slots) {
    expect(links.filter((l) => l.startsWith(`hx${s}`)), where).toEqual([]);
    expect(nft.includes(`hx${s}`), `${where}: nft still names hx${s}`).toBe(false);
  }
  const left = (await leftovers()).filter((l) => l.includes(parent) || [...ids].some((id) => l.includes(id)) || [...slots].some((s) => l.includes(`hx${s}`)) || [...procs].some((p) => l.startsWith(`process ${p} `)));
  expect(left, where).toEqual([]);
}

describe.skipIf(skip)('a hutch process SIGKILLed in the middle of its work', () => {
  it('while creating sandboxes (bridged, limited, plain)', async () => {
    const root = tempRoot('crash-create');
    roots.push(root);
    for (const [mark, delay] of [[1, 0], [1, 3], [2, 1], [3, 6], [5, 2], [6, 12], [4, 25]] as const) await killAt(root, 'create', mark, delay);
  }, 90_000);

  it('while execs run', async () => {
    const root = tempRoot('crash-exec');
    roots.push(root);
    for (const [mark, delay] of [[1, 0], [3, 2], [5, 8]] as const) await killAt(root, 'exec', mark, delay);
  }, 60_000);

  it('while destroying', async () => {
    const root = tempRoot('crash-destroy');
    roots.push(root);
    for (const [mark, delay] of [[1, 0], [1, 1], [2, 3], [2, 6], [1, 12]] as const) await killAt(root, 'destroy', mark, delay);
  }, 90_000);

  it('while a pool refills', async () => {
    const root = tempRoot('crash-pool');
    roots.push(root);
    for (const [mark, delay] of [[1, 0], [3, 2], [4, 5]] as const) await killAt(root, 'pool', mark, delay);
  }, 60_000);

  it('while importing an image', async () => {
    const root = tempRoot('crash-import');
    roots.push(root);
    for (const [mark, delay] of [[1, 5], [1, 30], [2, 80]] as const) await killAt(root, 'import', mark, delay);
    // What the dead imports left is gone and the store still works.
    const store = new ImageStore({ root });
    const img = await store.import(archive, { tag: 'after:crash' });
    expect(img.layers).toHaveLength(1);
    await store.remove('after:crash');
  }, 60_000);

  it('while doing all of it at once', async () => {
    const root = tempRoot('crash-mixed');
    roots.push(root);
    for (const [mark, delay] of [[2, 4], [3, 17]] as const) await killAt(root, 'mixed', mark, delay);
  }, 60_000);
});

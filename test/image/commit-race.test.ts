// Security issue, hole 5: commit and build read a writable layer that the sandbox could still
// change. A process inside swaps a directory for a symlink to a host directory while the layer
// is read; host root must never read through it. The host directory holds a 64 MiB file and a
// small one, both with an old atime: a read through the symlink would change it (relatime
// updates an atime older than a day), and put their bytes into the layer or Node's memory.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageStore, Sandbox } from '../../lib/index.js';
import type { SandboxCgroup } from '../../lib/cgroup/driver.js';
import { isRoot, needs } from '../helpers/require.js';

const root = mkdtempSync('/var/tmp/hutch-test-commit-race-');
const store = new ImageStore({ root });
const host = mkdtempSync('/var/tmp/hutch-test-hostdir-');
const OLD = new Date('2001-01-01T00:00:00Z');
const MARK = `host-secret-${process.pid}-${Date.now()}`;

beforeAll(() => {
  // The big file repeats the marker, so any piece of it that reaches a layer is found.
  const chunk = Buffer.alloc(1024 * 1024);
  for (let o = 0; o < chunk.length; o += MARK.length + 1) chunk.write(`${MARK}\n`, o);
  const parts: Buffer[] = [];
  for (let i = 0; i < 64; i++) parts.push(chunk);
  writeFileSync(join(host, 'big'), Buffer.concat(parts));
  writeFileSync(join(host, 'small'), `${MARK} small\n`);
  writeFileSync(join(host, 'probe'), 'probe\n');
  for (const f of ['big', 'small', 'probe']) utimesSync(join(host, f), OLD, new Date());
});

afterAll(async () => {
  await Sandbox.settle();
  rmSync(root, { recursive: true, force: true });
  rmSync(host, { recursive: true, force: true });
});

const skip = needs(isRoot, 'sandboxes need root');

function atimes(): { big: number; small: number } {
  return { big: statSync(join(host, 'big')).atimeMs, small: statSync(join(host, 'small')).atimeMs };
}

/** Every stored layer blob, unpacked, as one buffer (to look for the marker). */
function allLayerBytes(): Buffer {
  const dir = store.path('blobs', 'sha256');
  const out: Buffer[] = [];
  for (const f of readdirSync(dir)) {
    const raw = readFileSync(join(dir, f));
    try {
      out.push(gunzipSync(raw));
    } catch {
      out.push(raw);
    }
  }
  return Buffer.concat(out);
}

/** Inside: /d/big and /d/small are directories, then /d becomes a symlink to the host dir, over and over. */
const swapper = (tag: string) =>
  `while true; do rm -rf /d; mkdir -p /d/big /d/small /d/sub; echo ${tag} > /d/sub/f; rm -rf /d; ln -s ${host} /d; done`;

describe.skipIf(skip)('commit and build never read through a symlink the sandbox swaps in (hole 5)', () => {
  it('the test can see a read: reading the probe changes its atime', () => {
    const before = statSync(join(host, 'probe')).atimeMs;
    readFileSync(join(host, 'probe'));
    expect(statSync(join(host, 'probe')).atimeMs).not.toBe(before);
  });

  it('Sandbox.commit of a persistent sandbox while a process swaps /d for a symlink to a host dir', { timeout: 120_000 }, async () => {
    const before = atimes();
    const sb = await Sandbox.create({ image: 'busybox', store, persistent: true });
    let rssMax = 0;
    const rss0 = process.memoryUsage().rss;
    const sampler = setInterval(() => (rssMax = Math.max(rssMax, process.memoryUsage().rss)), 2);
    try {
      sb.spawn(swapper('mine'));
      for (let i = 0; i < 8; i++) {
        const img = await sb.commit();
        expect(img.layers.length).toBeGreaterThanOrEqual(sb.image.image.layers.length);
      }
    } finally {
      clearInterval(sampler);
      await sb.destroy();
    }
    expect(atimes()).toEqual(before);
    expect(allLayerBytes().includes(MARK)).toBe(false);
    // The 64 MiB file never passed through Node.
    expect(rssMax - rss0).toBeLessThan(40 * 1024 * 1024);
  });

  it('a build RUN that leaves a background swapper: killed before its layer is written', { timeout: 120_000 }, async () => {
    const before = atimes();
    const tag = `bg-${process.pid}-${Date.now()}`;
    const img = await store.build({
      // Several steps, each leaving its own swapper running when it ends.
      dockerfile: `FROM busybox\n${[1, 2, 3, 4, 5, 6].map((n) => `RUN echo ${n} > /n; (${swapper(tag)}) >/dev/null 2>&1 & sleep 0.3\n`).join('')}`,
    });
    expect(atimes()).toEqual(before);
    expect(allLayerBytes().includes(MARK)).toBe(false);
    // No process of the step outlived it.
    const ps = execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' });
    expect(ps.includes(tag)).toBe(false);
    // What was committed is the sandbox's own: /d is the symlink, or its own directories.
    const r = await Sandbox.run({ image: img.id, store, command: 'ls -la /d/ /d/sub 2>&1; cat /d/sub/f 2>/dev/null; true' });
    expect(String(r.stdout)).not.toContain(MARK);
  });
});

describe.skipIf(skip)('commit freezes the sandbox while it reads the layer (hole 5)', () => {
  it('a counter inside makes no progress while the layer is read, and runs again after', { timeout: 60_000 }, async () => {
    const sb = await Sandbox.create({ image: 'busybox', store });
    const counter = async () => Number((await sb.readFile('/tmp/c')).toString().trim() || '-1');
    try {
      sb.spawn('i=0; while true; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/c; done');
      await expect.poll(counter, { timeout: 10_000 }).toBeGreaterThan(10);
      // Wrap the hold the sandbox hands to the store: check the freeze from the outside while
      // it is in force (reading the real counter, through the real cgroup freezer).
      const real = store.commitUpper.bind(store);
      const seen: number[][] = [];
      store.commitUpper = async (o) => {
        const hold = o.hold!;
        return real({
          ...o,
          hold: {
            freeze: async () => {
              await hold.freeze();
              const a = await counter();
              await new Promise((r) => setTimeout(r, 300));
              seen.push([a, await counter()]);
            },
            thaw: () => hold.thaw(),
          },
        });
      };
      try {
        await sb.commit();
        await sb.commit(); // idempotent freeze/thaw: a second commit works the same
      } finally {
        store.commitUpper = real;
      }
      expect(seen.length).toBe(2);
      for (const [a, b] of seen) expect(b).toBe(a);
      const after = await counter();
      await expect.poll(counter, { timeout: 10_000 }).toBeGreaterThan(after);
      // A sandbox frozen before the commit (paused) stays frozen after it.
      const cg = (sb as unknown as { cgroup: SandboxCgroup }).cgroup;
      expect(await cg.freeze()).toBe(true);
      await sb.commit();
      expect(await cg.freeze()).toBe(false);
      await cg.thaw();
      const later = await counter();
      await expect.poll(counter, { timeout: 10_000 }).toBeGreaterThan(later);
    } finally {
      await sb.destroy();
    }
  });
});

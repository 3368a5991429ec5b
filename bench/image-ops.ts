/**
 * `npm run bench:images`: the cost of the image operations that handle untrusted data, for
 * before/after comparisons of the store's safety work. Prints medians:
 * - import throughput of a rootfs tarball (default: the Debian minbase tarball the tests
 *   cache, `HUTCH_TEST_CACHE`), in MiB/s of uncompressed archive;
 * - commit of a persistent sandbox after a one-file change, and after writing 100 MiB.
 *
 * Usage: node dist/bench/image-ops.js [--tarball FILE] [--rounds N]
 * Run it from two checkouts back to back to compare them; each uses its own temp store.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ImageStore, Sandbox } from '../lib/index.js';

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

/** Uncompressed size of a (possibly gzipped) tarball, in bytes. */
function rawSize(tarball: string): number {
  const out = execFileSync('sh', ['-c', 'gzip -dc -f "$1" | wc -c', 'sh', tarball], { encoding: 'utf8' });
  return Number(out.trim());
}

async function main(): Promise<void> {
  const cache = process.env.HUTCH_TEST_CACHE ?? '/var/cache/hutch-test';
  const tarball = flag('--tarball', join(cache, 'debian-bookworm-minbase.tar.gz'));
  const rounds = Number(flag('--rounds', '5'));
  if (!existsSync(tarball)) throw new Error(`${tarball}: no such tarball (run the image tests once, or pass --tarball)`);
  const tmp = mkdtempSync(join(tmpdir(), 'hutch-bench-images-'));
  chmodSync(tmp, 0o711);
  const store = new ImageStore({ root: join(tmp, 'store') });
  try {
    const bytes = rawSize(tarball);
    const importS: number[] = [];
    for (let i = 0; i < Math.max(1, Math.min(rounds, 3)); i++) {
      const t0 = performance.now();
      const img = await store.import(tarball);
      importS.push((performance.now() - t0) / 1000);
      await store.remove(img.id);
      await store.prune();
    }
    const mibs = bytes / 1024 ** 2 / median(importS);
    console.log(`import ${(bytes / 1024 ** 2).toFixed(1)} MiB rootfs: median ${median(importS).toFixed(2)} s, ${mibs.toFixed(1)} MiB/s`);

    for (const [label, cmd] of [
      ['one-file change', 'echo changed > /etc/hutch-bench'],
      ['100 MiB layer', 'head -c 104857600 /dev/urandom > /big'],
    ] as const) {
      const ms: number[] = [];
      for (let i = 0; i < rounds; i++) {
        const sb = await Sandbox.create({ image: 'busybox', store, persistent: true, limits: { disk: '512MiB' } });
        try {
          const r = await sb.exec(['sh', '-c', cmd]);
          if (r.exitCode !== 0) throw new Error(`${label}: ${cmd} exited ${r.exitCode}`);
          const t0 = performance.now();
          const img = await sb.commit();
          ms.push(performance.now() - t0);
          await sb.destroy();
          await store.remove(img.id);
        } finally {
          await sb.destroy();
        }
      }
      await store.prune();
      console.log(`commit, ${label}: median ${median(ms).toFixed(1)} ms (${rounds} rounds)`);
    }
  } finally {
    await Sandbox.settle();
    await store.prune().catch(() => undefined);
    rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});

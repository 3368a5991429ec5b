import { expect } from 'vitest';
import { type ImageStore, Sandbox } from '../../lib/index.js';

/** Fills a persistent sandbox's disk past its quota: ENOSPC, and the file stops near the limit. */
export async function fillsAt(store: ImageStore, limitMiB: number): Promise<void> {
  await using sb = await Sandbox.create({ image: 'busybox', store, persistent: true, limits: { disk: `${limitMiB}MiB` } });
  const r = await sb.exec(`dd if=/dev/zero of=/big bs=1M count=${limitMiB * 2} 2>&1; ls -l /big`, { encoding: 'utf8' });
  expect(r.stdout).toMatch(/No space left on device|Disk quota exceeded/);
  const size = Number((r.stdout as string).trim().split('\n').pop()!.split(/\s+/)[4]);
  expect(size).toBeLessThanOrEqual(limitMiB * 1024 * 1024);
  expect(size).toBeGreaterThan(limitMiB * 1024 * 1024 * 0.5);
  // The layer is on disk in the store while the sandbox lives, and commit works from it.
  const img = await sb.commit();
  expect(img.layers.length).toBeGreaterThan(1);
}


import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { isRoot } from './require.js';

/** Whether a command is on PATH. */
export function has(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

const CACHE = process.env.HUTCH_TEST_CACHE ?? '/var/cache/hutch-test';
const DEBIAN = join(CACHE, 'debian-bookworm-minbase.tar.gz');

/**
 * A Debian rootfs tarball from `debootstrap --variant=minbase`, cached between runs outside
 * the checkout. Test files in parallel workers may both make it: each works in its own
 * directory and file, and the rename into place is atomic.
 */
export function debianTarball(): string | undefined {
  if (existsSync(DEBIAN)) return DEBIAN;
  if (!isRoot || !has('debootstrap')) return undefined;
  const dir = join(CACHE, `rootfs-${process.pid}`);
  const part = `${DEBIAN}.${process.pid}.part`;
  mkdirSync(CACHE, { recursive: true });
  const r = spawnSync('debootstrap', ['--variant=minbase', 'bookworm', dir, 'http://deb.debian.org/debian'], { stdio: 'ignore', timeout: 900_000 });
  try {
    if (r.status !== 0) return undefined;
    execFileSync('tar', ['-C', dir, '--numeric-owner', '-czf', part, '.']);
    renameSync(part, DEBIAN);
    return DEBIAN;
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(part, { force: true });
  }
}

import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
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

/**
 * An OCI layout made by umoci in `dir` (as `dir`/lay, tag latest) with two layers: the first
 * has busybox (/bin/sh a link to it), /etc/hello and /etc/gone; the second deletes /etc/gone
 * (a whiteout) and adds /etc/second. `config`: umoci config flags. Returns the layout's path.
 */
export function umociLayout(dir: string, config: string[]): string {
  const umoci = (...args: string[]) => execFileSync('umoci', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  mkdirSync(dir, { recursive: true });
  umoci('init', '--layout', 'lay');
  umoci('new', '--image', 'lay:latest');
  umoci('unpack', ...(process.getuid?.() === 0 ? [] : ['--rootless']), '--image', 'lay:latest', 'bundle');
  const rootfs = join(dir, 'bundle/rootfs');
  mkdirSync(join(rootfs, 'bin'));
  mkdirSync(join(rootfs, 'etc'));
  writeFileSync(join(rootfs, 'bin/busybox'), readFileSync('/bin/busybox'), { mode: 0o755 });
  symlinkSync('busybox', join(rootfs, 'bin/sh'));
  writeFileSync(join(rootfs, 'etc/hello'), 'hello\n');
  writeFileSync(join(rootfs, 'etc/gone'), 'gone\n');
  umoci('repack', '--refresh-bundle', '--image', 'lay:latest', 'bundle');
  rmSync(join(rootfs, 'etc/gone'));
  writeFileSync(join(rootfs, 'etc/second'), 'second\n');
  umoci('repack', '--image', 'lay:latest', 'bundle');
  umoci('config', '--image', 'lay:latest', ...config);
  return join(dir, 'lay');
}

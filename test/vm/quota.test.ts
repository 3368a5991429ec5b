import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageStore } from '../../lib/index.js';
import { diskMethod } from '../../lib/disk.js';
import { needs } from '../helpers/require.js';
import { has } from '../helpers/tools.js';
import { fillsAt } from '../helpers/disk.js';

// Runs in the v2vm step of CI (Debian's 6.1 kernel has quota support; this project's CI host
// kernel is built without CONFIG_QUOTA, so XFS refuses prjquota there).

describe('persistent writable layers on XFS with project quotas', () => {
  let root: string;
  beforeAll(() => {
    root = mkdtempSync('/tmp/hutch-xfs-');
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  const skipXfs = needs(has('mkfs.xfs') && has('xfs_quota'), 'mkfs.xfs and xfs_quota (apt-get install xfsprogs)');
  it.skipIf(skipXfs !== undefined)('uses XFS project quotas when the store is on XFS with prjquota', async () => {
    const img = `${root}/xfs.img`;
    const mnt = `${root}/xfs`;
    writeFileSync(img, '');
    truncateSync(img, 512 * 1024 * 1024);
    execFileSync('mkfs.xfs', ['-q', img]);
    mkdirSync(mnt);
    execFileSync('mount', ['-o', 'loop,prjquota', img, mnt]);
    try {
      const store = new ImageStore({ root: `${mnt}/store` });
      expect(diskMethod(`${mnt}/store`)).toBe('project-quota');
      await fillsAt(store, 8);
    } finally {
      execFileSync('umount', [mnt]);
    }
  }, 60_000);

});

// A persistent sandbox with a disk limit has its layer on a loop-mounted ext4 image in the
// store (sandboxes/<id>/disk). When its owner process is SIGKILLed that mount stays. prune()
// must unmount it (the loop device detaching with it) before removing the directory: it used
// to move the directory into tmp/trash and fail there with a raw EBUSY, leaving disk.img's
// bytes in the trash for good. A trash entry an older prune left that way is emptied too.
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, describe, expect, it } from 'vitest';
import { ImageStore, Sandbox } from '../../lib/index.js';
import { pruneAll } from '../../lib/prune.js';
import { isRoot, needs } from '../helpers/require.js';
import { loopsUnder, mountsUnder } from '../helpers/reliability.js';

const skip = needs(isRoot, 'persistent sandboxes with a disk limit need root (mount -o loop)');
const root = mkdtempSync('/var/tmp/hutch-test-prune-mounts-');
const store = new ImageStore({ root });

afterAll(async () => {
  await Sandbox.settle();
  rmSync(root, { recursive: true, force: true });
});

const CHILD = `
import { Sandbox, ImageStore } from ${JSON.stringify(join(process.cwd(), 'dist/lib/index.js'))};
const store = new ImageStore({ root: process.argv[1] });
const sb = await Sandbox.create({ image: 'busybox', store, persistent: true, limits: { disk: '8MiB' } });
await sb.exec('echo kept > /data');
process.stdout.write(sb.id + '\\n');
setInterval(() => undefined, 1000);
`;

/** A process that makes a persistent sandbox with a loop disk in the store, then is SIGKILLed. */
async function deadPersistentSandbox(): Promise<string> {
  const child = spawn(process.execPath, ['--input-type=module', '-e', CHILD, root], { stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve);
    child.once('exit', (code) => reject(new Error(`the child exited (${code}) before making its sandbox`)));
  });
  child.kill('SIGKILL');
  if (child.exitCode === null && child.signalCode === null) await new Promise((r) => child.once('exit', r));
  return line.trim();
}

describe.skipIf(skip)('prune and the disks of dead persistent sandboxes', () => {
  it("unmounts a dead sandbox's loop disk, removes its directory, frees its image and loop device", async () => {
    const id = await deadPersistentSandbox();
    const disk = store.path('sandboxes', id, 'disk');
    expect(mountsUnder(disk)).toEqual([disk]);
    expect(loopsUnder(root).length).toBe(1);
    // pruneAll: the dead sandbox's cgroup too (its record names a dead owner), then the store.
    await pruneAll({ store });
    expect(mountsUnder(root)).toEqual([]);
    expect(loopsUnder(root)).toEqual([]);
    expect(existsSync(store.path('sandboxes', id))).toBe(false);
    expect(readdirSync(store.path('tmp')).filter((n) => n !== 'trash')).toEqual([]);
    expect(existsSync(store.path('tmp', 'trash')) ? readdirSync(store.path('tmp', 'trash')) : []).toEqual([]);
  });

  it('empties a trash entry that an older prune left with the mount inside it', async () => {
    const id = await deadPersistentSandbox();
    // What the old prune did before it failed with EBUSY: the directory moved into the trash,
    // mount and all. The owner record stays in sandboxes/ so that pruneAll still knows the
    // dead sandbox's cgroup.
    const trashed = store.path('tmp', 'trash', 'leftover-of-an-old-prune');
    mkdirSync(store.path('tmp', 'trash'), { recursive: true });
    renameSync(store.path('sandboxes', id), trashed);
    mkdirSync(store.path('sandboxes', id));
    copyFileSync(join(trashed, 'owner.json'), store.path('sandboxes', id, 'owner.json'));
    expect(mountsUnder(trashed)).toEqual([join(trashed, 'disk')]);
    await pruneAll({ store });
    expect(mountsUnder(root)).toEqual([]);
    expect(loopsUnder(root)).toEqual([]);
    expect(existsSync(store.path('sandboxes', id))).toBe(false);
    expect(readdirSync(store.path('tmp', 'trash'))).toEqual([]);
  });
});

// The default PATH has one source, lib (lib/conventions.ts DEFAULT_PATH, sent by
// lib/plan/image.ts sandboxEnv in every exec request); init searches exactly the PATH it is
// sent and has no default of its own (addon/init/init.c exec_search).
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_PATH } from '../../lib/conventions.js';
import { HutchError, ImageStore, Sandbox, type Image } from '../../lib/index.js';
import { tarBuffer } from '../../lib/image/tarwriter.js';
import { isRoot, needs } from '../helpers/require.js';

const skip = needs(isRoot, 'sandboxes need root');
const work = mkdtempSync(join(tmpdir(), 'hutch-path-'));
const store = new ImageStore({ root: join(work, 'store') });
const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

/** A docker save archive: busybox as /bin/sh, and a config whose Env has no PATH. */
function noPathImage(): string {
  const layer = tarBuffer([
    { path: 'bin', type: 'dir', mode: 0o755 },
    { path: 'bin/busybox', type: 'file', mode: 0o755, data: readFileSync('/bin/busybox') },
    { path: 'bin/sh', type: 'symlink', linkpath: 'busybox' },
  ]);
  const config = JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Env: ['ONLY=this'] }, rootfs: { type: 'layers', diff_ids: [`sha256:${sha(layer)}`] } });
  const p = join(work, 'nopath.tar');
  writeFileSync(p, tarBuffer([
    { path: `${sha(config)}.json`, type: 'file', data: config },
    { path: `${sha(layer)}.tar`, type: 'file', data: layer },
    { path: 'manifest.json', type: 'file', data: JSON.stringify([{ Config: `${sha(config)}.json`, RepoTags: ['nopath:1'], Layers: [`${sha(layer)}.tar`] }]) },
  ]));
  return p;
}

describe.skipIf(skip)('the default PATH', () => {
  let image: Image;
  beforeAll(async () => {
    image = await store.import(noPathImage());
  });
  afterAll(async () => {
    await Sandbox.settle();
    rmSync(work, { recursive: true, force: true });
  });

  it('an image without PATH runs `sh`, found through the PATH lib sends', async () => {
    expect(image.config.env).toEqual(['ONLY=this']);
    const r = await Sandbox.run({ image, store, command: ['sh', '-c', 'echo "$PATH|$ONLY"'], encoding: 'utf8' });
    expect([r.exitCode, r.stderr, r.stdout]).toEqual([0, '', `${DEFAULT_PATH}|this\n`]);
  });

  it('init searches the PATH it is sent, and none of its own when it is sent none', async () => {
    await using sb = await Sandbox.create({ image, store });
    // A PATH without /bin: `sh` is not found.
    const elsewhere = await sb.exec(['sh', '-c', 'true'], { env: { PATH: '/nowhere' } }).catch((e: unknown) => e);
    expect(HutchError.is(elsewhere) && [elsewhere.code, elsewhere.step, elsewhere.errno]).toEqual(['ESETUP', 'exec', 'ENOENT']);
    // An exec request with no PATH at all (what lib never sends): init has no fallback.
    const core = (sb as unknown as { core: { baseEnv: string[] } }).core;
    core.baseEnv = core.baseEnv.filter((kv) => !kv.startsWith('PATH='));
    const none = await sb.exec(['sh', '-c', 'true']).catch((e: unknown) => e);
    expect(HutchError.is(none) && [none.code, none.step, none.errno]).toEqual(['ESETUP', 'exec', 'ENOENT']);
    // A path with a slash is not searched: the same request runs, and its environment has no PATH.
    const direct = await sb.exec(['/bin/busybox', 'env'], { encoding: 'utf8' });
    expect([direct.exitCode, direct.stdout]).toEqual([0, 'ONLY=this\n']);
  });
});

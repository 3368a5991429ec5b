// Commands run inside imported images: an OCI layout made by umoci, the same image converted by
// skopeo to a docker archive, and a Debian rootfs made by debootstrap (cached between runs).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ImageStore, Sandbox } from '../../lib/index.js';
import { isRoot, needs } from '../helpers/require.js';
import { debianTarball, has, umociLayout } from '../helpers/tools.js';

const work = mkdtempSync('/tmp/hutch-test-run-');
const storeRoot = mkdtempSync('/tmp/hutch-test-run-store-');
const store = new ImageStore({ root: storeRoot });
afterAll(async () => {
  await Sandbox.settle(); // background teardowns of Sandbox.run still use the store
  rmSync(work, { recursive: true, force: true });
  rmSync(storeRoot, { recursive: true, force: true });
});

function run(cmd: string, args: string[], cwd = work): string {
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

const noRoot = needs(isRoot, 'sandboxes need root');

describe.skipIf(noRoot)('images made by other tools', () => {
  const skip = needs(has('umoci') && has('skopeo') && existsSync('/bin/busybox'), 'umoci, skopeo and busybox-static are needed (apt-get install umoci skopeo busybox-static)');

  it.skipIf(skip)('an OCI layout from umoci, and its docker archive from skopeo, run a command', { timeout: 120_000 }, async () => {
    // Two layers: busybox, /etc/hello and /etc/gone, then a whiteout of /etc/gone; a config with Env, WorkingDir and Cmd.
    umociLayout(work, ['--config.env', 'FOO=from-config', '--config.workingdir', '/etc', '--config.cmd', '/bin/busybox', '--config.cmd', 'cat', '--config.cmd', 'hello']);
    run('skopeo', ['copy', '--quiet', 'oci:lay:latest', 'docker-archive:img.tar:made/by-skopeo:1']);

    const oci = await store.import(join(work, 'lay'), { tag: 'umoci:1' });
    const docker = await store.import(join(work, 'img.tar'));
    expect(docker.tags).toContain('docker.io/made/by-skopeo:1');
    expect(docker.layers).toEqual(oci.layers);
    for (const image of [oci.id, 'docker.io/made/by-skopeo:1']) {
      const r = await Sandbox.run({ image, store, command: ['/bin/busybox', 'sh', '-c', 'echo $FOO; pwd; cat hello; test -e gone || echo no-gone'], encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(r.stdout).toBe('from-config\n/etc\nhello\nno-gone\n');
      // No command: the image's Cmd.
      expect((await Sandbox.run({ image, store, encoding: 'utf8' } as Parameters<typeof Sandbox.run>[0])).stdout).toBe('hello\n');
    }
  });
});


describe.skipIf(noRoot)('a Debian minbase rootfs', () => {
  const tarball = noRoot ? undefined : debianTarball();
  const skip = needs(tarball !== undefined, 'no cached Debian rootfs and debootstrap could not make one (needs root, debootstrap and the Debian mirror)');

  it.skipIf(skip)("imports and runs bash -c 'cat /etc/debian_version'; builds on it", { timeout: 300_000 }, async () => {
    const img = await store.import(tarball!, { tag: 'debian:bookworm' });
    const r = await Sandbox.run({ image: 'debian:bookworm', store, command: ['bash', '-c', 'cat /etc/debian_version'], encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/^12\.\d+\n$/);
    // A build on it: RUN as an unprivileged user of the image, then run the result.
    const built = await store.build({ dockerfile: 'FROM debian:bookworm\nRUN useradd -m -u 1500 dev && su dev -c "echo \\$(id -un) > /home/dev/who"\nUSER dev\nWORKDIR /home/dev\nCMD ["bash", "-c", "cat who; id -u; pwd"]' });
    expect(built.layers.slice(0, 1)).toEqual(img.layers);
    const r2 = await Sandbox.run({ image: built.id, store, encoding: 'utf8' } as Parameters<typeof Sandbox.run>[0]);
    expect(r2.stderr).toBe('');
    expect(r2.stdout).toBe('dev\n1500\n/home/dev\n');
  });
});

import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { Sandbox } from '../../lib/index.js';

describe('checkHost and the CLI', () => {
  it('reports each feature with what depends on it', async () => {
    const r = await Sandbox.checkHost();
    expect(r.ok).toBe(true);
    expect(r.root).toBe(true);
    expect(['v2', 'v1', 'hybrid']).toContain(r.cgroups);
    const names = r.checks.map((c) => c.name);
    for (const n of ['kernel', 'user namespaces', 'overlayfs in a user namespace', 'clone3 + pidfd', 'new mount API', 'idmapped mounts', 'cgroups', 'seccomp', 'egress by name']) {
      expect(names).toContain(n);
    }
    // As host root on a kernel with the netfilter queue (this machine: built in), egress by name is available.
    expect(r.checks.find((c) => c.name === 'egress by name')?.ok).toBe(true);
    expect(r.checks.find((c) => c.name === 'templates')?.ok).toBe(true);
    for (const c of r.checks) {
      expect(c.neededFor.length).toBeGreaterThan(0);
      if (!c.ok) expect(c.fix).toBeTruthy();
    }
  });

  const cli = (args: string[]) => {
    try {
      return { code: 0, out: execFileSync('node', ['dist/bin/hutch.js', ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }), err: '' };
    } catch (e) {
      const x = e as { status: number; stdout: string; stderr: string };
      return { code: x.status, out: x.stdout, err: x.stderr };
    }
  };

  it('hutch run exits with the command status, 125 with the code on its own failures', () => {
    expect(cli(['run', '--image', 'busybox', '--memory', '64MiB', '--pids', '16', '--', 'sh', '-c', 'echo hi; exit 3'])).toMatchObject({ code: 3, out: 'hi\n' });
    expect(cli(['run', '--image', 'busybox', '--', 'sh', '-c', 'kill -TERM $$']).code).toBe(128 + 15);
    const bad = cli(['run', '--image', 'no-such-image', '--', 'true']);
    expect(bad.code).toBe(125);
    expect(bad.err).toMatch(/ENOIMAGE/);
    const inval = cli(['run', '--memory', 'lots', '--', 'true']);
    expect(inval.code).toBe(125);
    expect(inval.err).toMatch(/EINVAL.*limits\.memory/);
    const t = cli(['run', '--image', 'busybox', '--timeout', '200', '--', 'sleep', '5']);
    expect(t.code).toBe(137);
    expect(t.err).toMatch(/timed out/);
  });

  it('hutch doctor and hutch images print', () => {
    const d = cli(['doctor']);
    expect(d.code).toBe(0);
    expect(d.out).toMatch(/ok +user namespaces/);
    const i = cli(['images']);
    expect(i.code).toBe(0);
    expect(i.out).toMatch(/busybox/);
  });

  it('the demo runs', () => {
    const out = execFileSync('node', ['dist/examples/demo.js'], { encoding: 'utf8' });
    expect(out).toMatch(/2 \+ 2 = 4/);
    expect(out).toMatch(/shadow: No such file/);
    expect(out).toMatch(/processes visible: [0-9]/);
  });
});

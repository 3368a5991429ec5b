/**
 * A template's network (docs/templates.md, "Network"): each fork, a run's or a fork()'s,
 * prepared ahead or made on demand, gets a link of its own as a created sandbox does (its /30,
 * its /etc/hosts, the template's filter and hostPorts, egress by name), made before any of
 * its task's code runs, and gone with the fork.
 * Traffic only to the links hutch makes (their host side, through hostPorts) and to this
 * file's own internet (test/helpers/egress.ts).
 */
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../lib/index.js';
import type { Violation } from '../../lib/network/violations.js';
import { hostInterfaceName } from '../../lib/network/veth.js';
import { hutchFailure } from '../helpers/rejects.js';
import { needsRootWith } from '../helpers/require.js';
import { useInet } from '../helpers/egress.js';

const skip = needsRootWith('template network tests', ['ip', 'nft', 'curl', 'python3']);
const RANGE = '10.218.0.0/24';

/** The host-side link of the sandbox at `address` (its /30's slot: 8 hex digits). */
function linkOf(address: string): string {
  return hostInterfaceName(address.split('.').map((o, i) => (Number(o) & (i === 3 ? 0xfc : 0xff)).toString(16).padStart(2, '0')).join(''));
}

function linkExists(name: string): boolean {
  try {
    execFileSync('ip', ['link', 'show', name], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe.skipIf(skip !== undefined)('template network', () => {
  const server = net.createServer((s) => s.end('hello'));
  let port = 0;
  beforeAll(async () => {
    port = await new Promise<number>((r) => server.listen(0, '0.0.0.0', () => r((server.address() as net.AddressInfo).port)));
  });
  afterAll(() => {
    server.close();
  });

  it('gives every run and fork a link of its own before its code runs; close() leaves none', async () => {
    const t = await Sandbox.template({ zygote: 'python', size: 1, network: { mode: 'bridge', range: RANGE, hostPorts: [port] } });
    const seen: string[] = [];
    try {
      // The task's first step reaches the host side of its link: the link was there before it ran.
      const code = `import socket
s = socket.create_connection(('host.hutch.internal', ${port}), timeout=5)
me = s.getsockname()[0]
print(me, s.recv(100).decode(), open('/etc/hosts').read().count(me + '\\t'))`;
      // One prepared fork, two made on demand, at once.
      const runs = await Promise.all([0, 1, 2].map(() => t.run(['python3', '-c', code], { encoding: 'utf8' })));
      for (const r of runs) {
        expect(r.stderr).toBe('');
        const [address, reply, named] = (r.stdout as string).trim().split(' ');
        expect(address).toMatch(/^10\.218\.0\.\d+$/);
        expect(reply).toBe('hello');
        expect(named).toBe('1');
        seen.push(address!);
      }
      expect(new Set(seen).size).toBe(3);
      // fork(): the Sandbox's network is the link its init's namespace has.
      const sb = await t.fork();
      try {
        const inside = await sb.exec(['sh', '-c', 'ip -4 -o addr show eth0'], { encoding: 'utf8' });
        expect(sb.network?.address).toMatch(/^10\.218\.0\.\d+$/);
        expect(inside.stdout).toContain(`inet ${sb.network!.address}/30`);
        const reach = await sb.exec(['python3', '-c', `import socket; print(socket.create_connection(('${sb.network!.hostAddress}', ${port}), timeout=5).recv(100).decode())`], { encoding: 'utf8' });
        expect(reach.stdout).toBe('hello\n');
        seen.push(sb.network!.address);
        expect(linkExists(linkOf(sb.network!.address))).toBe(true);
      } finally {
        await sb.destroy();
      }
    } finally {
      await t.close();
    }
    await Sandbox.settle();
    for (const a of seen) expect(linkExists(linkOf(a)), a).toBe(false);
  });

  it('a fork whose link cannot be made rejects ESETUP network, a run and a fork() alike, and leaves nothing', async () => {
    // One /30 in the range: the second fork finds none free (the first holds it for 5 s).
    const t = await Sandbox.template({ zygote: 'python', network: { mode: 'bridge', range: '10.218.2.0/30' } });
    try {
      const rs = await Promise.allSettled([0, 1].map(() => t.run(['python3', '-c', 'import time; time.sleep(5); print(1)'], { encoding: 'utf8' })));
      expect(rs.filter((r) => r.status === 'fulfilled').map((r) => (r as PromiseFulfilledResult<{ stdout: unknown }>).value.stdout)).toEqual(['1\n']);
      expect(rs.find((r) => r.status === 'rejected')).toMatchObject({ reason: { code: 'ESETUP', step: 'network', message: expect.stringMatching(/no free \/30/) } });
      await Sandbox.settle(); // the run's link is released off its path
      const sb = await t.fork();
      try {
        expect(sb.network?.address).toBe('10.218.2.2');
        await expect(t.fork()).rejects.toMatchObject({ code: 'ESETUP', step: 'network' });
        expect((await sb.exec(['true'])).exitCode).toBe(0);
      } finally {
        await sb.destroy();
      }
      // The template goes on once the link is free again.
      await Sandbox.settle();
      expect((await t.run(['python3', '-c', 'print(2)'], { encoding: 'utf8' })).stdout).toBe('2\n');
    } finally {
      await t.close();
    }
    await Sandbox.settle();
    expect(linkExists(linkOf('10.218.2.2'))).toBe(false);
  });

  it('refuses published ports (every fork would want the same host port)', async () => {
    const e = await hutchFailure(Sandbox.template({ zygote: 'python', network: { mode: 'bridge', range: RANGE, ports: [{ host: 18080, sandbox: 80 }] } }));
    expect(e.code).toBe('EINVAL');
    expect(e.message).toMatch(/network\.ports.*same host port/);
  });

  describe('egress by name', () => {
    const world = useInet(() => 150 + (process.pid % 50), '10.218.1.0/24');
    it("a run's refusals are in its result, a fork()'s are its Sandbox's events; an allowed name works", async () => {
      const t = await Sandbox.template({ zygote: 'python', size: 1, network: world.net({ domains: ['ok.example'] }) });
      try {
        const get = (host: string) => `import urllib.request
try: print(urllib.request.urlopen('http://${host}/', timeout=10).read().decode(), end='')
except OSError as e: print(type(e).__name__)`;
        const ok = await t.run(['python3', '-c', get('ok.example')], { encoding: 'utf8' });
        expect(ok.stdout).toBe(`hello from ${world.inet.a}\n`);
        expect(ok.violations).toEqual([]);
        const other = await t.run(['python3', '-c', get('other.example')], { encoding: 'utf8' });
        expect(other.stdout).toBe('URLError\n');
        expect(other.violations).toContainEqual(expect.objectContaining({ kind: 'network', host: 'other.example', reason: 'not allowed', protocol: 'dns' }));
        expect(world.inet.seen.some((l) => l.startsWith('dns other.example'))).toBe(false);

        const sb = await t.fork();
        const events: Violation[] = [];
        sb.on('violation', (v) => events.push(v));
        try {
          const r = await sb.exec(['python3', '-c', get('other.example')], { encoding: 'utf8' });
          expect(r.stdout).toBe('URLError\n');
          expect(r.violations).toContainEqual(expect.objectContaining({ host: 'other.example', reason: 'not allowed' }));
          expect(events.some((v) => v.host === 'other.example')).toBe(true);
          expect((await sb.exec(['python3', '-c', get('ok.example')], { encoding: 'utf8' })).stdout).toBe(`hello from ${world.inet.a}\n`);
        } finally {
          await sb.destroy();
        }
      } finally {
        await t.close();
      }
    });
  });
});

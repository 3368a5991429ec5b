import { describe, it, expect, afterAll } from 'vitest';
import net from 'node:net';
import fc from 'fast-check';
import { resolveNetwork, hostsLines, hostsFile } from '../../lib/network/index.js';
import { parseCidr, formatCidr } from '../../lib/network/cidr.js';
import { hostRoutes } from '../../lib/network/options.js';
import { burstBytes, limitBytes, shapingSteps } from '../../lib/network/tc.js';
import { addScript } from '../../lib/network/nat.js';
import { isRoot } from '../helpers/require.js';
import { einval } from '../helpers/rejects.js';

const servers: net.Server[] = [];
afterAll(() => servers.forEach((s) => s.close()));

describe('network options', () => {
  it('none is the default', () => {
    expect(resolveNetwork(undefined)).toEqual({ mode: 'none' });
    expect(resolveNetwork('none')).toEqual({ mode: 'none' });
    expect(resolveNetwork({ mode: 'none' })).toEqual({ mode: 'none' });
  });

  it.skipIf(!isRoot)('resolves a bridge plan to numbers', () => {
    const p = resolveNetwork({
      mode: 'bridge',
      egress: '10mbit',
      ingress: '2MBps',
      outbound: 'nat',
      allow: ['192.0.2.0/24', '198.51.100.7'],
      ports: [{ host: 65000, sandbox: 80 }, { host: 65000, sandbox: 53, protocol: 'udp' }],
      range: '10.203.0.0/16',
    }, 'network', {});
    expect(p).toMatchObject({
      mode: 'bridge',
      egressBps: 10_000_000,
      ingressBps: 16_000_000,
      outbound: 'nat',
      ports: [{ host: 65000, sandbox: 80, protocol: 'tcp' }, { host: 65000, sandbox: 53, protocol: 'udp' }],
      stateDir: '/run/hutch/net',
    });
    if (p.mode !== 'bridge') throw new Error('bridge expected');
    expect(p.allow!.map(formatCidr)).toEqual(['192.0.2.0/24', '198.51.100.7/32']);
    expect(formatCidr(p.range)).toBe('10.203.0.0/16');
    expect(resolveNetwork({ mode: 'bridge' }, 'network', { HUTCH_NET_RANGE: '10.204.0.0/20', HUTCH_NET_DIR: '/tmp/x' })).toMatchObject({
      range: { prefix: 20 },
      stateDir: '/tmp/x',
      allow: null,
      egressBps: null,
    });
  });

  it('refuses bad values, naming the field', () => {
    einval(() => resolveNetwork('bridge' as never), 'network');
    einval(() => resolveNetwork(42 as never, 'opts.network'), 'opts.network');
    einval(() => resolveNetwork({ mode: 'host' } as never), 'network.mode');
    einval(() => resolveNetwork({} as never), 'network.mode');
    einval(() => resolveNetwork({ mode: 'bridge', egres: '1mbit' } as never), "network.egres");
    expect(() => resolveNetwork({ mode: 'bridge', egres: '1mbit' } as never)).toThrow(/did you mean 'egress'/);
    for (const bad of ['fast', '10 mbits', '-1mbit', '10mbps', '', 0, -5, NaN, Infinity, '1kbit', '1000gbit', {}, null]) {
      einval(() => resolveNetwork({ mode: 'bridge', egress: bad as never }), 'network.egress');
      einval(() => resolveNetwork({ mode: 'bridge', ingress: bad as never }), 'network.ingress');
    }
    einval(() => resolveNetwork({ mode: 'bridge', outbound: 'open' as never }), 'network.outbound');
    einval(() => resolveNetwork({ mode: 'bridge', allow: ['10.0.0.0/8'] }), 'network.allow');
    for (const bad of ['10.0.0.0/33', '10.0.0/8', '256.1.1.1', '10.0.0.1/8', 'example.com', '', 7, null]) {
      einval(() => resolveNetwork({ mode: 'bridge', outbound: 'nat', allow: [bad as never] }), 'network.allow[0]');
    }
    expect(() => resolveNetwork({ mode: 'bridge', outbound: 'nat', allow: ['10.0.0.1/8'] })).toThrow(/did you mean '10\.0\.0\.0\/8'/);
    expect(() => resolveNetwork({ mode: 'bridge', outbound: 'nat', allow: ['fd00::/8'] })).toThrow(/IPv4 only/);
    einval(() => resolveNetwork({ mode: 'bridge', outbound: 'nat', allow: '10.0.0.0/8' as never }), 'network.allow');
    for (const bad of ['10.0.0.0/31', '10.0.0.0/32', 'x', '10.1.0.1/16']) {
      einval(() => resolveNetwork({ mode: 'bridge', range: bad }), 'network.range');
    }
    einval(() => resolveNetwork({ mode: 'bridge' }, 'network', { HUTCH_NET_RANGE: 'nope' }), 'HUTCH_NET_RANGE');
    // Options that need a link are refused with mode 'none'.
    einval(() => resolveNetwork({ mode: 'none', egress: '1mbit' }), 'network.egress');
    einval(() => resolveNetwork({ mode: 'none', ports: [] }), 'network.ports');
  });

  it('refuses bad ports, duplicates and ports in use', async () => {
    const base = { mode: 'bridge' as const, range: '10.205.0.0/24' };
    einval(() => resolveNetwork({ ...base, ports: {} as never }), 'network.ports');
    einval(() => resolveNetwork({ ...base, ports: [8080 as never] }), 'network.ports[0]');
    for (const bad of [0, 65536, 1.5, '80', -1, null]) {
      einval(() => resolveNetwork({ ...base, ports: [{ host: bad as never, sandbox: 80 }] }), 'network.ports[0].host');
      einval(() => resolveNetwork({ ...base, ports: [{ host: 8080, sandbox: bad as never }] }), 'network.ports[0].sandbox');
    }
    einval(() => resolveNetwork({ ...base, ports: [{ host: 8080, sandbox: 80, protocol: 'sctp' as never }] }), 'network.ports[0].protocol');
    einval(() => resolveNetwork({ ...base, ports: [{ host: 8080, sandbox: 80, proto: 'tcp' } as never] }), 'network.ports[0].proto');
    einval(
      () => resolveNetwork({ ...base, ports: [{ host: 8080, sandbox: 80 }, { host: 8080, sandbox: 81, protocol: 'tcp' }] }),
      'network.ports[1].host',
    );
    // A port with a listening socket on the host is refused before anything is made.
    const s = net.createServer().listen(0, '127.0.0.1');
    servers.push(s);
    await new Promise((r) => s.once('listening', r));
    const busy = (s.address() as net.AddressInfo).port;
    einval(() => resolveNetwork({ ...base, ports: [{ host: busy, sandbox: 80 }] }), 'network.ports[0].host');
    expect(() => resolveNetwork({ ...base, ports: [{ host: busy, sandbox: 80 }] })).toThrow(/listening socket/);
  });

  it('refuses a range that collides with a host route', (ctx) => {
    const route = hostRoutes()[0];
    if (!route) return ctx.skip('this host has no route but the default one');
    einval(() => resolveNetwork({ mode: 'bridge', range: formatCidr(route.cidr) }), 'network.range');
    expect(() => resolveNetwork({ mode: 'bridge', range: formatCidr(route.cidr) })).toThrow(/overlaps the route/);
  });

  it('parses CIDRs round trip', () => {
    fc.assert(
      fc.property(fc.ipV4(), fc.integer({ min: 0, max: 32 }), (ip, prefix) => {
        const r = parseCidr(`${ip}/${prefix}`);
        if (r.ok) expect(formatCidr(r.cidr)).toBe(`${ip}/${prefix}`);
        else {
          expect(r.reason).toBe('host-bits');
          const again = parseCidr(r.suggestion!);
          expect(again.ok).toBe(true);
        }
      }),
    );
  });

  it('sizes the tbf bucket for the rate', () => {
    expect(burstBytes(1e6)).toBe(3028);
    expect(burstBytes(1e8)).toBe(100_000);
    expect(burstBytes(1e9)).toBe(1_000_000);
    // tc's `latency 50ms`: the queue holds 50 ms at the rate plus the bucket.
    expect(limitBytes(1e6)).toBe(6250 + 3028);
    expect(shapingSteps('hx0ac80004', 'hx0ac80004i', 1e6, 2e6)).toEqual([
      { kind: 'tbf', dev: 'hx0ac80004', bps: 2e6, burst: 3028, limit: 12500 + 3028 },
      { kind: 'ifb', dev: 'hx0ac80004i' },
      { kind: 'tbf', dev: 'hx0ac80004i', bps: 1e6, burst: 3028, limit: 6250 + 3028 },
      { kind: 'redirect', dev: 'hx0ac80004', target: 'hx0ac80004i' },
    ]);
    expect(shapingSteps('hx0ac80004', null, null, null)).toEqual([]);
  });

  it('builds per-sandbox nftables rules', () => {
    const s = addScript({ slot: '0ac80004', host: 'hx0ac80004', address: '10.200.0.6', outbound: 'nat', allow: [{ network: 0xc0000200, prefix: 24 }], ports: [{ host: 8080, sandbox: 80, protocol: 'tcp' }], hostPorts: [{ port: 5432, protocol: 'tcp' }, { port: 53, protocol: 'udp' }, { port: 443, protocol: 'tcp' }], guard: ['eth0'] });
    expect(s).toContain('ip daddr { 192.0.2.0/24 } accept');
    // The host: only the listed ports, on this link's own host address; allow never opens the host.
    expect(s).toContain('add rule inet hutch in_0ac80004 meta nfproto ipv4 tcp dport { 5432, 443 } fib daddr . iif type local accept');
    expect(s).toContain('add rule inet hutch in_0ac80004 meta nfproto ipv4 udp dport { 53 } fib daddr . iif type local accept');
    expect(s).not.toMatch(/in_0ac80004 (ip daddr|drop)/);
    expect(s).toContain('add element inet hutch fwd_guard { "eth0" }');
    expect(s).toContain('create element inet hutch ports { tcp . 8080 : 10.200.0.6 . 80 }');
    expect(s).toContain('add element inet hutch nat_links { "hx0ac80004" }');
  });

  it('writes /etc/hosts lines', () => {
    expect(hostsLines('box', null)).toEqual(['127.0.0.1\tlocalhost', '::1\tlocalhost ip6-localhost ip6-loopback', '127.0.1.1\tbox']);
    expect(hostsFile('box', { address: '10.200.0.2', hostAddress: '10.200.0.1' })).toContain('10.200.0.1\thost.hutch.internal\n');
  });
});

describe('egress by name and raw packets', () => {
  it('refuses NET_RAW beside domains or ask (raw segments could pass the inline name check), allows it without them', async () => {
    const { resolveSandboxOptions } = await import('../../lib/options.js');
    const base = { image: 'busybox', capabilities: ['NET_RAW'] };
    einval(() => resolveSandboxOptions({ ...base, network: { mode: 'bridge', outbound: 'nat', domains: ['ok.example'] } }), 'capabilities');
    einval(() => resolveSandboxOptions({ ...base, network: { mode: 'bridge', outbound: 'nat', ask: () => true } }), 'capabilities');
    expect(resolveSandboxOptions({ ...base, network: { mode: 'bridge', outbound: 'nat' } }).capabilities).toContain('NET_RAW');
    expect(resolveSandboxOptions({ image: 'busybox', network: { mode: 'bridge', outbound: 'nat', domains: ['ok.example'] } }).capabilities).not.toContain('NET_RAW');
  });
});
